/**
 * Transactions on the pool: BEGIN, run, COMMIT; ROLLBACK for any other exit; SAVEPOINTs when nested. One
 * mechanism serves `Transaction.withTransaction` and the SqlClient's `withTransaction`: the depth and the
 * connection travel in the context (our `Transaction` service and @effect/sql's `TransactionConnection`),
 * and the connection is pinned so that `PgPool.query` and `PgPool.connection` use it too.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Tracer from "effect/Tracer"
import type * as Connector from "../Connector.js"
import type { PgPool, PooledConnection } from "../PgPool.js"
import type { ConnectionError, PoolError } from "../PgPoolError.js"
import { QueryError } from "../PgPoolError.js"
import type * as Transaction from "../Transaction.js"
import { TxToken } from "./connection/physical.js"
import { currentReadOnly, findPin, InheritedPin, type Pin, pinsOf, setRef } from "./pgpool/pin.js"
import { type Handle, type PgPoolService, serviceOf, tag as PgPoolTag, usedAfterRelease } from "./pgpool/service.js"
import type { PoolCore } from "./pool/core.js"
import { canHandOver, handOver } from "./pool/release.js"
import { sqlConnection } from "./sql/connection.js"
import * as Tracing from "./tracing.js"

/** @internal */
export const TransactionTag: Context.Tag<Transaction.Transaction, Transaction.Transaction> = Context.GenericTag<
  Transaction.Transaction
>("effect-pg-pool/Transaction")

/** @internal */
class TransactionImpl implements Transaction.Transaction {
  constructor(
    readonly owner: PgPoolService,
    readonly handle: Handle,
    readonly depth: number,
    readonly options: Transaction.TransactionOptions,
    /** The transaction (or savepoint) on its connection: its fibers' turn there (see `Physical.claim`). */
    readonly token: TxToken
  ) {}
  get connection(): PooledConnection {
    return this.handle
  }
  get readOnly(): boolean {
    return this.options.readOnly === true
  }
}

/** @internal */
const beginStatement = (options: Transaction.TransactionOptions): string => {
  let text = "BEGIN"
  if (options.isolation !== undefined) text += ` ISOLATION LEVEL ${options.isolation.toUpperCase()}`
  if (options.readOnly === true) text += " READ ONLY"
  else if (options.readOnly === false) text += " READ WRITE"
  if (options.deferrable === true) text += " DEFERRABLE"
  else if (options.deferrable === false) text += " NOT DEFERRABLE"
  return text
}

const isolationLevels = new Set(["read committed", "repeatable read", "serializable", "read uncommitted"])

const transactionOptions = new Set(["isolation", "readOnly", "deferrable"])

const invalidOptions = (options: Transaction.TransactionOptions): QueryError | undefined => {
  const invalid = (message: string) => new QueryError({ message: `${message} (SQLSTATE 22023)`, code: "22023" })
  // (a caller without types: what is not one of them would be dropped, or a wrong type read as its default)
  if (typeof options !== "object" || options === null) {
    return invalid(`The options of a transaction must be an object, got ${options === null ? "null" : typeof options}`)
  }
  const unknown = Object.keys(options).find((key) =>
    !transactionOptions.has(key) && (options as Record<string, unknown>)[key] !== undefined
  )
  if (unknown !== undefined) {
    return invalid(
      `A transaction has no option ${JSON.stringify(unknown)}: its options are isolation, readOnly and deferrable`
    )
  }
  if (options.isolation !== undefined && !isolationLevels.has(options.isolation)) {
    return invalid(
      `Invalid transaction isolation level ${
        JSON.stringify(options.isolation)
      }: use "read committed", "repeatable read" or "serializable"`
    )
  }
  for (const key of ["readOnly", "deferrable"] as const) {
    const value: unknown = options[key]
    if (value !== undefined && typeof value !== "boolean") {
      return invalid(`The transaction option ${key} must be a boolean, got ${JSON.stringify(value)}`)
    }
  }
  return undefined
}

type TxError = PoolError | QueryError

/**
 * How the statements of the transaction mechanism (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, and the checkout) fail:
 * the pool's own errors for `Transaction.withTransaction`, SqlError for the SqlClient.
 *
 * @internal
 */
export interface ErrorMapping<X> {
  readonly map: (error: TxError) => X
}

const identity: ErrorMapping<TxError> = { map: (error) => error }

/** BEGIN, COMMIT, ROLLBACK, SAVEPOINT: run in the transaction's uninterruptible region, in the turn of `token`. */
const runOn = (handle: Handle, text: string, token: TxToken) =>
  Effect.suspend(() => handle.released ? Effect.fail(usedAfterRelease(handle)) : handle.conn.control(text, token))

const committed = (result: Connector.QueryResult): Effect.Effect<void, QueryError> =>
  result.command === "ROLLBACK"
    ? Effect.fail(
      new QueryError({
        message:
          "COMMIT was answered with ROLLBACK: a statement of the transaction had failed, so nothing was committed (SQLSTATE 40000)",
        code: "40000"
      })
    )
    : Effect.void

const commit = (handle: Handle, token: TxToken): Effect.Effect<void, QueryError | ConnectionError> =>
  Effect.flatMap(runOn(handle, "COMMIT", token), committed)

/**
 * COMMIT of a transaction that checked its connection out itself. When someone waits for a connection and
 * nothing else needs this one (`canHandOver`), it goes to the next waiter as soon as the COMMIT is sent: the
 * next checkout's first statement (with its `BEGIN`) goes out behind the COMMIT, in the same write, instead of
 * a round trip later. The server runs it whatever the COMMIT's outcome, which this transaction gets as before.
 */
const commitHandingOver = (handle: Handle, token: TxToken): Effect.Effect<void, QueryError | ConnectionError> =>
  Effect.suspend(() => {
    const conn = handle.conn
    // (a transaction a statement of its body ended is not handed over: its COMMIT fails, see Physical.control)
    if (handle.released || conn.owner !== token || token.endedInside || !canHandOver(handle.core, conn)) {
      return commit(handle, token)
    }
    const answer = Effect.async<Connector.QueryResult, QueryError | ConnectionError>((resume) => {
      conn.commitBehind((error, result) => resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error)))
      conn.releaseOwner(token)
      handle.released = true
      handOver(handle.core, conn)
    })
    return Effect.flatMap(answer, committed)
  })

/** Runs the statement that opens the transaction (or savepoint), then `body`. */
const opening = <A, E, R, X>(
  handle: Handle,
  statement: string,
  token: TxToken,
  mapping: ErrorMapping<X>,
  body: () => Effect.Effect<A, E | X, R>
): Effect.Effect<A, E | X, R> =>
  Effect.matchCauseEffect(runOn(handle, statement, token), {
    onFailure: (cause) => Effect.failCause(Cause.map(cause, mapping.map)),
    onSuccess: body
  })

/**
 * Runs the body of a transaction (through `restore`) with the transaction in its context and its connection
 * pinned, then puts the context back and runs the outcome statement: `onCommit` after success, `onRollback`
 * after failure, defect or interruption (keeping both causes when the rollback fails too).
 */
const runBody = <A, E, R, X>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  effect: Effect.Effect<A, E, R>,
  tx: TransactionImpl,
  context: Context.Context<never>,
  pin: Pin,
  restore: <A1, E1, R1>(effect: Effect.Effect<A1, E1, R1>) => Effect.Effect<A1, E1, R1>,
  onCommit: () => Effect.Effect<void, QueryError | ConnectionError>,
  onRollback: () => Effect.Effect<void, QueryError | ConnectionError>,
  mapping: ErrorMapping<X>,
  trace: Tracing.TransactionTrace | undefined
): Effect.Effect<A, E | X, R> => {
  // the transaction's context: `context` with its services added, in one copy of its map (`Context.add` copies
  // it for each)
  const services = new Map(context.unsafeMap)
  services.set(TransactionTag.key, tx)
  services.set(SqlClient.TransactionConnection.key, [sqlConnection(tx.owner, tx.handle, tx.token), tx.depth] as const)
  services.set(InheritedPin.key, pin)
  if (trace !== undefined) services.set(Tracer.ParentSpan.key, trace.span)
  // set in the fiber's context in place, in this step and in the handlers' (as withConnection does: an Effect
  // setting the FiberRef costs an Effect more, each way)
  setRef(fiber, FiberRef.currentContext, Context.unsafeMake<never>(services))
  return Effect.matchCauseEffect(restore(effect), {
    onFailure: (cause) => {
      setRef(fiber, FiberRef.currentContext, context)
      if (trace !== undefined) {
        traceFailure(trace.span, cause)
        trace.event("db.transaction.rollback")
      }
      return Effect.matchCauseEffect(onRollback(), {
        onFailure: (failure) => Effect.failCause(Cause.sequential(cause, Cause.map(failure, mapping.map))),
        onSuccess: () => Effect.failCause(cause)
      })
    },
    onSuccess: (value) => {
      setRef(fiber, FiberRef.currentContext, context)
      trace?.event(tx.depth === 0 ? "db.transaction.commit" : "db.transaction.savepoint")
      return Effect.matchCauseEffect(onCommit(), {
        onFailure: (failure) => {
          if (trace !== undefined) {
            traceFailure(trace.span, failure)
            // the server answered the COMMIT with ROLLBACK (40000): what the span says happened
            const refused = Cause.failureOption(failure)
            if (refused._tag === "Some" && refused.value.code === "40000") trace.event("db.transaction.rollback")
          }
          return Effect.failCause(Cause.map(failure, mapping.map))
        },
        onSuccess: () => Effect.succeed(value)
      })
    }
  })
}

/**
 * The span of a transaction (made only when a tracer is installed, see `Tracing.traced`): its name, and its
 * attributes when they are not the pool's own (the SqlClient's, for `sql.transaction`).
 *
 * @internal
 */
export interface SpanSpec {
  readonly name: string
  readonly attributes?: Tracing.Attributes | undefined
}

/**
 * The transaction mechanism, for the pool found by `poolOf` (the `PgPool` in the context for
 * `Transaction.withTransaction`, the pool the SqlClient was built on for `sql.withTransaction`).
 *
 * @internal
 */
export const make = <X, RP>(
  mapping: ErrorMapping<X>,
  poolOf: (context: Context.Context<never>) => PgPoolService | undefined,
  spanSpec: SpanSpec
) =>
<A, E, R>(
  effect: Effect.Effect<A, E, R>,
  options: Transaction.TransactionOptions = {}
): Effect.Effect<A, E | X, R | RP> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.withFiberRuntime<A, E | X, R>((fiber) => {
      const invalid = invalidOptions(options)
      if (invalid !== undefined) return Effect.fail(mapping.map(invalid))
      const context = fiber.getFiberRef(FiberRef.currentContext)
      const service = poolOf(context)
      if (service === undefined) {
        return Effect.dieMessage("Transaction.withTransaction needs a PgPool built by this package (PgPool.layer)")
      }
      const start = (trace: Tracing.TransactionTrace | undefined): Effect.Effect<A, E | X, R> => {
        const outer = Context.getOption(context, TransactionTag)
        if (outer._tag === "Some" && (outer.value as TransactionImpl).owner === service) {
          return nested(fiber, outer.value as TransactionImpl, effect, context, pinsOf(fiber), restore, mapping, trace)
        }
        const pins = pinsOf(fiber)
        const readOnly = options.readOnly === true || fiber.getFiberRef(currentReadOnly)
        const router = service.router
        if (router === undefined || findPin(pins, service) !== undefined) {
          return outermost(fiber, service, service.main, effect, options, context, pins, restore, mapping, trace)
        }
        return service.routeWith(
          fiber,
          readOnly,
          (target) => outermost(fiber, service, target, effect, options, context, pins, restore, mapping, trace),
          () => Effect.fail(mapping.map(router.noStandby()))
        )
      }
      if (!Tracing.traced(fiber)) return start(undefined)
      // as @effect/sql's `sql.transaction`: a client span, the parent of the body's spans, with commit,
      // savepoint and rollback events
      return Effect.useSpan(spanSpec.name, Tracing.clientSpan, (span) => {
        Tracing.annotate(span, spanSpec.attributes ?? service.spanAttributes)
        return start(new Tracing.TransactionTrace(span, Tracing.fiberClock(fiber)))
      })
    })
  )

const outermost = <A, E, R, X>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  service: PgPoolService,
  target: PoolCore,
  effect: Effect.Effect<A, E, R>,
  options: Transaction.TransactionOptions,
  context: Context.Context<never>,
  pins: Pin | undefined,
  restore: <A1, E1, R1>(effect: Effect.Effect<A1, E1, R1>) => Effect.Effect<A1, E1, R1>,
  mapping: ErrorMapping<X>,
  trace: Tracing.TransactionTrace | undefined
): Effect.Effect<A, E | X, R> => {
  /**
   * `own`: the transaction checked the connection out itself (else it runs on the fiber's pinned one); then the
   * handlers of the checkout below give the connection's owner back, in the same step as the connection.
   */
  const run = (handle: Handle, token: TxToken, own: boolean): Effect.Effect<A, E | X, R> => {
    const tx = new TransactionImpl(service, handle, 0, options, token)
    const pin: Pin = { owner: service, core: handle.core, handle, tx: token, next: pins }
    const conn = handle.conn
    const body = (): Effect.Effect<A, E | X, R> => {
      // BEGIN goes out with the first statement of the body (see Physical.deferBegin)
      conn.deferBegin(beginStatement(options))
      return runBody(
        fiber,
        effect,
        tx,
        context,
        pin,
        restore,
        own ? () => commitHandingOver(handle, token) : () => commit(handle, token),
        () => Effect.asVoid(runOn(handle, "ROLLBACK", token)),
        mapping,
        trace
      )
    }
    // the connection is the transaction's until it ends: the other fibers sharing it (forked inside
    // withConnection) wait, and this one waits for a transaction of theirs (a connection just checked out has
    // none: claimed at once)
    const claimed = conn.claim(token, undefined, restore)
    // (suspended: whatever it throws is a defect the checkout's handlers see, and they give the connection back)
    if (own) return claimed === Effect.void ? Effect.suspend(body) : Effect.flatMap(claimed, body)
    return Effect.flatMap(claimed, () => Effect.ensuring(body(), Effect.sync(() => conn.releaseOwner(token))))
  }
  const pinned = findPin(pins, service)?.handle
  if (pinned !== undefined) {
    if (trace !== undefined) Tracing.checkedOutFrom(trace.span, pinned.core, pinned.conn, undefined)
    return run(pinned, new TxToken(undefined), false)
  }
  const since = trace === undefined ? 0 : target.clock.unsafeCurrentTimeMillis()
  return Effect.matchCauseEffect(service.checkoutHandle(target, restore), {
    onFailure: (cause) => {
      if (trace !== undefined) traceFailure(trace.span, cause)
      return Effect.failCause(Cause.map(cause, mapping.map))
    },
    onSuccess: (handle) => {
      if (trace !== undefined) Tracing.checkedOutFrom(trace.span, target, handle.conn, handle.conn.checkedOutAt - since)
      const token = new TxToken(undefined)
      return Effect.matchCauseEffect(run(handle, token, true), {
        onFailure: (cause) => {
          handle.conn.releaseOwner(token)
          return Effect.zipRight(service.releaseHandle(handle), Effect.failCause(cause))
        },
        onSuccess: (value) => {
          handle.conn.releaseOwner(token)
          return Effect.as(service.releaseHandle(handle), value)
        }
      })
    }
  })
}

/**
 * A transaction, or its checkout, failed: its error on the span when it is a tagged one (an acquire timeout
 * says how long it waited; a server's error its SQLSTATE).
 */
const traceFailure = (span: Tracer.Span, cause: Cause.Cause<unknown>): void => {
  const failure = Cause.failureOption(cause)
  if (failure._tag === "None") return
  const error = failure.value
  if (typeof error === "object" && error !== null && typeof (error as { _tag?: unknown })._tag === "string") {
    Tracing.noteFailure(span, error as { readonly _tag: string })
  }
}

const nested = <A, E, R, X>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  outer: TransactionImpl,
  effect: Effect.Effect<A, E, R>,
  context: Context.Context<never>,
  pins: Pin | undefined,
  restore: <A1, E1, R1>(effect: Effect.Effect<A1, E1, R1>) => Effect.Effect<A1, E1, R1>,
  mapping: ErrorMapping<X>,
  trace: Tracing.TransactionTrace | undefined
): Effect.Effect<A, E | X, R> => {
  const token = new TxToken(outer.token)
  const tx = new TransactionImpl(outer.owner, outer.handle, outer.depth + 1, outer.options, token)
  if (trace !== undefined) Tracing.checkedOutFrom(trace.span, tx.handle.core, tx.handle.conn, undefined)
  const name = `effect_sql_${tx.depth}`
  const rollbackTo = () => Effect.asVoid(runOn(tx.handle, `ROLLBACK TO SAVEPOINT ${name}`, token))
  const conn = tx.handle.conn
  // a savepoint of one fiber at a time: the others of the outer transaction wait until it ends
  return Effect.flatMap(conn.claim(token, outer.token, restore), () =>
    Effect.ensuring(
      opening(tx.handle, `SAVEPOINT ${name}`, token, mapping, () =>
        runBody(
          fiber,
          effect,
          tx,
          context,
          { owner: tx.owner, core: tx.handle.core, handle: tx.handle, tx: token, next: pins },
          restore,
          () => release(tx.handle, name, token, rollbackTo),
          rollbackTo,
          mapping,
          trace
        )),
      Effect.sync(() => conn.releaseOwner(token))
    ))
}

/**
 * RELEASE SAVEPOINT after a successful body. When it fails (a statement inside failed and its error was
 * swallowed, so the transaction is aborted: SQLSTATE 25P02), the savepoint is rolled back to, so that the outer
 * transaction can go on, and the nested call fails with the RELEASE error (with the ROLLBACK TO error after it
 * when that fails too). A lost connection is not sent anything more.
 */
const release = (
  handle: Handle,
  name: string,
  token: TxToken,
  rollbackTo: () => Effect.Effect<void, QueryError | ConnectionError>
): Effect.Effect<void, QueryError | ConnectionError> =>
  Effect.matchCauseEffect(runOn(handle, `RELEASE SAVEPOINT ${name}`, token), {
    onFailure: (cause) => {
      const failure = Cause.failureOption(cause)
      if (failure._tag === "Some" && failure.value._tag === "ConnectionError") return Effect.failCause(cause)
      return Effect.matchCauseEffect(rollbackTo(), {
        onFailure: (second) => Effect.failCause(Cause.sequential(cause, second)),
        onSuccess: () => Effect.failCause(cause)
      })
    },
    onSuccess: () => Effect.void
  })

const poolInContext = (context: Context.Context<never>): PgPoolService | undefined =>
  serviceOf(Context.unsafeGet(context, PgPoolTag))

/** @internal */
export const withTransaction: <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  options?: Transaction.TransactionOptions
) => Effect.Effect<A, E | PoolError | QueryError, R | PgPool> = make<TxError, PgPool>(identity, poolInContext, {
  name: "Transaction.withTransaction"
})
