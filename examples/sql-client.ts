/**
 * @effect/sql on the pool: `PgPoolSql.layer` provides `SqlClient` and `PgClient`, so code written for
 * @effect/sql-pg runs unchanged. The only change is the layer:
 *
 *   - const SqlLive = PgClient.layer({ url: Redacted.make(process.env.DATABASE_URL!) })
 *   + const SqlLive = PgPoolSql.layer.pipe(Layer.provide(PgPoolLive))
 *
 *   npx tsx examples/sql-client.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Chunk, Console, Effect, Layer, Stream } from "effect"
import { PgPool, PgPoolSql } from "effect-pg-pool"
import { PoolLive } from "./database.js"

const SqlLive = Layer.provideMerge(PgPoolSql.layer, PoolLive)

const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`drop table if exists people`
  yield* sql`create table people (id serial primary key, name text not null, born int, tags jsonb)`
  yield* sql`insert into people ${
    sql.insert([
      { name: "Ada Lovelace", born: 1815, tags: JSON.stringify(["math"]) },
      { name: "Alan Turing", born: 1912, tags: JSON.stringify(["math", "computing"]) },
      { name: "Grace Hopper", born: 1906, tags: JSON.stringify(["computing"]) }
    ])
  }`
  const before1910 = yield* sql<{ name: string }>`select name from people where born < ${1910} order by born`
  yield* Console.log("born before 1910:", before1910.map((p) => p.name))

  const chosen = yield* sql<{ name: string }>`select name from people where ${
    sql.in("name", ["Ada Lovelace", "Nobody"])
  }`
  yield* Console.log("sql.in:", chosen)

  const pg = yield* PgClient.PgClient
  const [json] = yield* pg<{ doc: unknown }>`select ${pg.json({ nested: { ok: true } })}::jsonb as doc`
  yield* Console.log("json round trip:", json!.doc)

  // a transaction through the SqlClient and one through the pool's API are the same mechanism
  yield* sql.withTransaction(Effect.gen(function*() {
    yield* sql`update people set born = born + 0 where id = 1`
    const [row] = yield* PgPool.query("select count(*)::int as n from people")
    yield* Console.log("PgPool.query inside sql.withTransaction sees the same connection:", row)
  }))

  const streamed = yield* Stream.runCollect(sql<{ n: number }>`select generate_series(1, 5000) as n`.stream)
  yield* Console.log("streamed rows:", Chunk.size(streamed))
})

NodeRuntime.runMain(program.pipe(Effect.provide(SqlLive)))
