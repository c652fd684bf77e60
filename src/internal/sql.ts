/**
 * An @effect/sql `SqlClient` (also provided as @effect/sql-pg's `PgClient`) running on the pool.
 *
 * @internal
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Client from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import * as Either from "effect/Either"
import { identity } from "effect/Function"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as RcRef from "effect/RcRef"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as ConnectorModule from "../Connector.js"
import type * as Connector from "../Connector.js"
import type * as PgPool from "../PgPool.js"
import { ConnectionError, type PoolError, type QueryError } from "../PgPoolError.js"
import type * as PgPoolSql from "../PgPoolSql.js"
import {
  CoreId,
  currentReadOnly,
  type Handle,
  isTransientConnectError,
  make as makePool,
  type Physical,
  pinOf,
  type PoolCore,
  tag as PgPoolTag
} from "./pool.js"
import { parseUrl } from "./config.js"
import type { HostState } from "./topology.js"
import { traced } from "./tracing.js"
import * as transaction from "./transaction.js"

type Transform = (<A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

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
  constructor(readonly core: PoolCore, readonly handle: Handle | undefined) {}

  run<A>(
    sql: string,
    params: ReadonlyArray<unknown>,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A
  ): Effect.Effect<A, SqlError> {
    const handle = this.handle
    const effect = handle === undefined
      ? this.core.statement(sql, params, rowMode, project)
      : handle.released
      ? Effect.fail(handle.core.usedAfterRelease(handle))
      : handle.core.runThen(handle.conn, sql, params, rowMode, (result) => Effect.succeed(project(result)))
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
    const core = this.core
    const own = this.handle
    return Stream.unwrapScoped(Effect.gen(function*() {
      const handle = own ?? (yield* pinnedOrRouted(core))
      yield* Effect.mapError(handle.core.flush(handle.conn), toSqlError)
      const cursor = handle.conn.driver.cursor(sql, params, undefined)
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
const pinnedOrRouted = (core: PoolCore): Effect.Effect<Handle, SqlError, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    const pin = pinOf(fiber, core)
    return pin === undefined ? routed(core, fiber) : Effect.succeed(pin.handle)
  })

/**
 * A checkout for the Scope, routed as `PgPool.connection` routes it: inside `PgPool.readOnly` on a pool of
 * several hosts it goes to a standby's pool, falling back to the pool for ordinary work (or failing, with
 * `readFallback: false`) when no standby is healthy or the chosen one cannot connect.
 */
const routed = (core: PoolCore, fiber: Fiber.RuntimeFiber<unknown, unknown>): Effect.Effect<Handle, SqlError, Scope.Scope> =>
  Effect.mapError(core.routeOr(fiber, (target) => target.scopedCheckout), toSqlError)

/** The @effect/sql connection of a checked-out connection (used for `TransactionConnection`). */
/** @internal */
export const sqlConnection = (handle: Handle): SqlConnection.Connection => new PooledSqlConnection(handle.core, handle)

const quoteIdent = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

/** A `listen` stream: where its payloads go, and how it ends when its channel cannot be listened to. */
interface Subscriber {
  readonly emit: (payload: string) => void
  readonly fail: (error: SqlError) => void
}

/** Why a life of the listen connection failed, and whether opening it again (per `reconnect`) may help. */
class ListenFailure extends Data.TaggedError("ListenFailure")<{
  readonly error: ConnectionError | QueryError
  readonly transient: boolean
}> {}

/**
 * A LISTEN error is about the server (a `ListenFailure`) or about the channel (the `QueryError` itself, e.g.
 * an empty name). About the server: the connection is gone, the server is shutting down or out of resources,
 * or it is in recovery (SQLSTATE 25006). A new connection may succeed; after a 25006 only when hosts are chosen
 * by their role (the server was a primary when its role was read, and a new choice finds the primary of
 * now): a pool that does not read roles (one host, `targetSessionAttrs: "any"`) would reach the same standby.
 */
const classify = (core: PoolCore, error: ConnectionError | QueryError): ListenFailure | QueryError => {
  if (error._tag === "ConnectionError") return new ListenFailure({ error, transient: isTransientConnectError(error) })
  if (error.code.startsWith("25")) return new ListenFailure({ error, transient: core.policy.checkRole })
  return /^(08|53|57)/.test(error.code) ? new ListenFailure({ error, transient: true }) : error
}

/**
 * Opens the listen connection on the primary, where `notify` (a write) runs and notifications are
 * delivered. Hosts are tried in the order of the pool's own policy for ordinary work (`loadBalanceHosts`),
 * hosts known to be standbys after the others and hosts that are down last, each opened by the pool's
 * `openOn` (connect, `setSession`, and the server's role when the pool reads roles: several hosts, or a
 * `targetSessionAttrs` other than "any") and marked up or down in the pool's topology as the pool's connects
 * do; a standby, which cannot LISTEN, is closed again. The failure is transient when a host did not answer:
 * it may come back, or a standby may be promoted meanwhile (a failover); when every host answered and none
 * is a primary, it is not.
 */
const openListen = (
  core: PoolCore,
  onLost: () => void
): Effect.Effect<Connector.Connection, ListenFailure, Scope.Scope> =>
  Effect.gen(function*() {
    const ordered = [...core.policy.candidates()].sort((a, b) => listenRank(a) - listenRank(b))
    const failures: Array<string> = []
    let last: ConnectionError | undefined
    let transient = false
    let mismatches = 0
    for (const state of ordered) {
      const attempt = yield* openPrimary(core, state, onLost)
      if (Exit.isFailure(attempt)) {
        const failure = Cause.failureOption(attempt.cause)
        if (Option.isNone(failure)) return yield* Effect.failCause(Cause.stripFailures(attempt.cause))
        last = failure.value
        transient ||= isTransientConnectError(last)
        failures.push(last.message)
        core.topology?.markDown(state, last)
        continue
      }
      const { driver, server } = attempt.value
      if (server !== undefined) core.topology?.markUp(state, server)
      if (server === undefined || server.role === "primary") return driver
      mismatches++
      failures.push(`${state.label} is a ${server.role}`)
    }
    const error = failures.length === 1 && last !== undefined && mismatches === 0
      ? last
      : new ConnectionError({
        message: `No primary to LISTEN on (notifications are delivered on the primary): ${failures.join("; ")}`,
        cause: last,
        host: last?.host,
        port: last?.port,
        database: core.config.database
      })
    return yield* Effect.fail(new ListenFailure({ error, transient }))
  })

const listenRank = (state: HostState): number => state.down ? 2 : state.role === "standby" ? 1 : 0

type Opened = Effect.Effect.Success<ReturnType<PoolCore["openOn"]>>

/**
 * One connect of `openListen` to `state`, by the pool's `openOn`. The connection stays open, in the current
 * Scope, only when its server is a primary (or of unknown role: the pool does not read roles); the connect
 * itself can be interrupted.
 */
const openPrimary = (
  core: PoolCore,
  state: HostState,
  onLost: () => void
): Effect.Effect<Exit.Exit<Opened, ConnectionError>, never, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) => {
    const reporter = new LossReporter()
    return Effect.flatMap(
      Effect.exit(restore(core.openOn(state, core.policy.checkRole, reporter))),
      (exit): Effect.Effect<Exit.Exit<Opened, ConnectionError>, never, Scope.Scope> => {
        if (Exit.isFailure(exit)) return Effect.succeed(exit)
        const { scope, server } = exit.value
        if (server !== undefined && server.role !== "primary") return Effect.as(Scope.close(scope, Exit.void), exit)
        reporter.forward(onLost)
        return Effect.as(Effect.addFinalizer((end) => Scope.close(scope, end)), exit)
      }
    )
  })

/**
 * The holder `PoolCore.openOn` reports a lost connection to (it sets `lost` while no pooled connection is
 * attached; the listen connection never joins a pool). The loss of the connection that is kept goes to
 * `onLost`, including a loss seen while it was being opened; that of a standby closed again goes nowhere.
 */
class LossReporter {
  readonly conn: Physical | undefined = undefined
  seen = false
  onLost: (() => void) | undefined = undefined
  get lost(): boolean {
    return this.seen
  }
  set lost(value: boolean) {
    if (!value || this.seen) return
    this.seen = true
    this.onLost?.()
  }
  forward(onLost: () => void): void {
    this.onLost = onLost
    if (this.seen) onLost()
  }
}

/**
 * LISTEN on a dedicated connection (outside the pool), on the primary (see `openListen`). When that connection
 * is lost it is reopened, on the server that is the primary by then, and every channel with subscribers is
 * listened to again; failed opens are retried per the pool's `reconnect` schedule while they are transient.
 * A LISTEN the server rejects is a failure, never silence: a channel it rejects (e.g. an empty name) fails
 * the streams of that channel; a rejection that is about the server (it is in recovery) opens the connection
 * again; when opening it fails for good, every stream fails with the error and the next `listen` tries again.
 * A semaphore keeps subscriptions and the (re)start of the connection from interleaving.
 */
class Listener {
  readonly channels = new Map<string, Set<Subscriber>>()
  readonly lock = Effect.unsafeMakeSemaphore(1)
  driver: Connector.Connection | undefined = undefined
  /** Ends the current life of the connection: succeeds when it was lost, fails when it must be replaced. */
  end: Deferred.Deferred<void, ListenFailure> | undefined = undefined
  up: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  demand: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  constructor(readonly core: PoolCore) {}

  dispatch = (notification: Connector.Notification) => {
    const subscribers = this.channels.get(notification.channel)
    if (subscribers === undefined) return
    for (const subscriber of subscribers) subscriber.emit(notification.payload)
  }

  execute(driver: Connector.Connection, text: string): Effect.Effect<void, QueryError | ConnectionError> {
    return Effect.async<void, QueryError | ConnectionError>((resume) => {
      driver.send(text, undefined, undefined, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
    })
  }

  /** The server rejected LISTEN for this channel: its streams fail. */
  reject(channel: string, error: QueryError): void {
    const subscribers = this.channels.get(channel)
    this.channels.delete(channel)
    if (subscribers === undefined) return
    const failure = listenError(channel, error)
    for (const subscriber of subscribers) subscriber.fail(failure)
  }

  /** Listening failed for good: every stream fails, and the next subscription starts afresh. */
  failAll(failure: ListenFailure): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      const error = toSqlError(failure.error)
      const subscribers = [...this.channels.values()].flatMap((set) => [...set])
      this.channels.clear()
      this.demand = Deferred.unsafeMake<void>(FiberId.none)
      for (const subscriber of subscribers) subscriber.fail(error)
      return Effect.logWarning(`listen failed: ${failure.error.message}`).pipe(
        Effect.annotateLogs({ ...this.failureLog(failure), streams: subscribers.length })
      )
    }))
  }

  /** One life of the dedicated connection: connect, LISTEN to every channel, wait until it is lost. */
  readonly session: Effect.Effect<void, ListenFailure> = Effect.scoped(Effect.gen(this, function*() {
    const end = yield* Deferred.make<void, ListenFailure>()
    const driver = yield* openListen(this.core, () => Deferred.unsafeDone(end, Exit.void))
    driver.onNotification(this.dispatch)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        this.driver = undefined
        this.end = undefined
        this.up = Deferred.unsafeMake<void>(FiberId.none)
      })
    )
    yield* this.lock.withPermits(1)(Effect.gen(this, function*() {
      for (const channel of [...this.channels.keys()]) {
        const result = yield* Effect.either(this.execute(driver, `LISTEN ${quoteIdent(channel)}`))
        if (Either.isRight(result)) continue
        const failure = classify(this.core, result.left)
        if (failure._tag === "ListenFailure") return yield* Effect.fail(failure)
        this.reject(channel, failure)
      }
      this.driver = driver
      this.end = end
      yield* Deferred.succeed(this.up, undefined)
    }))
    yield* Effect.logDebug("listen connection ready").pipe(
      Effect.annotateLogs({ pool: this.core.config.name, backendPid: driver.backendPid })
    )
    yield* Deferred.await(end)
    yield* Effect.logWarning("listen connection lost; reconnecting").pipe(
      Effect.annotateLogs({ pool: this.core.config.name, backendPid: driver.backendPid })
    )
  }))

  failureLog(failure: ListenFailure): Record<string, unknown> {
    const error = failure.error
    return {
      pool: this.core.config.name,
      host: error._tag === "ConnectionError" ? error.host ?? "" : "",
      port: error._tag === "ConnectionError" ? error.port ?? 0 : 0
    }
  }

  /** Waits until some channel has a subscriber. */
  readonly wanted: Effect.Effect<void> = Effect.suspend(() =>
    this.channels.size > 0 ? Effect.void : Deferred.await(this.demand)
  )

  get supervise(): Effect.Effect<never> {
    return this.wanted.pipe(
      Effect.zipRight(this.session.pipe(
        Effect.tapError((failure) =>
          Effect.logWarning(`listen connection failed: ${failure.error.message}`).pipe(
            Effect.annotateLogs({ ...this.failureLog(failure), transient: failure.transient })
          )
        ),
        Effect.retry({ schedule: this.core.config.reconnect, while: (failure) => failure.transient }),
        Effect.catchAll((failure) => this.failAll(failure))
      )),
      Effect.forever
    )
  }

  subscribe(channel: string, subscriber: Subscriber): Effect.Effect<void, SqlError> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      let subscribers = this.channels.get(channel)
      const first = subscribers === undefined
      if (subscribers === undefined) {
        subscribers = new Set()
        this.channels.set(channel, subscribers)
      }
      subscribers.add(subscriber)
      Deferred.unsafeDone(this.demand, Exit.void)
      const driver = this.driver
      if (!first || driver === undefined) return Effect.void
      return Effect.catchAll(this.execute(driver, `LISTEN ${quoteIdent(channel)}`), (error) => {
        const failure = classify(this.core, error)
        if (failure._tag === "QueryError") {
          this.channels.delete(channel)
          return Effect.fail(listenError(channel, failure))
        }
        if (this.end !== undefined) Deferred.unsafeDone(this.end, Exit.fail(failure))
        return Effect.void
      })
    }))
  }

  unsubscribe(channel: string, subscriber: Subscriber): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      const subscribers = this.channels.get(channel)
      if (subscribers === undefined || !subscribers.delete(subscriber) || subscribers.size > 0) return Effect.void
      this.channels.delete(channel)
      if (this.channels.size === 0) this.demand = Deferred.unsafeMake<void>(FiberId.none)
      const driver = this.driver
      return driver === undefined ? Effect.void : Effect.ignore(this.execute(driver, `UNLISTEN ${quoteIdent(channel)}`))
    }))
  }

  /** Completes once the dedicated connection is up and listening. */
  readonly ready: Effect.Effect<void> = Effect.suspend(() => Deferred.await(this.up))
}

const listenError = (channel: string, error: QueryError): SqlError =>
  new SqlError({ cause: error, message: `LISTEN ${quoteIdent(channel)} failed: ${error.message}` })

const PgJson = Statement.custom<PgClient.PgCustom>("PgJson")

interface StatementContext {
  readonly unbound: SqlConnection.Connection
  readonly spanAttributes: ReadonlyArray<readonly [string, unknown]>
  readonly transformRows: Transform
}

type Run<X> = (connection: SqlConnection.Connection, sql: string, params: ReadonlyArray<unknown>) => Effect.Effect<X, SqlError>

/**
 * A statement of the SqlClient, executed the way @effect/sql does it (a `sql.execute` span with the same
 * attributes, the transaction's connection when there is one, the same transforms) but without the per
 * statement `Effect.scoped` of @effect/sql's generic implementation, which costs more than the rest of the
 * statement together. Building, compiling and streaming are @effect/sql's own; when a statement transformer
 * is installed (`Statement.withTransformer`), the statement runs @effect/sql's path unchanged.
 */
class PooledStatement<A> extends Effectable.Class<ReadonlyArray<A>, SqlError> implements Statement.Statement<A> {
  constructor(readonly inner: Statement.Statement<A>, readonly context: StatementContext) {
    super()
  }
  get [Statement.FragmentId]() {
    return identity
  }
  get segments() {
    return this.inner.segments
  }
  readonly compile = (withoutTransform?: boolean | undefined) => this.inner.compile(withoutTransform)
  get stream(): Stream.Stream<A, SqlError> {
    return this.inner.stream
  }
  get raw(): Effect.Effect<unknown, SqlError> {
    return this.execute("executeRaw", true, (conn, sql, params) => conn.executeRaw(sql, params), this.inner.raw)
  }
  get withoutTransform(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "executeWithoutTransform",
      true,
      (conn, sql, params) => conn.execute(sql, params, undefined),
      this.inner.withoutTransform
    )
  }
  get values(): Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError> {
    return this.execute("executeValues", false, (conn, sql, params) => conn.executeValues(sql, params), this.inner.values)
  }
  get unprepared(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "executeUnprepared",
      false,
      (conn, sql, params) => conn.executeUnprepared(sql, params, this.context.transformRows),
      this.inner.unprepared
    )
  }
  commit(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "execute",
      false,
      (conn, sql, params) => conn.execute(sql, params, this.context.transformRows),
      this.inner
    )
  }
  toJSON(): unknown {
    return (this.inner as unknown as { toJSON(): unknown }).toJSON()
  }
  execute<X>(operation: string, withoutTransform: boolean, run: Run<X>, fallback: Effect.Effect<X, SqlError>) {
    return Effect.withFiberRuntime<X, SqlError>((fiber) => {
      if (fiber.getFiberRef(Statement.currentTransformer)._tag === "Some") return fallback
      const tx = fiber.currentContext.unsafeMap.get(Client.TransactionConnection.key) as
        | readonly [SqlConnection.Connection, number]
        | undefined
      const connection = tx === undefined ? this.context.unbound : tx[0]
      if (!traced(fiber)) {
        const [sql, params] = this.inner.compile(withoutTransform)
        return run(connection, sql, params)
      }
      return Effect.useSpan("sql.execute", spanOptions, (span) => {
        const [sql, params] = this.inner.compile(withoutTransform)
        for (const [key, value] of this.context.spanAttributes) span.attribute(key, value)
        span.attribute("db.operation.name", operation)
        span.attribute("db.query.text", sql)
        return run(connection, sql, params)
      })
    })
  }
}

const spanOptions = { kind: "client", captureStackTrace: false } as const

const isStatement = (u: unknown): u is Statement.Statement<unknown> =>
  Effect.isEffect(u) && Statement.isFragment(u) && typeof (u as { compile?: unknown }).compile === "function"

/** The client's `sql` function and `sql.unsafe`, with their statements executed by `PooledStatement`. */
const pooledConstructor = <C extends Client.SqlClient>(client: C, context: StatementContext): C => {
  const wrap = (result: unknown) => isStatement(result) ? new PooledStatement(result, context) : result
  const sql = function(...args: Array<unknown>) {
    return wrap((client as unknown as (...args: Array<unknown>) => unknown)(...args))
  }
  Object.assign(sql, client)
  const unsafe = client.unsafe
  Object.assign(sql, {
    unsafe: (text: string, params?: ReadonlyArray<unknown>) => wrap(unsafe(text, params)),
    safe: sql
  })
  return sql as unknown as C
}

/** @internal */
export const make = (
  options: PgPoolSql.Options = {},
  reported?: PgClient.PgClientConfig
): Effect.Effect<PgClient.PgClient, never, PgPool.PgPool | Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const service = yield* PgPoolTag
    const core = (service as { readonly [CoreId]?: PoolCore })[CoreId]
    if (core === undefined) return yield* Effect.dieMessage("PgPoolSql needs a PgPool built by this package")
    const config = core.config
    const host = config.hosts[0]!
    const unbound = new PooledSqlConnection(core, undefined)
    const reserve = Effect.withFiberRuntime<SqlConnection.Connection, SqlError, Scope.Scope>((fiber) =>
      Effect.map(routed(core, fiber), (handle) => new PooledSqlConnection(handle.core, handle))
    )
    const compiler = PgClient.makeCompiler(options.transformQueryNames, options.transformJson)
    const transformRows = options.transformResultNames
      ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
      : undefined
    const spanAttributes: ReadonlyArray<readonly [string, unknown]> = [
      ...(options.spanAttributes ? Object.entries(options.spanAttributes) : []),
      ["db.system.name", "postgresql"],
      ["db.namespace", config.database],
      ["server.address", host.host],
      ["server.port", host.port]
    ]
    const client = yield* Client.make({
      acquirer: Effect.succeed(unbound),
      transactionAcquirer: reserve,
      compiler,
      spanAttributes,
      transformRows
    })
    // @effect/sql-pg's span, with the same attributes as the statements' (`spanAttributes` included)
    const withTransaction = transaction.make({ map: toSqlError }, () => core, {
      name: "sql.transaction",
      attributes: spanAttributes
    })
    const listener = yield* RcRef.make({
      acquire: Effect.gen(function*() {
        const listener = new Listener(core)
        yield* Effect.forkScoped(listener.supervise)
        return listener
      }),
      idleTimeToLive: "1 second"
    })
    const pgClient: PgClient.PgClient = Object.assign(pooledConstructor(client, { unbound, spanAttributes, transformRows }), {
      [PgClient.TypeId]: PgClient.TypeId,
      withTransaction: <R, E, A>(effect: Effect.Effect<A, E, R>) => withTransaction(effect),
      config: reported ?? {
        url: config.url,
        host: host.host,
        port: host.port,
        database: config.database,
        username: config.user,
        password: config.password,
        ssl: config.ssl !== undefined,
        applicationName: config.applicationName,
        maxConnections: config.maxConnections,
        minConnections: config.minConnections
      },
      json: (value: unknown) => PgJson(value, undefined, undefined),
      listen: (channel: string) =>
        Stream.asyncPush<string, SqlError>((emit) =>
          Effect.gen(function*() {
            const active = yield* RcRef.get(listener)
            const failed = yield* Deferred.make<void>()
            const subscriber: Subscriber = {
              emit: (payload) => {
                emit.single(payload)
              },
              fail: (error) => {
                emit.fail(error)
                Deferred.unsafeDone(failed, Exit.void)
              }
            }
            yield* Effect.acquireRelease(active.subscribe(channel, subscriber), () => active.unsubscribe(channel, subscriber))
            yield* Effect.timeoutOption(Effect.raceFirst(active.ready, Deferred.await(failed)), core.config.connectTimeout)
          })
        ),
      notify: (channel: string, payload: string) =>
        Effect.mapError(
          Effect.locally(
            core.statement("select pg_notify($1, $2)", [channel, payload], undefined, () => undefined),
            currentReadOnly,
            false
          ),
          toSqlError
        )
    })
    return pgClient
  })

/** @internal */
export const layerWith = (
  options: PgPoolSql.Options = {}
): Layer.Layer<Client.SqlClient | PgClient.PgClient, never, PgPool.PgPool> =>
  Layer.scopedContext(
    Effect.map(make(options), (client) =>
      Context.make(PgClient.PgClient, client).pipe(Context.add(Client.SqlClient, client)))
  ).pipe(Layer.provide(Reactivity.layer))

/** @internal */
export const pemText = (value: unknown): string | undefined => {
  if (value === undefined || value === null) return undefined
  if (typeof value === "string") return value
  if (value instanceof Uint8Array) return Buffer.from(value).toString("utf8")
  if (Array.isArray(value)) {
    const parts = value.map(pemText)
    return parts.every((p) => p !== undefined) ? parts.join("\n") : undefined
  }
  if (typeof value === "object" && "pem" in value) return pemText((value as { pem: unknown }).pem)
  return undefined
}

const supportedTlsOptions = new Set(["ca", "cert", "key", "passphrase", "rejectUnauthorized", "servername"])

/**
 * node-postgres' `ssl` (as @effect/sql-pg takes it) in this pool's terms: `true` is TLS that verifies the
 * server's certificate and host name, as node-postgres does; an object's `rejectUnauthorized: false` turns the
 * verification off.
 */
const sslOf = (ssl: PgPoolSql.ClientConfig["ssl"]): Connector.SslConfig | undefined | ConfigError.ConfigError => {
  if (ssl === undefined || ssl === false) return ssl
  if (ssl === true) return { mode: "verify-full" }
  if (typeof ssl !== "object" || ssl === null) {
    return ConfigError.InvalidData(["ssl"], "ssl must be a boolean or node's TLS options")
  }
  for (const [key, value] of Object.entries(ssl)) {
    if (value !== undefined && !supportedTlsOptions.has(key)) {
      return ConfigError.InvalidData(
        ["ssl"],
        `ssl.${key} is not supported (supported: ${[...supportedTlsOptions].join(", ")}; or use sslMode and the ssl* fields)`
      )
    }
  }
  const field = (name: "ca" | "cert" | "key" | "passphrase") => {
    const value = (ssl as Record<string, unknown>)[name]
    const text = pemText(value)
    return value !== undefined && text === undefined
      ? ConfigError.InvalidData(["ssl"], `ssl.${name} must be PEM text or a Buffer`)
      : text
  }
  const ca = field("ca")
  const cert = field("cert")
  const key = field("key")
  const passphrase = field("passphrase")
  for (const value of [ca, cert, key, passphrase]) if (ConfigError.isConfigError(value)) return value
  return {
    mode: ssl.rejectUnauthorized === false ? "require" : "verify-full",
    ...(ca === undefined ? {} : { ca: ca as string }),
    ...(cert === undefined ? {} : { cert: cert as string }),
    ...(key === undefined ? {} : { key: Redacted.make(key as string) }),
    ...(passphrase === undefined ? {} : { passphrase: Redacted.make(passphrase as string) }),
    ...(typeof ssl.servername === "string" ? { servername: ssl.servername } : {})
  }
}

/** The pool's configuration from @effect/sql-pg's (plus the pool's own knobs). */
const poolConfigOf = (config: PgPoolSql.ClientConfig): Effect.Effect<PgPool.Config, ConfigError.ConfigError> =>
  Effect.suspend(() => {
    const {
      connectionTTL,
      spanAttributes: _spanAttributes,
      ssl,
      transformJson: _transformJson,
      transformQueryNames: _transformQueryNames,
      transformResultNames: _transformResultNames,
      types,
      username,
      ...rest
    } = config
    const user = (rest as { readonly user?: unknown }).user
    if (user !== undefined && username !== undefined && user !== username) {
      return Effect.fail(ConfigError.InvalidData(["username"], "username and user name two different users"))
    }
    const mapped = sslOf(ssl)
    if (ConfigError.isConfigError(mapped)) return Effect.fail(mapped)
    const poolConfig: Record<string, unknown> = { ...rest }
    if (username !== undefined) poolConfig.user = username
    if (mapped !== undefined) poolConfig.ssl = mapped
    if (connectionTTL !== undefined && rest.maxLifetime === undefined) poolConfig.maxLifetime = connectionTTL
    if (types !== undefined) poolConfig.types = types
    return Effect.succeed(poolConfig as PgPool.Config)
  })

/** What stock @effect/sql-pg reports as `PgClient.config`: the configuration given, with the URL's parts. */
const reportedConfig = (config: PgPoolSql.ClientConfig): PgClient.PgClientConfig => {
  const raw = config.url === undefined ? undefined : Redacted.isRedacted(config.url) ? Redacted.value(config.url) : config.url
  const parsed = typeof raw === "string" ? parseUrl(raw) : undefined
  const { ssl: _ssl, types: _types, ...rest } = config
  return {
    ...(rest as Omit<PgPoolSql.ClientConfig, "url" | "ssl" | "types">),
    ...(config.ssl === undefined ? {} : { ssl: config.ssl }),
    ...(config.types === undefined ? {} : { types: config.types }),
    url: raw === undefined ? undefined : Redacted.isRedacted(config.url) ? config.url : Redacted.make(raw),
    host: config.host ?? parsed?.hosts[0]?.host,
    port: config.port ?? parsed?.hosts[0]?.port,
    username: config.username ?? parsed?.user,
    password: config.password ?? parsed?.password,
    database: config.database ?? parsed?.database
  }
}

/** @internal */
export const layerClient = (
  config: PgPoolSql.ClientConfig
): Layer.Layer<
  PgPool.PgPool | Client.SqlClient | PgClient.PgClient,
  ConnectionError | ConfigError.ConfigError
> =>
  Layer.scopedContext(Effect.gen(function*() {
    const poolConfig = yield* poolConfigOf(config)
    const pool = yield* makePool(poolConfig)
    const client = yield* Effect.provideService(
      make({
        transformResultNames: config.transformResultNames,
        transformQueryNames: config.transformQueryNames,
        transformJson: config.transformJson,
        spanAttributes: config.spanAttributes
      }, reportedConfig(config)),
      PgPoolTag,
      pool
    )
    return Context.make(PgPoolTag, pool).pipe(
      Context.add(PgClient.PgClient, client),
      Context.add(Client.SqlClient, client)
    )
  })).pipe(Layer.provide(Reactivity.layer), Layer.provide(ConnectorModule.layer))
