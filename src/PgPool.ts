/**
 * The pool: a bounded set of PostgreSQL connections exposed as an Effect service.
 *
 * ```ts
 * import { Effect } from "effect"
 * import { PgPool } from "effect-pg-pool"
 *
 * const program = Effect.gen(function*() {
 *   const rows = yield* PgPool.query("select $1::int as answer", [42])
 *   const conn = yield* PgPool.connection // back to the pool when the scope closes
 *   yield* conn.query("select pg_backend_pid()")
 * }).pipe(Effect.scoped, Effect.provide(PgPool.layer({ url: "postgres://localhost/app" })))
 * ```
 *
 * @since 0.1.0
 */
import * as Config_ from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import type * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Connector from "./Connector.js"
import * as configInternal from "./internal/config/env.js"
import * as internal from "./internal/pgpool/service.js"
import type { ConnectionError, DrainTimeoutError, PoolClosedError, PoolError, QueryError } from "./PgPoolError.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = internal.TypeId

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * A row: column name to value, parsed by the driver's type parsers.
 *
 * @since 0.1.0
 * @category models
 */
export type Row = Connector.Row

/**
 * How a connection is cleaned when it comes back to the pool (DBUtils' `reset` 0/1/2):
 *
 * - `"transaction"` (default): `ROLLBACK` only when the server reports an open or failed transaction;
 * - `"always"`: always `ROLLBACK`;
 * - `"full"`: `ROLLBACK` if needed, then `DISCARD ALL` (drops temporary tables, prepared statements,
 *   session settings, advisory locks), then the `setSession` statements again.
 *
 * @since 0.1.0
 * @category models
 */
export type ResetMode = "transaction" | "always" | "full"

/**
 * Health checking of idle connections (pgdbpool's "SQL ping").
 *
 * @since 0.1.0
 * @category models
 */
export interface HealthCheckOptions {
  /** A connection idle longer than this is pinged before it is handed out. Default 5 seconds. */
  readonly idleThreshold?: Duration.DurationInput | undefined
  /** Idle connections are pinged this often by the maintenance fiber. Default 60 seconds. */
  readonly interval?: Duration.DurationInput | undefined
  /** How long a ping may take before the connection is considered dead. Default 5 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
}

/**
 * The pool configuration. Every field is optional; the defaults are in the README's table.
 *
 * @since 0.1.0
 * @category models
 */
export interface Config {
  /**
   * A libpq connection URI, `postgres://user:password@host:port/database?sslmode=require`. Its parameters:
   * `host`, `port`, `dbname`, `user`, `password`, `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslpassword`,
   * `application_name`, `fallback_application_name`, `options`, `connect_timeout`, `target_session_attrs`,
   * `load_balance_hosts`, and this pool's `pooler`; any other is a `ConfigError`. The fields below win over the
   * URL's values.
   */
  readonly url?: Redacted.Redacted | string | undefined
  /** Default `localhost`. */
  readonly host?: string | undefined
  /** Default 5432. */
  readonly port?: number | undefined
  /** Several servers, tried in order (see `targetSessionAttrs`). */
  readonly hosts?: ReadonlyArray<{ readonly host: string; readonly port?: number | undefined }> | undefined
  /** Default: the user name. */
  readonly database?: string | undefined
  /**
   * Default `postgres`. Or an Effect that fetches it (dynamic database credentials from a secret manager), run
   * with `password`'s for each new physical connection, as `password`'s; then `database` must be given.
   */
  readonly user?: string | Effect.Effect<Redacted.Redacted | string, unknown> | undefined
  /**
   * The password, or an Effect that fetches it (an IAM token, a secret manager), run for each new physical
   * connection (not for each checkout); connects that start while it runs share its result. Its failure is a
   * `ConnectionError` carrying the cause, retried on the `reconnect` Schedule. Never logged, put in an error,
   * a span or stats.
   */
  readonly password?: Redacted.Redacted | Effect.Effect<Redacted.Redacted, unknown> | undefined
  /** TLS: `false`, `true` (`sslMode` `"require"`) or options with certificates; see `Connector.SslConfig`. */
  readonly ssl?: Connector.SslConfig | undefined
  /** libpq's `sslmode` (see `Connector.SslMode`). Default `"disable"` unless `ssl` says otherwise. */
  readonly sslMode?: Connector.SslMode | undefined
  /** A file of trusted CA certificates (libpq's `sslrootcert`); `"system"` for Node's bundled roots. */
  readonly sslRootCert?: string | undefined
  /** A file holding the client certificate (libpq's `sslcert`). */
  readonly sslCert?: string | undefined
  /** A file holding the client certificate's private key (libpq's `sslkey`). */
  readonly sslKey?: string | undefined
  /** The passphrase of an encrypted client key (libpq's `sslpassword`). */
  readonly sslPassword?: Redacted.Redacted | undefined
  readonly applicationName?: string | undefined
  /** libpq's `options`: command-line options for the server at connect, e.g. `"-c search_path=app"`. */
  readonly options?: string | undefined
  /** Type parsers for result columns, as node-postgres' `types` (the live connector; the fake ignores them). */
  readonly types?: Connector.TypeParsers | undefined

  /** Connections opened at start and kept open by the maintenance fiber (PooledPg `mincached`). Default 0. */
  readonly minConnections?: number | undefined
  /** Idle connections kept; a connection returned beyond this is closed (PooledPg `maxcached`). Default `maxConnections`. */
  readonly maxIdle?: number | undefined
  /** Hard cap on open connections, idle + in use + being opened. Default 10. */
  readonly maxConnections?: number | undefined
  /** When every connection is busy: wait (true, default) or fail at once with `PoolExhaustedError`. */
  readonly blocking?: boolean | undefined
  /** How long a checkout may wait. Default 30 seconds. */
  readonly acquireTimeout?: Duration.DurationInput | undefined
  /** How many fibers may wait for a connection; one more fails at once. Default unbounded. */
  readonly maxWaiting?: number | undefined
  /**
   * Admission control: a checkout whose wait is predictably longer than `acquireTimeout` (from the queue's
   * length and how long checkouts have held connections lately) fails at once with
   * `PoolExhaustedError` reason `"overloaded"` instead of queueing to time out. Default false.
   */
  readonly shedLoad?: boolean | undefined
  /**
   * Pipelining: when every connection is busy, a one-shot statement (`PgPool.query`, the SqlClient's statements
   * outside transactions) is sent on a busy connection behind the statements in flight there, up to this many
   * in flight per connection, instead of waiting for a connection; each is its own implicit transaction, and
   * interrupting one cancels exactly that one. Only once the pool has all its connections, and only on a
   * connection whose measured pace predicts the statement's wait within half of `acquireTimeout` (a statement
   * once sent cannot be taken back, so `acquireTimeout` does not bound it: `1` gives the hard bound). 1 turns it
   * off. Default 64.
   */
  readonly pipelineDepth?: number | undefined
  /** Statements per physical connection before it is closed and replaced at the next safe point. Default unlimited (0). */
  readonly maxUsage?: number | undefined
  /**
   * Automatic preparation: a statement (SELECT, INSERT, UPDATE, DELETE, MERGE) that ran this many times on a
   * connection is prepared there, so later runs skip the server's parse and plan. Default 5.
   */
  readonly prepareThreshold?: number | undefined
  /**
   * Prepared statements kept per connection, the least recently used closed beyond it. 0 turns automatic
   * preparation off. Default 100.
   */
  readonly statementCacheSize?: number | undefined
  /** SQL run on every new connection, e.g. `["set time zone 'UTC'"]`. */
  readonly setSession?: ReadonlyArray<string> | undefined
  /** How a returned connection is cleaned. Default `"transaction"`. */
  readonly reset?: ResetMode | undefined
  /** Idle connections older than this are closed (while more than `minConnections` are open). Default 10 minutes. */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** A connection is closed and replaced at this age, minus a random jitter. Default 30 minutes. */
  readonly maxLifetime?: Duration.DurationInput | undefined
  /** Up to this much is taken off each connection's lifetime at random, so they do not expire together. Default a tenth of `maxLifetime`. */
  readonly maxLifetimeJitter?: Duration.DurationInput | undefined
  /** `false` (pg_simple `disable_pooling`): every checkout opens a new connection, closed on return. Default true. */
  readonly pooling?: boolean | undefined
  /** Bound on opening one connection (TCP, TLS, authentication, `setSession`). Default 10 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** How long closing the layer waits for checked-out connections before closing them. Default 10 seconds. */
  readonly drainTimeout?: Duration.DurationInput | undefined
  /** How often the maintenance fiber runs (idle and lifetime expiry, minConnections, keepalive pings). Default 5 seconds. */
  readonly maintenanceInterval?: Duration.DurationInput | undefined

  /** When connecting fails: the retry schedule. Default exponential from 100 ms, doubled, jittered, capped at 5 s. */
  readonly reconnect?: Schedule.Schedule<unknown, unknown> | undefined
  /** `false` (default): building the layer opens and checks a connection. `true`: build at once, connect on demand. */
  readonly lazy?: boolean | undefined
  /** Validation of idle connections: `true` (default), `false`, or options. */
  readonly healthCheck?: boolean | HealthCheckOptions | undefined
  /**
   * `false` (default): a statement is sent at most once. A `PgPool.query` whose connection was lost after the
   * statement reached the server fails with `ConnectionError` (its SQLSTATE, e.g. 57P01 for a terminated
   * backend): it may have run, up to its commit. Only a statement that provably never reached a live backend
   * (`ConnectionError.safeToRetry`) is sent again, on another connection. `true`: at-least-once, a
   * `PgPool.query` outside a transaction whose connection was lost is also sent again once on a fresh
   * connection, so it may run twice (a killed runaway statement runs again; an INSERT may be applied twice).
   */
  readonly retryLostQueries?: boolean | undefined
  /** Server-side `statement_timeout` for every connection. Default none. */
  readonly statementTimeout?: Duration.DurationInput | undefined
  /** Client-side bound on each statement; when it runs out the statement is cancelled on the server. Default none. */
  readonly queryTimeout?: Duration.DurationInput | undefined
  /** Log a warning, naming where it was checked out, when a connection is held longer than this. Default off. */
  readonly leakDetectionThreshold?: Duration.DurationInput | undefined
  /** The pool's name in logs and metrics (`db.client.connection.pool.name`). Default `user@host:port/database`. */
  readonly name?: string | undefined
  /** Record the `db.client.connection.*` metrics. Default true. */
  readonly metrics?: boolean | undefined

  /**
   * Which server ordinary work runs on (libpq's `target_session_attrs`): `"any"`, `"read-write"`,
   * `"read-only"`, `"primary"`, `"standby"`, `"prefer-standby"`. Hosts are tried in order until one matches.
   * Default `"read-write"` with several hosts and `readRouting: "standby"` (so writes never land on a standby),
   * else `"any"`; a `target_session_attrs` in `url` (or `PGTARGETSESSIONATTRS` for `PgPoolLive`) counts as given.
   */
  readonly targetSessionAttrs?:
    | "any"
    | "read-write"
    | "read-only"
    | "primary"
    | "standby"
    | "prefer-standby"
    | undefined
  /** `"random"`: try the hosts in a random order for each connection (libpq's `load_balance_hosts`). Default `"disable"`. */
  readonly loadBalanceHosts?: "disable" | "random" | undefined
  /**
   * Where read-only work (`PgPool.readOnly`, read-only transactions) runs: `"standby"` (the default when
   * several hosts are given) or `"off"` (with everything else).
   */
  readonly readRouting?: "standby" | "off" | undefined
  /** How a standby is chosen for read-only work: `"least-busy"` (default), `"round-robin"` or `"random"`. */
  readonly readBalancing?: "round-robin" | "random" | "least-busy" | undefined
  /** When no standby is healthy, run read-only work where ordinary work runs (true, default) or fail. */
  readonly readFallback?: boolean | undefined
  /** How often the role of each host (primary or standby) is checked again. Default 5 seconds. */
  readonly roleCheckInterval?: Duration.DurationInput | undefined
  /**
   * Read-your-writes for all work (see {@link readYourWrites}, which turns it on for one effect): once a fiber
   * has written on the primary, its read-only work runs only on a standby that has replayed that write (waiting
   * up to `readYourWritesTimeout` for one), else on the primary. Default false.
   */
  readonly readYourWrites?: boolean | undefined
  /** How long read-only work waits for a standby to replay the fiber's last write before running on the primary. Default 500 ms. */
  readonly readYourWritesTimeout?: Duration.DurationInput | undefined

  /**
   * What sits between the pool and the server. `"transaction"`: a transaction pooler (PgBouncer, Supavisor, a
   * cloud proxy in transaction mode): no named prepared statements (the unnamed extended protocol only), no
   * session state set by the pool (`setSession`, `reset: "full"` and `statementTimeout` are `ConfigError`s),
   * `listen` refused, and a Warning (once per text) for work that sets session state. `"auto"` (default):
   * statements are prepared until a connection sees a sign of a transaction pooler, then never again, with a
   * Warning. Also `?pooler=transaction` in `url`, `PGPOOL_POOLER`.
   */
  readonly pooler?: "auto" | "transaction" | undefined
}

/**
 * A snapshot of the pool.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolStats {
  /** Open physical connections: idle + inUse + being opened. */
  readonly size: number
  readonly idle: number
  readonly inUse: number
  /** Fibers queued for a connection. */
  readonly waiting: number
  /** Connections being opened right now. */
  readonly pending: number
  readonly maxConnections: number
  /** Connections opened since the pool started. */
  readonly created: number
  /** Connections closed since the pool started, in all and by reason. */
  readonly closed: number
  readonly closedByReason: Readonly<Record<CloseReason, number>>
  /** Checkouts served (a statement sent behind others on a busy connection counts in `pipelined` instead). */
  readonly acquired: number
  /** Checkouts that ran out of time, or were refused as sure to (`shed`). */
  readonly timeouts: number
  /** Checkouts refused at once because the predicted wait exceeded `acquireTimeout` (`shedLoad`). */
  readonly shed: number
  /** One-shot statements sent behind others on a busy connection (`pipelineDepth`). */
  readonly pipelined: number
  /** Connect attempts that failed. */
  readonly connectFailures: number
  /** Open connections per host, with the host's role as last seen (`"unknown"` until it is checked). */
  readonly hosts: ReadonlyArray<HostStats>
}

/**
 * The connections of one host.
 *
 * @since 0.1.0
 * @category models
 */
export interface HostStats {
  readonly host: string
  readonly port: number
  readonly role: "primary" | "standby" | "unknown"
  /**
   * False while no connect goes to the host: it did not answer, or the credentials to connect to it could not
   * be had (the Warning logged says which); it is tried again per the `reconnect` schedule.
   */
  readonly up: boolean
  readonly size: number
  readonly idle: number
  readonly inUse: number
  /** Of `size`, the connections that serve read-only work (the host's read pool). */
  readonly forReads: number
}

/**
 * Why a physical connection was closed.
 *
 * @since 0.1.0
 * @category models
 */
export type CloseReason =
  | "idle"
  | "lifetime"
  | "maxUsage"
  | "maxIdle"
  | "broken"
  | "invalidated"
  | "unpooled"
  | "reset"
  | "busy"
  | "role"
  | "poolClosed"
  | "resized"
  | "drained"

/**
 * A connection checked out of the pool. It goes back when the Scope of the checkout closes.
 *
 * @since 0.1.0
 * @category models
 */
export interface PooledConnection {
  /** Runs one statement on this connection. */
  readonly query: (
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Row>, QueryError | ConnectionError>
  /** The server process id of this physical connection. */
  readonly backendPid: number
  /** Closes the physical connection instead of returning it (psycopg2's `putconn(conn, close=True)`). */
  readonly invalidate: Effect.Effect<void>
}

/**
 * The pool service.
 *
 * @since 0.1.0
 * @category models
 */
export interface PgPool {
  readonly [TypeId]: TypeId
  readonly connection: Effect.Effect<PooledConnection, PoolError, Scope.Scope>
  readonly query: (
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<Row>, PoolError | QueryError>
  readonly withConnection: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | PoolError, R>
  readonly readOnly: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** See {@link readYourWrites}. */
  readonly readYourWrites: <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options?: ReadYourWritesOptions
  ) => Effect.Effect<A, E | QueryError, R>
  /** See {@link writeLsn}. */
  readonly writeLsn: Effect.Effect<Option.Option<string>, PoolError | QueryError>
  readonly stats: Effect.Effect<PoolStats>
  readonly purgeExpired: Effect.Effect<number>
  /** See {@link resize}. */
  readonly resize: (options: ResizeOptions) => Effect.Effect<void, ConfigError.ConfigError | PoolClosedError>
  /** See {@link drain}. */
  readonly drain: Effect.Effect<void, DrainTimeoutError | PoolClosedError>
}

/**
 * Options of {@link readYourWrites}.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReadYourWritesOptions {
  /**
   * A write position carried from another request (what {@link writeLsn} gave there, e.g. in a cookie): reads
   * in the effect see at least everything written up to it. A text that is not an LSN fails the effect with a
   * `QueryError` (SQLSTATE 22P02) before it runs.
   */
  readonly after?: string | undefined
}

/**
 * The new sizes of {@link resize}; a size left out keeps its value.
 *
 * @since 0.1.0
 * @category models
 */
export interface ResizeOptions {
  readonly minConnections?: number | undefined
  readonly maxConnections?: number | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export const PgPool: Context.Tag<PgPool, PgPool> = internal.tag

/**
 * Builds a pool in the current Scope on the `Connector` in the context. Closing the Scope drains and closes
 * the pool.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  config: Config
) => Effect.Effect<PgPool, ConnectionError | ConfigError.ConfigError, Scope.Scope | Connector.Connector> = internal.make

/**
 * The pool as a Layer, over node-postgres.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (config: Config): Layer.Layer<PgPool, ConnectionError | ConfigError.ConfigError> =>
  Layer.scoped(PgPool, make(config)).pipe(Layer.provide(Connector.layer))

/**
 * What `layerConfig` reads: `Config.Wrap<Config>` (each field a `Config`, or the whole a `Config`), where any
 * field may also be given as a plain value (`pooler: "transaction"` next to `url: Config.redacted(...)`), and
 * `password` and `user` as Effects run for each new connection (see `Config.password`): an Effect that is not
 * a `Config` is taken as such, a `Config` is read once at start.
 *
 * @since 0.1.0
 * @category models
 */
export type LayerConfig =
  | Config_.Config.Wrap<Config>
  | {
    readonly [K in keyof Config]:
      | Config_.Config.Wrap<Config[K]>
      | Config[K]
      | (K extends "healthCheck" | "ssl" ? LayerConfigOptions<Exclude<Config[K], boolean | undefined>> : never)
  }

/**
 * The options of `healthCheck` and `ssl` in `layerConfig`: each a `Config` or a plain value.
 *
 * @since 0.1.0
 * @category models
 */
export type LayerConfigOptions<A> = { readonly [K in keyof A]: Config_.Config.Wrap<A[K]> | A[K] }

/**
 * The pool as a Layer, its configuration read with `Config`:
 *
 * ```ts
 * PgPool.layerConfig({ url: Config.redacted("DATABASE_URL"), maxConnections: Config.integer("POOL_SIZE") })
 * // a password fetched for each new connection (an IAM token): an Effect that is not a Config
 * PgPool.layerConfig({ url: Config.redacted("DATABASE_URL"), password: fetchToken })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: LayerConfig
): Layer.Layer<PgPool, ConnectionError | ConfigError.ConfigError> =>
  Layer.scoped(PgPool, Effect.flatMap(Config_.unwrap(configInternal.perConnectEffects(config)), make)).pipe(
    Layer.provide(Connector.layer)
  )

/**
 * The configuration read from the environment, as libpq reads it: `DATABASE_URL`, whose values win, and libpq's
 * `PGHOST` and `PGPORT` (comma-separated for several hosts), `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`,
 * `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGAPPNAME`, `PGOPTIONS`, `PGCONNECT_TIMEOUT` (seconds, 0 for no
 * limit), `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS` for whatever the URL does not give (a URL without a
 * password takes `PGPASSWORD`); every pool knob from `PGPOOL_<KNOB>`, the knob's name in screaming snake case
 * (`PGPOOL_MAX_CONNECTIONS=20`, `PGPOOL_ACQUIRE_TIMEOUT=5000` or `"5 seconds"`, `PGPOOL_SET_SESSION` as
 * statements separated by `;` or line breaks). An invalid value fails with a `ConfigError` naming the field and
 * the variable. Not from the environment: `healthCheck`, `reconnect`, `types`, `ssl` beyond the `PGSSL*`
 * variables. (`PgPoolLive` also refuses a `PGPOOL_` variable that is not a knob.)
 *
 * @since 0.1.0
 * @category constructors
 */
export const configFromEnv: Config_.Config<Config> = configInternal.configFromEnv

/**
 * The pool configured from the environment (see {@link configFromEnv}). A `PGPOOL_` variable that is not one of
 * the pool's knobs (a typo such as `PGPOOL_MAX_CONECTIONS`) fails the layer with a `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const PgPoolLive: Layer.Layer<PgPool, ConnectionError | ConfigError.ConfigError> = Layer.scoped(
  PgPool,
  Effect.zipRight(configInternal.checkPoolVariables, Effect.flatMap(configFromEnv, make))
).pipe(Layer.provide(Connector.layer))

/**
 * Checks a connection out for the current Scope.
 *
 * @since 0.1.0
 * @category accessors
 */
export const connection: Effect.Effect<PooledConnection, PoolError, PgPool | Scope.Scope> = Effect.flatMap(
  PgPool,
  (pool) => pool.connection
)

/**
 * Runs one statement on a connection checked out for just that statement (or on the pinned connection of
 * an enclosing `withConnection` / transaction). With a tracer installed it is a `PgPool.query` span (a child of
 * the current span) with the statement's text and OpenTelemetry's `db.*` attributes; with none, no span is made.
 *
 * @since 0.1.0
 * @category accessors
 */
export const query = (
  text: string,
  params?: ReadonlyArray<unknown>
): Effect.Effect<ReadonlyArray<Row>, PoolError | QueryError, PgPool> => internal.query(text, params)

/**
 * Pins one connection for the whole effect: every `PgPool.query` and `PgPool.connection` inside reuses it.
 * With a tracer installed it is a `PgPool.withConnection` span, the parent of the spans made inside.
 *
 * @since 0.1.0
 * @category accessors
 */
export const withConnection = <A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | PoolError, R | PgPool> => Effect.flatMap(PgPool, (pool) => pool.withConnection(effect))

/**
 * Runs the effect as read-only work: with several hosts, on a standby (falling back to the primary when
 * none is healthy); with one host, on it.
 *
 * @since 0.1.0
 * @category accessors
 */
export const readOnly = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | PgPool> =>
  Effect.flatMap(PgPool, (pool) => pool.readOnly(effect))

/**
 * Read-your-writes for `effect` (one request): once work in it has run on the primary (a write, a transaction,
 * anything not read-only), its read-only work (`readOnly`, read-only transactions) runs only on a standby that
 * has replayed the primary's WAL position after that work, waiting up to `readYourWritesTimeout` for one, else
 * on the primary. Read-only work before any write goes to a standby as usual. `after` starts from a position
 * carried from another request (see {@link writeLsn}). The positions of the effect's writes are forgotten
 * after it. With one host (or `readRouting: "off"`) every statement runs on the one server anyway.
 *
 * @since 0.1.0
 * @category combinators
 */
export const readYourWrites: {
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R | PgPool>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options: ReadYourWritesOptions
  ): Effect.Effect<A, E | QueryError, R | PgPool>
} = <A, E, R>(effect: Effect.Effect<A, E, R>, options?: ReadYourWritesOptions) =>
  Effect.flatMap(PgPool, (pool) => pool.readYourWrites(effect, options))

/**
 * The primary's WAL position after this fiber's last work there (in the current `readYourWrites` scope, or
 * with the `readYourWrites` knob), as text (`"16/B374D848"`) to carry to another request (a cookie, a header)
 * and give to `readYourWrites({ after })` there; `None` when the fiber has done no such work. Reads it from the
 * primary when work came there since it was last read.
 *
 * @since 0.1.0
 * @category accessors
 */
export const writeLsn: Effect.Effect<Option.Option<string>, PoolError | QueryError, PgPool> = Effect.flatMap(
  PgPool,
  (pool) => pool.writeLsn
)

/**
 * @since 0.1.0
 * @category accessors
 */
export const stats: Effect.Effect<PoolStats, never, PgPool> = Effect.flatMap(PgPool, (pool) => pool.stats)

/**
 * Closes the idle connections past `idleTimeout` (down to `minConnections`) and returns how many.
 *
 * @since 0.1.0
 * @category accessors
 */
export const purgeExpired: Effect.Effect<number, never, PgPool> = Effect.flatMap(PgPool, (pool) => pool.purgeExpired)

/**
 * Changes `minConnections` and `maxConnections` of the running pool, at once: growing serves waiting fibers
 * right away; shrinking closes idle connections first and the surplus busy ones as they come back (close
 * reason `"resized"`), never interrupting a statement. `maxIdle` follows `maxConnections` when it was equal to
 * it, else stays (at most `maxConnections`). With several hosts it applies to every pool: the pool for ordinary
 * work and each standby's read pool (whose `minConnections` stays 0). Invalid values fail with a `ConfigError`
 * naming the field, and change nothing; a closed pool fails with `PoolClosedError`.
 *
 * @since 0.1.0
 * @category combinators
 */
export const resize = (
  options: ResizeOptions
): Effect.Effect<void, ConfigError.ConfigError | PoolClosedError, PgPool> =>
  Effect.flatMap(PgPool, (pool) => pool.resize(options))

/**
 * Replaces every connection of the running pool (psycopg_pool's `drain`, HikariCP's `softEvictConnections`):
 * idle ones are closed at once (and reopened as `minConnections` or demand needs), busy ones when they come
 * back (close reason `"drained"`); it completes when no connection opened before the call is left, or fails
 * with `DrainTimeoutError` after `drainTimeout` (the rest are still replaced as they come back). The pool serves
 * callers throughout. After a failover behind one DNS name, a server configuration change that only new
 * sessions see, or a rotated certificate. With several hosts, every pool. A closed pool fails with
 * `PoolClosedError`.
 *
 * @since 0.1.0
 * @category combinators
 */
export const drain: Effect.Effect<void, DrainTimeoutError | PoolClosedError, PgPool> = Effect.flatMap(
  PgPool,
  (pool) => pool.drain
)
