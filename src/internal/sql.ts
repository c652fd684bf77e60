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
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import { identity } from "effect/Function"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as RcRef from "effect/RcRef"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import type * as Connector from "../Connector.js"
import type * as PgPool from "../PgPool.js"
import type { ConnectionError, PoolError, QueryError } from "../PgPoolError.js"
import type * as PgPoolSql from "../PgPoolSql.js"
import * as config_ from "./config.js"
import { CoreId, type Handle, type Pin, pinOf, type PoolCore, tag as PgPoolTag } from "./pool.js"
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
      ? Effect.fail(this.core.usedAfterRelease(handle))
      : this.core.runThen(handle.conn, sql, params, rowMode, (result) => Effect.succeed(project(result)))
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
      const pinned = yield* Effect.withFiberRuntime<Pin | undefined>((fiber) => Effect.succeed(pinOf(fiber, core)))
      const handle = own ?? pinned?.handle ?? (yield* Effect.mapError(core.scopedCheckout, toSqlError))
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

/** The @effect/sql connection of a checked-out connection (used for `TransactionConnection`). */
/** @internal */
export const sqlConnection = (handle: Handle): SqlConnection.Connection => new PooledSqlConnection(handle.core, handle)

const quoteIdent = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

/**
 * LISTEN on a dedicated connection (outside the pool). When that connection is lost, it is reopened per the
 * pool's `reconnect` schedule and every channel with subscribers is listened to again. A semaphore keeps
 * subscriptions and the (re)start of the connection from interleaving.
 */
class Listener {
  readonly channels = new Map<string, Set<(payload: string) => void>>()
  readonly lock = Effect.unsafeMakeSemaphore(1)
  driver: Connector.Connection | undefined = undefined
  up: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  constructor(readonly core: PoolCore) {}

  dispatch = (notification: Connector.Notification) => {
    const subscribers = this.channels.get(notification.channel)
    if (subscribers === undefined) return
    for (const emit of subscribers) emit(notification.payload)
  }

  execute(driver: Connector.Connection | undefined, text: string): Effect.Effect<void> {
    if (driver === undefined) return Effect.void
    return Effect.async<void>((resume) => {
      driver.send(text, undefined, undefined, () => resume(Effect.void))
    })
  }

  /** One life of the dedicated connection: connect, LISTEN to every channel, wait until it is lost. */
  readonly session: Effect.Effect<void, ConnectionError> = Effect.scoped(Effect.gen(this, function*() {
    const lost = yield* Deferred.make<void>()
    const options = config_.connectOptions(this.core.config, this.core.config.hosts[0]!)
    const driver = yield* this.core.connector.connect(options, () => Deferred.unsafeDone(lost, Exit.void))
    driver.onNotification(this.dispatch)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        this.driver = undefined
        this.up = Deferred.unsafeMake<void>(FiberId.none)
      })
    )
    yield* this.lock.withPermits(1)(Effect.gen(this, function*() {
      for (const channel of this.channels.keys()) yield* this.execute(driver, `LISTEN ${quoteIdent(channel)}`)
      this.driver = driver
      yield* Deferred.succeed(this.up, undefined)
    }))
    yield* Effect.logDebug("listen connection ready").pipe(Effect.annotateLogs({ backendPid: driver.backendPid }))
    yield* Deferred.await(lost)
    yield* Effect.logWarning("listen connection lost; reconnecting")
  }))

  get supervise(): Effect.Effect<never> {
    return this.session.pipe(
      Effect.retry({ schedule: this.core.config.reconnect }),
      Effect.ignore,
      Effect.forever
    )
  }

  subscribe(channel: string, emit: (payload: string) => void): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      let subscribers = this.channels.get(channel)
      const first = subscribers === undefined
      if (subscribers === undefined) {
        subscribers = new Set()
        this.channels.set(channel, subscribers)
      }
      subscribers.add(emit)
      return first ? this.execute(this.driver, `LISTEN ${quoteIdent(channel)}`) : Effect.void
    }))
  }

  unsubscribe(channel: string, emit: (payload: string) => void): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      const subscribers = this.channels.get(channel)
      if (subscribers === undefined) return Effect.void
      subscribers.delete(emit)
      if (subscribers.size > 0) return Effect.void
      this.channels.delete(channel)
      return this.execute(this.driver, `UNLISTEN ${quoteIdent(channel)}`)
    }))
  }

  /** Completes once the dedicated connection is up and listening. */
  readonly ready: Effect.Effect<void> = Effect.suspend(() => Deferred.await(this.up))
}

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

/** Effect's own tracer, which keeps spans in memory only (no tracer was installed). */
const nativeTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/**
 * Whether a statement's span can be seen by anyone: tracing is on and a tracer other than Effect's in-memory
 * default is installed (e.g. @effect/opentelemetry's). A `sql.execute` span of the default tracer has no
 * child and reaches no exporter, so it is not made.
 */
const traced = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean =>
  fiber.getFiberRef(FiberRef.currentTracerEnabled) &&
  Context.get(fiber.currentDefaultServices, Tracer.Tracer) !== nativeTracer

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
  options: PgPoolSql.Options = {}
): Effect.Effect<PgClient.PgClient, never, PgPool.PgPool | Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const service = yield* PgPoolTag
    const core = (service as { readonly [CoreId]?: PoolCore })[CoreId]
    if (core === undefined) return yield* Effect.dieMessage("PgPoolSql needs a PgPool built by this package")
    const config = core.config
    const host = config.hosts[0]!
    const unbound = new PooledSqlConnection(core, undefined)
    const reserve = Effect.map(Effect.mapError(core.scopedCheckout, toSqlError), (handle) =>
      new PooledSqlConnection(core, handle) as SqlConnection.Connection)
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
    const withTransaction = transaction.make({ map: toSqlError }, () => core)
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
      config: {
        host: host.host,
        port: host.port,
        database: config.database,
        username: config.user,
        password: config.password,
        ssl: config.ssl !== undefined && config.ssl !== false,
        applicationName: config.applicationName
      },
      json: (value: unknown) => PgJson(value, undefined, undefined),
      listen: (channel: string) =>
        Stream.asyncPush<string, SqlError>((emit) =>
          Effect.gen(function*() {
            const active = yield* RcRef.get(listener)
            const push = (payload: string) => {
              emit.single(payload)
            }
            yield* Effect.acquireRelease(active.subscribe(channel, push), () => active.unsubscribe(channel, push))
            yield* Effect.timeoutOption(active.ready, core.config.connectTimeout)
          })
        ),
      notify: (channel: string, payload: string) =>
        Effect.mapError(
          core.statement("select pg_notify($1, $2)", [channel, payload], undefined, () => undefined),
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
