// A CommonJS consumer of the installed package (run by test/package.test.ts in a fresh project, with
// DATABASE_URL set): one statement through PgPool, one through @effect/sql's SqlClient on PgPoolSql.layer.
"use strict"
const { SqlClient } = require("@effect/sql")
const { PgClient } = require("@effect/sql-pg")
const { Effect, Layer, Redacted } = require("effect")
const { PgPool, PgPoolSql } = require("effect-pg-pool")
const PgPoolModule = require("effect-pg-pool/PgPool")

const url = process.env.DATABASE_URL
if (url === undefined || url === "") throw new Error("DATABASE_URL is not set")

const PoolLive = PgPool.layer({ url: Redacted.make(url), maxConnections: 2 })

const program = Effect.gen(function*() {
  const pool = yield* PgPool.query("select $1::int + 1 as answer", [41])
  const sql = yield* SqlClient.SqlClient
  const viaSql = yield* sql`select ${"two"}::text as word, ${2}::int as two`
  const subpath = yield* PgPoolModule.query("select 'subpath' as via")
  const stats = yield* PgPool.stats
  return { pool, sql: viaSql, subpath, inUse: stats.inUse }
})

// the one-line swap for PgClient.layer: the same configuration object, SqlClient and PgClient provided
const swap = Effect.gen(function*() {
  const pg = yield* PgClient.PgClient
  const rows = yield* pg`select 1 as via_swap`
  return { rows, urlReported: pg.config.url !== undefined, maxConnections: pg.config.maxConnections }
}).pipe(Effect.provide(PgPoolSql.layerClient({
  url: Redacted.make(url),
  maxConnections: 2,
  transformResultNames: (name) => name.replace(/_(.)/g, (_, c) => c.toUpperCase())
})))

// what a CommonJS consumer must not reach
const closed = (specifier) => {
  try {
    require(specifier)
    return "loaded"
  } catch (error) {
    return error.code
  }
}

Effect.runPromise(Effect.zip(program.pipe(Effect.provide(PgPoolSql.layer.pipe(Layer.provideMerge(PoolLive)))), swap))
  .then(
    ([result, swapped]) => {
      console.log(JSON.stringify({
        format: "cjs",
        // the build the require condition chose
        resolved: require.resolve("effect-pg-pool"),
        sameModule: PgPoolModule.query === PgPool.query,
        version: require("effect-pg-pool/package.json").version,
        internal: closed("effect-pg-pool/internal/pool"),
        swap: swapped,
        ...result
      }))
    },
    (error) => {
      console.error(error)
      process.exitCode = 1
    }
  )
