// A TypeScript consumer of the installed package, type-checked by test/package.test.ts (tsc --noEmit, strict,
// skipLibCheck false) under moduleResolution NodeNext and bundler. It uses no @types of its own: what the
// package's declarations need comes with the package. Not run.
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Config, Effect, Layer, Redacted, Stream } from "effect"
import type { ConfigError } from "effect"
import type { PgPoolError } from "effect-pg-pool"
import { Connector, PgPool, PgPoolLive, PgPoolSql, PgPoolTest, Transaction } from "effect-pg-pool"
import * as PgPoolModule from "effect-pg-pool/PgPool"
import * as PgPoolErrorModule from "effect-pg-pool/PgPoolError"
import type * as PgPoolSqlModule from "effect-pg-pool/PgPoolSql"
import * as TransactionModule from "effect-pg-pool/Transaction"

// the root's namespaces and the subpaths are the same modules
const sameQuery: typeof PgPool.query = PgPoolModule.query
const sameError: typeof PgPoolError.QueryError = PgPoolErrorModule.QueryError

const PoolLive: Layer.Layer<PgPool.PgPool, PgPoolError.ConnectionError | ConfigError.ConfigError> = PgPool.layer({
  url: Redacted.make("postgres://app@localhost:5432/app"),
  maxConnections: 10,
  acquireTimeout: "5 seconds"
})

const PoolFromConfig = PgPoolModule.layerConfig({
  url: Config.redacted("DATABASE_URL"),
  maxConnections: Config.integer("POOL_SIZE")
})

const SqlLive: Layer.Layer<
  SqlClient.SqlClient | PgClient.PgClient,
  PgPoolError.ConnectionError | ConfigError.ConfigError
> = PgPoolSql.layer.pipe(Layer.provide(PgPoolLive))

const options: PgPoolSqlModule.Options = {}

interface Account {
  readonly id: number
  readonly balance: number
}

const transfer = (from: number, to: number, amount: number) =>
  Transaction.withTransaction(
    Effect.gen(function*() {
      yield* PgPool.query("update accounts set balance = balance - $1 where id = $2", [amount, from])
      yield* PgPool.query("update accounts set balance = balance + $1 where id = $2", [amount, to])
      const active: boolean = yield* TransactionModule.isActive
      return active
    }),
    { isolation: "serializable" }
  )

const program = Effect.gen(function*() {
  const rows: ReadonlyArray<PgPool.Row> = yield* sameQuery("select $1::int + 1 as answer", [41])
  const stats: PgPool.PoolStats = yield* PgPool.stats
  const pinned = yield* PgPool.withConnection(Effect.gen(function*() {
    const conn: PgPool.PooledConnection = yield* PgPool.connection
    return conn.backendPid
  }))
  const moved: boolean = yield* transfer(1, 2, 10)
  const sql = yield* SqlClient.SqlClient
  const accounts = yield* sql<Account>`select id, balance from accounts where id = ${1}`
  const first: Account | undefined = accounts[0]
  const pg = yield* PgClient.PgClient
  const streamed: number = yield* sql`select generate_series(1, 10)`.stream.pipe(Stream.runCount)
  yield* pg.notify("channel", "payload")
  const fromSqlTransaction = yield* sql.withTransaction(PgPool.query("select 1"))
  return { rows, size: stats.size, pinned, moved, first, streamed, fromSqlTransaction }
}).pipe(
  Effect.scoped,
  Effect.catchTag(
    "PoolExhaustedError",
    (error: PgPoolError.PoolExhaustedError) => Effect.succeed({ exhausted: error.reason, waiting: error.stats.waiting })
  ),
  Effect.catchTag("QueryError", (error: PgPoolError.QueryError) => Effect.succeed({ code: error.code })),
  Effect.catchTag("ConnectionError", (error: PgPoolError.ConnectionError) => Effect.succeed({ host: error.host }))
)

export const isQueryError = (u: unknown): u is PgPoolError.QueryError => u instanceof sameError

export const runnable: Effect.Effect<unknown, unknown, never> = program.pipe(
  Effect.provide(PgPoolSql.layerWith(options).pipe(Layer.provideMerge(PoolLive)))
)

// the fake server for unit tests, and the embedded PostgreSQL for integration tests
export const unitTest = Effect.gen(function*() {
  const server = yield* PgPoolTest.Controller
  yield* server.when(/from accounts/, { rows: [{ id: 1, balance: 100 }] })
  const rows = yield* PgPool.query("select * from accounts")
  const log: ReadonlyArray<PgPoolTest.StatementRecord> = yield* server.statements
  return { rows, log }
}).pipe(Effect.provide(PgPoolTest.layer()))

export const integrationTest = PgPool.query("select 1").pipe(
  Effect.provide(PgPoolTest.layerEmbedded()),
  Effect.catchTag("EmbeddedPostgresError", (error: PgPoolTest.EmbeddedPostgresError) => Effect.succeed(error.message))
)

// the one-line swap: an object typed as PgClient.layer takes it goes to PgPoolSql.layerClient as it is
const pgClientConfig: PgClient.PgClientConfig = {
  url: Redacted.make("postgres://localhost/app"),
  maxConnections: 10,
  connectionTTL: "30 minutes",
  transformResultNames: (name) => name
}
const Swapped: Layer.Layer<
  PgPool.PgPool | SqlClient.SqlClient | PgClient.PgClient,
  PgPoolError.ConnectionError | ConfigError.ConfigError
> = PgPoolSql.layerClient({ ...pgClientConfig, acquireTimeout: "5 seconds" })
const SwappedFromConfig = PgPoolSql.layerClientConfig({ url: Config.redacted("DATABASE_URL") })

export const connectorLayer = Connector.layer
export const layers = [PoolFromConfig, SqlLive, Swapped, SwappedFromConfig] as const
