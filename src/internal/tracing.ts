/**
 * The pool's spans, made only when a tracer is installed.
 *
 * Effect 3 always has a tracer: with none installed, `Effect.withSpan` uses its native tracer, which builds a
 * `NativeSpan` (random trace and span ids, a Map of attributes, two clock reads) that reaches no exporter. A
 * real tracer is installed by replacing that one in the fiber's default services (`Layer.setTracer`,
 * `Effect.withTracer`, and @effect/opentelemetry's layers, which use them), so comparing the fiber's current
 * tracer (a field the fiber caches) with the native one tells whether anyone can see a span: on the hot path
 * that is one property read and one comparison, with no allocation and no clock read. `currentTracerEnabled`
 * alone would not do (it is true by default, with or without a tracer); it is checked after, so that
 * `Effect.withTracerEnabled(false)` turns the pool's spans off too. The native tracer is read from
 * `DefaultServices.liveServices`, a value: nothing is run to get it.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Tracer from "effect/Tracer"
import type * as Connector from "../Connector.js"
import type { ResolvedConfig } from "./config/resolve.js"
import type { Physical } from "./connection/physical.js"
import type { PoolCore } from "./pool/core.js"

/** Effect's own tracer, which keeps spans in memory only: the tracer of a fiber when none was installed. */
const nativeTracer: Tracer.Tracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/**
 * Whether a span made by this fiber can be seen by anyone: tracing is on and a tracer other than Effect's
 * in-memory default is installed (e.g. @effect/opentelemetry's).
 *
 * @internal
 */
export const traced = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean =>
  fiber.currentTracer !== nativeTracer && fiber.getFiberRef(FiberRef.currentTracerEnabled)

/** How long the operation waited for a connection, in milliseconds (0: an idle one was taken). @internal */
const WAIT_TIME = "db.client.connection.wait_time"

/** @internal */
export type Attributes = ReadonlyArray<readonly [string, unknown]>

/** A statement's span, and a transaction's (as @effect/sql's `sql.transaction`). @internal */
export const clientSpan: Tracer.SpanOptions = { kind: "client", captureStackTrace: false }

/** The span of `PgPool.withConnection`, which holds a connection rather than sending anything itself. @internal */
export const internalSpan: Tracer.SpanOptions = { kind: "internal", captureStackTrace: false }

/**
 * The attributes of a pool's spans that never change, after OpenTelemetry's database conventions (v1.26+
 * names, with the older `db.system` too). The server is known up front with one host; with several it is the
 * one the operation's connection is on (see `checkedOut`). Never a password: the URL is not used, only the
 * database, the host and port, and the pool's name.
 *
 * @internal
 */
export const poolAttributes = (config: ResolvedConfig): Attributes => {
  const attributes: Array<readonly [string, unknown]> = [
    ["db.system.name", "postgresql"],
    ["db.system", "postgresql"],
    ["db.namespace", config.database],
    ["db.client.connection.pool.name", config.name]
  ]
  if (config.hosts.length === 1) {
    const host = config.hosts[0]!
    attributes.push(["server.address", host.host], ["server.port", host.port])
  }
  return attributes
}

/** @internal */
export const annotate = (span: Tracer.Span, attributes: Attributes): void => {
  for (const [key, value] of attributes) span.attribute(key, value)
}

/**
 * What a checkout for the span's operation found: with several hosts, the server (and the read pool, for a
 * standby) of the connection; and how long it waited, in milliseconds (undefined: no checkout, the operation
 * ran on a connection the fiber held already).
 *
 * @internal
 */
const checkedOut = (
  span: Tracer.Span,
  server: { readonly host: string; readonly port: number } | undefined,
  pool: string | undefined,
  waited: number | undefined
): void => {
  if (server !== undefined) {
    span.attribute("server.address", server.host)
    span.attribute("server.port", server.port)
  }
  if (pool !== undefined) span.attribute("db.client.connection.pool.name", pool)
  if (waited !== undefined) span.attribute(WAIT_TIME, Math.max(0, waited))
}

/**
 * The statement's outcome as the server reported it: its command (`SELECT`, `INSERT`, ...: the operation, read
 * from the answer rather than parsed from the text) and the number of rows it returned.
 *
 * @internal
 */
export const answered = (span: Tracer.Span, result: Connector.QueryResult): void => {
  if (result.command !== "") span.attribute("db.operation.name", result.command)
  span.attribute("db.response.returned_rows", result.rows.length)
}

/**
 * A failure, on the span (its exit is set by `Effect.useSpan`): OpenTelemetry's `error.type` (the error's tag)
 * and `db.response.status_code` (the SQLSTATE, when the server sent one); for an acquire timeout, how long the
 * checkout waited.
 *
 * @internal
 */
export const noteFailure = (span: Tracer.Span, error: { readonly _tag: string }): void => {
  span.attribute("error.type", error._tag)
  const { code, waitedMillis } = error as { readonly code?: unknown; readonly waitedMillis?: unknown }
  if (typeof code === "string" && code !== "") span.attribute("db.response.status_code", code)
  if (typeof waitedMillis === "number") span.attribute(WAIT_TIME, waitedMillis)
}

/** `noteFailure` for `Effect.tapError`. @internal */
export const failed = (span: Tracer.Span, error: { readonly _tag: string }): Effect.Effect<void> => {
  noteFailure(span, error)
  return Effect.void
}

/**
 * A transaction's span and the clock its events are stamped with (the fiber's, which also times the span).
 *
 * @internal
 */
export class TransactionTrace {
  constructor(readonly span: Tracer.Span, readonly clock: Clock.Clock) {}
  /** `db.transaction.commit`, `db.transaction.savepoint` or `db.transaction.rollback`, as @effect/sql names them. */
  event(name: string): void {
    this.span.event(name, this.clock.unsafeCurrentTimeNanos())
  }
}

/** @internal */
export const fiberClock = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Clock.Clock =>
  Context.get(fiber.currentDefaultServices, Clock.Clock)

/**
 * What the checkout of `conn` from `core` for the span's operation found: with several hosts, the server (and
 * the read pool, when the connection served reads); how long it waited, unless the connection was held
 * already (`waited` undefined).
 *
 * @internal
 */
export const checkedOutFrom = (span: Tracer.Span, core: PoolCore, conn: Physical, waited: number | undefined): void => {
  const several = core.config.hosts.length > 1
  checkedOut(
    span,
    several ? conn.server.host : undefined,
    several && core.role.forReads ? core.config.name : undefined,
    waited
  )
}
