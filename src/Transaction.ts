/**
 * Transactions: `BEGIN`, run, `COMMIT`. `ROLLBACK` runs, uninterruptibly, whenever the body fails, dies or is
 * interrupted; a nested call is a `SAVEPOINT` (released on success, rolled back to on failure). Inside,
 * `PgPool.query`, `PgPool.connection` and the SqlClient of `PgPoolSql` all use the transaction's connection,
 * and the `Transaction` service tells code that it runs inside a transaction.
 *
 * ```ts
 * import { Effect } from "effect"
 * import { PgPool, Transaction } from "effect-pg-pool"
 *
 * const transfer = (from: number, to: number, amount: number) =>
 *   Transaction.withTransaction(
 *     Effect.gen(function*() {
 *       yield* PgPool.query("update accounts set balance = balance - $2 where id = $1", [from, amount])
 *       yield* PgPool.query("update accounts set balance = balance + $2 where id = $1", [to, amount])
 *     }),
 *     { isolation: "serializable" }
 *   )
 * ```
 *
 * @since 0.1.0
 */
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import type * as Option from "effect/Option"
import * as internal from "./internal/transaction.js"
import type { PgPool, PooledConnection } from "./PgPool.js"
import type { PoolError, QueryError } from "./PgPoolError.js"

/**
 * @since 0.1.0
 * @category models
 */
export type IsolationLevel = "read committed" | "repeatable read" | "serializable"

/**
 * Options of the outermost transaction (a nested call, a savepoint, keeps those of the outer one).
 *
 * @since 0.1.0
 * @category models
 */
export interface TransactionOptions {
  readonly isolation?: IsolationLevel | undefined
  readonly readOnly?: boolean | undefined
  readonly deferrable?: boolean | undefined
}

/**
 * The transaction the current fiber runs in.
 *
 * @since 0.1.0
 * @category models
 */
export interface Transaction {
  /** 0 for the outermost transaction, 1 for the first savepoint inside it, and so on. */
  readonly depth: number
  /** The connection the transaction runs on. */
  readonly connection: PooledConnection
  readonly options: TransactionOptions
  readonly readOnly: boolean
}

/**
 * Present in the context while a transaction runs.
 *
 * @since 0.1.0
 * @category tags
 */
export const Transaction: Context.Tag<Transaction, Transaction> = internal.TransactionTag

/**
 * Runs `effect` in a transaction (or in a savepoint of the current one). BEGIN with the options, run, COMMIT;
 * ROLLBACK on failure, defect or interruption. A COMMIT that the server answers with ROLLBACK (a statement of
 * the transaction had failed) fails with `QueryError` SQLSTATE `40000`; failures of COMMIT and ROLLBACK are
 * typed errors, not defects. A nested call whose RELEASE SAVEPOINT fails (a statement inside failed and its
 * error was swallowed, leaving the transaction aborted: SQLSTATE `25P02`) rolls back to the savepoint and fails
 * with the RELEASE error, so the outer transaction can go on. When ROLLBACK (or ROLLBACK TO) fails after a
 * failed body, the cause keeps both failures, the body's first. With a tracer installed, each call (a nested one
 * too) is a `Transaction.withTransaction` span, the parent of the body's spans, with `db.transaction.commit`,
 * `db.transaction.savepoint` or `db.transaction.rollback` events; with none, no span is made.
 *
 * @since 0.1.0
 * @category transactions
 */
export const withTransaction: {
  (options?: TransactionOptions): <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | PoolError | QueryError, Exclude<R, Transaction> | PgPool>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options?: TransactionOptions
  ): Effect.Effect<A, E | PoolError | QueryError, Exclude<R, Transaction> | PgPool>
} = dual(
  (args) => Effect.isEffect(args[0]),
  <A, E, R>(effect: Effect.Effect<A, E, R>, options?: TransactionOptions) =>
    internal.withTransaction(effect, options) as Effect.Effect<
      A,
      E | PoolError | QueryError,
      Exclude<R, Transaction> | PgPool
    >
)

/**
 * The current transaction, if the fiber runs inside one.
 *
 * @since 0.1.0
 * @category accessors
 */
export const current: Effect.Effect<Option.Option<Transaction>> = Effect.serviceOption(internal.TransactionTag)

/**
 * True when the fiber runs inside a transaction.
 *
 * @since 0.1.0
 * @category accessors
 */
export const isActive: Effect.Effect<boolean> = Effect.map(current, (option) => option._tag === "Some")
