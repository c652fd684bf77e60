/**
 * The SqlClient's connections on the pool: one bound to a checked-out connection (transactions, `reserve`,
 * streams), or unbound, in which case every statement is a one-shot checkout (or runs on the fiber's pinned
 * connection); the pool's errors as `SqlError`.
 *
 * @internal
 */
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Connector from "../../Connector.js"
import type { ConnectionError, PoolError, QueryError } from "../../PgPoolError.js"
import type { Physical, TxToken } from "../connection/physical.js"
import { memberOf, pinOf } from "../pgpool/pin.js"
import { type Handle, type PgPoolService, usedAfterRelease } from "../pgpool/service.js"

/** @internal */
export type Transform = (<A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/** @internal */
export const toSqlError = (error: PoolError | QueryError | ConnectionError): SqlError =>
  new SqlError({ cause: error, message: error.message })

const rowsOrResults = (result: Connector.QueryResult): ReadonlyArray<unknown> =>
  result.results === undefined ? result.rows : result.results.map((r) => r.rows)

const transformed = (transformRows: Transform) =>
  transformRows === undefined
    ? rowsOrResults
    : (result: Connector.QueryResult): ReadonlyArray<unknown> =>
      result.results === undefined
        ? transformRows(result.rows as ReadonlyArray<object>)
        : result.results.map((r) => transformRows(r.rows as ReadonlyArray<object>))

const rawOf = (result: Connector.QueryResult): unknown => result
const valuesOf = (result: Connector.QueryResult) => result.rows as unknown as ReadonlyArray<ReadonlyArray<unknown>>

const STREAM_BATCH = 128

/**
 * A SqlConnection on the pool: bound to a checked-out connection (transactions, `reserve`, streams), or
 * unbound, in which case every statement is a one-shot checkout (or runs on the fiber's pinned connection).
 *
 * @internal
 */
export class PooledSqlConnection implements SqlConnection.Connection {
  constructor(
    readonly service: PgPoolService,
    readonly handle: Handle | undefined,
    /**
     * The transaction (or savepoint) this is the `TransactionConnection` of: its statements are the
     * transaction's even where the fiber's own context does not say so. @effect/sql's `SqlResolver` runs a
     * resolver with a context of its own holding only `TransactionConnection`: there, the fiber is found in no
     * transaction, and its statement waited for the transaction's end, which waited for it (a deadlock).
     */
    readonly member: TxToken | undefined = undefined
  ) {}

  /** The transaction a statement of `fiber` on `conn` runs in (see `member`). */
  memberOf(fiber: Fiber.RuntimeFiber<unknown, unknown>, conn: Physical): TxToken | undefined {
    return memberOf(fiber, conn) ?? this.member
  }

  run<A>(
    sql: string,
    params: ReadonlyArray<unknown>,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A
  ): Effect.Effect<A, SqlError> {
    const handle = this.handle
    const effect = handle === undefined
      ? this.service.statement(sql, params, rowMode, project)
      : handle.released
      ? Effect.fail(usedAfterRelease(handle))
      : Effect.withFiberRuntime<A, QueryError | ConnectionError>((fiber) =>
        handle.conn.runThen(
          sql,
          params,
          rowMode,
          (result) => Effect.succeed(project(result)),
          this.memberOf(fiber, handle.conn)
        )
      )
    return Effect.mapError(effect, toSqlError)
  }

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    return this.run(sql, params, undefined, transformed(transformRows)) as Effect.Effect<ReadonlyArray<any>, SqlError>
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.run(sql, params, undefined, rawOf)
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return this.run(sql, params, "array", valuesOf)
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    return this.execute(sql, params, transformRows)
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    const service = this.service
    const own = this.handle
    const member = (fiber: Fiber.RuntimeFiber<unknown, unknown>, conn: Physical) => this.memberOf(fiber, conn)
    return Stream.unwrapScoped(Effect.gen(function*() {
      const handle = own ?? (yield* pinnedOrRouted(service))
      const fiber = yield* Effect.withFiberRuntime<Fiber.RuntimeFiber<unknown, unknown>>((fiber) =>
        Effect.succeed(fiber)
      )
      yield* Effect.mapError(handle.conn.flush(member(fiber, handle.conn)), toSqlError)
      const cursor = handle.conn.cursor(sql, params)
      yield* Effect.addFinalizer(() => cursor.close)
      const pull = cursor.read(STREAM_BATCH).pipe(
        Effect.mapError((error) => Option.some(toSqlError(error))),
        Effect.flatMap((rows) =>
          rows.length === 0
            ? Effect.fail(Option.none())
            : Effect.succeed(Chunk.unsafeFromArray(
              transformRows === undefined ? rows : transformRows(rows as ReadonlyArray<object>)
            ))
        )
      )
      return Stream.repeatEffectChunkOption(pull)
    }))
  }
}

/**
 * A connection for a stream: the fiber's pinned connection (`withConnection`, a transaction), else one checked
 * out for the Scope from the pool the fiber's work goes to (see `routed`).
 */
const pinnedOrRouted = (service: PgPoolService): Effect.Effect<Handle, SqlError, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    const pin = pinOf(fiber, service)
    return pin === undefined ? routed(service, fiber) : Effect.succeed(pin.handle)
  })

/**
 * A checkout for the Scope, routed as `PgPool.connection` routes it: inside `PgPool.readOnly` on a pool of
 * several hosts it goes to a standby's pool, falling back to the pool for ordinary work (or failing, with
 * `readFallback: false`) when no standby is healthy or the chosen one cannot connect.
 */
/** @internal */
export const routed = (
  service: PgPoolService,
  fiber: Fiber.RuntimeFiber<unknown, unknown>
): Effect.Effect<Handle, SqlError, Scope.Scope> =>
  Effect.mapError(service.routeOr(fiber, (target) => service.scopedCheckout(target)), toSqlError)

/** The @effect/sql connection of a checked-out connection (used for `TransactionConnection`). @internal */
export const sqlConnection = (service: PgPoolService, handle: Handle, member: TxToken): SqlConnection.Connection =>
  new PooledSqlConnection(service, handle, member)
