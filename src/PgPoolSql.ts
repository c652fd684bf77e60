/**
 * The @effect/sql drop-in: an `SqlClient`, also provided as @effect/sql-pg's `PgClient`, running on the pool.
 * Swap `PgClient.layer(...)` for `PgPoolSql.layer` on top of a pool layer and existing code keeps working:
 *
 * ```ts
 * import { SqlClient } from "@effect/sql"
 * import { Effect, Layer } from "effect"
 * import { PgPool, PgPoolSql } from "effect-pg-pool"
 *
 * const SqlLive = PgPoolSql.layer.pipe(Layer.provide(PgPool.layer({ url: "postgres://localhost/app" })))
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   return yield* sql`select ${1}::int as one`
 * })
 * ```
 *
 * `sql.withTransaction` and `Transaction.withTransaction` are one mechanism: nested in each other they share
 * the connection and the savepoint depth. Errors reach SqlClient users as `SqlError` whose `cause` is the
 * pool's tagged error (`PoolExhaustedError`, `ConnectionError`, `QueryError`, `PoolClosedError`).
 *
 * Statements, cursor streams and `reserve` are routed as `PgPool.connection` is: inside `PgPool.readOnly`, on
 * a pool of several hosts, they run on a standby (falling back per `readFallback`). `notify` runs where
 * ordinary work runs. `listen` holds a dedicated connection to the primary, where notifications are
 * delivered, chosen among the hosts as the pool chooses and chosen again whenever the connection is lost (it
 * then listens to its channels again by itself); a LISTEN the server rejects, or a pool with no primary, fails
 * the stream with a `SqlError`.
 *
 * @since 0.1.0
 */
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as internal from "./internal/sql/client.js"
import type * as PgPool from "./PgPool.js"
import type { ConnectionError } from "./PgPoolError.js"

/**
 * Options of the client, as in @effect/sql-pg's `PgClientConfig`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Renames result columns, e.g. `String.snakeToCamel`. */
  readonly transformResultNames?: ((str: string) => string) | undefined
  /** Renames identifiers in queries, e.g. `String.camelToSnake`. */
  readonly transformQueryNames?: ((str: string) => string) | undefined
  /** Apply the name transforms inside JSON values too. Default true. */
  readonly transformJson?: boolean | undefined
  /** Extra attributes of every statement span (`sql.execute`) and transaction span (`sql.transaction`). */
  readonly spanAttributes?: Record<string, unknown> | undefined
}

/**
 * `SqlClient` and `PgClient` on the `PgPool` of the context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<SqlClient.SqlClient | PgClient.PgClient, never, PgPool.PgPool> = internal.layerWith()

/**
 * `SqlClient` and `PgClient` with name transforms.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWith: (
  options: Options
) => Layer.Layer<SqlClient.SqlClient | PgClient.PgClient, never, PgPool.PgPool> = internal.layerWith

/**
 * @effect/sql-pg's `PgClientConfig` (the object `PgClient.layer` takes) plus the pool's own knobs: the fields
 * of `PgPool.Config` except `user` and `ssl`, which come in @effect/sql-pg's spelling (`username`, and
 * node-postgres' `ssl`: `true` is TLS verifying the server's certificate and host name, an object of Node TLS
 * options may give `ca`, `cert`, `key`, `passphrase`, `servername` and `rejectUnauthorized: false`).
 * `connectionTTL` is the pool's `maxLifetime`. A field neither knows (`path`, `stream`, a typo) is a
 * `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category models
 */
export interface ClientConfig extends Omit<PgPool.Config, "user" | "ssl" | "types">, Options {
  readonly username?: string | undefined
  readonly ssl?: PgClient.PgClientConfig["ssl"]
  readonly connectionTTL?: Duration.DurationInput | undefined
  readonly types?: PgClient.PgClientConfig["types"]
}

/**
 * The one-line swap for @effect/sql users: takes what `PgClient.layer` takes (and the pool's knobs) and
 * provides `SqlClient`, `PgClient` and the `PgPool` under them. `PgClient.config` reports what stock
 * @effect/sql-pg reports: the configuration given, with the URL's host, port, username, password and
 * database filled in.
 *
 * ```ts
 * // before: PgClient.layer({ url: Redacted.make(process.env.DATABASE_URL!), maxConnections: 20 })
 * const SqlLive = PgPoolSql.layerClient({ url: Redacted.make(process.env.DATABASE_URL!), maxConnections: 20 })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClient: (
  config: ClientConfig
) => Layer.Layer<
  PgPool.PgPool | SqlClient.SqlClient | PgClient.PgClient,
  ConnectionError | ConfigError.ConfigError
> = internal.layerClient

/**
 * {@link layerClient} with its configuration read with `Config`, as `PgClient.layerConfig`:
 *
 * ```ts
 * PgPoolSql.layerClientConfig({ url: Config.redacted("DATABASE_URL"), maxConnections: Config.integer("POOL_SIZE") })
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClientConfig = (
  config: Config.Config.Wrap<ClientConfig>
): Layer.Layer<
  PgPool.PgPool | SqlClient.SqlClient | PgClient.PgClient,
  ConnectionError | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(Config.unwrap(config), internal.layerClient))
