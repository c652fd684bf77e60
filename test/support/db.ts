/**
 * Test helpers: the fresh database of the current test file, pool configs pointing at it, and server-side
 * views (pg_stat_activity) read over a separate admin connection.
 */
import { Duration, Effect, Redacted, TestServices } from "effect"
import * as Connector from "../../src/Connector.js"
import { parseUrl } from "../../src/internal/config/url.js"
import { queryOnce } from "../../src/internal/testing/embedded.js"
import * as PgPool from "../../src/PgPool.js"
import type { ConnectionError, QueryError } from "../../src/PgPoolError.js"

interface State {
  readonly adminUrl: string
  readonly database: string
}

const key = Symbol.for("effect-pg-pool/test/database")
const globals = globalThis as unknown as { [key]?: State | undefined }

const state = (): State => {
  const s = globals[key]
  if (s === undefined) throw new Error("The test database is not set up (test/support/setup.ts did not run)")
  return s
}

const connectOptions = (url: string, database?: string): Connector.ConnectOptions => {
  const parsed = parseUrl(url)
  if (parsed === undefined) throw new Error("PG_TEST_URL is not a postgres:// URL")
  const host = parsed.hosts[0]
  return {
    host: host?.host || "127.0.0.1",
    port: host?.port ?? 5432,
    database: database ?? parsed.database ?? "postgres",
    user: parsed.user ?? "postgres",
    password: parsed.password,
    ssl: undefined,
    applicationName: "effect-pg-pool-test-admin",
    connectTimeout: Duration.seconds(10),
    parameters: {}
  }
}

/** Runs one statement on a short-lived admin connection (to the maintenance database by default). */
export const adminQuery = (
  sql: string,
  params?: ReadonlyArray<unknown>,
  database?: string
): Effect.Effect<ReadonlyArray<Connector.Row>, QueryError | ConnectionError> =>
  queryOnce(connectOptions(state().adminUrl, database), sql, params)

const runAdmin = (adminUrl: string, sql: string) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.flatMap(
        Connector.make.connect(connectOptions(adminUrl), () => {}),
        (connection) => Connector.query(connection, sql)
      )
    )
  )

export const createTestDatabase = async (adminUrl: string): Promise<void> => {
  const database = `t_${process.pid}_${Math.random().toString(36).slice(2, 10)}`
  await runAdmin(adminUrl, `create database "${database}"`)
  globals[key] = { adminUrl, database }
}

export const dropTestDatabase = async (): Promise<void> => {
  const s = globals[key]
  if (s === undefined) return
  globals[key] = undefined
  await runAdmin(s.adminUrl, `drop database if exists "${s.database}" with (force)`)
}

/** The name of this test file's database. */
export const testDatabase = (): string => state().database

/** A URL of this test file's database (with the password: keep it Redacted). */
export const testUrl = (): Redacted.Redacted => {
  const s = state()
  const parsed = parseUrl(s.adminUrl)!
  const host = parsed.hosts[0]
  const password = parsed.password === undefined ? "" : `:${encodeURIComponent(Redacted.value(parsed.password))}`
  return Redacted.make(
    `postgres://${encodeURIComponent(parsed.user ?? "postgres")}${password}@${host?.host || "127.0.0.1"}:${
      host?.port ?? 5432
    }/${s.database}`
  )
}

/** The connection fields of the test server, for tests of the individual config fields. */
export const testServer = () => {
  const options = connectOptions(state().adminUrl, state().database)
  return {
    host: options.host,
    port: options.port,
    user: options.user,
    password: options.password,
    database: options.database
  }
}

/** One live Connector connection to this file's database, in the current Scope. */
export const connectToTest = (applicationName: string, statementCache?: Connector.StatementCacheOptions) =>
  Effect.suspend(() => {
    const server = testServer()
    return Connector.make.connect({
      host: server.host,
      port: server.port,
      database: server.database,
      user: server.user,
      password: server.password,
      ssl: undefined,
      applicationName,
      connectTimeout: Duration.seconds(10),
      parameters: {},
      statementCache
    }, () => {})
  })

/** A pool config for this file's database. */
export const testConfig = (overrides: PgPool.Config = {}): PgPool.Config => ({
  url: testUrl(),
  applicationName: "effect-pg-pool-test",
  ...overrides
})

/** A pool layer for this file's database. */
export const testLayer = (overrides: PgPool.Config = {}) => PgPool.layer(testConfig(overrides))

/** The backends of this file's database, as the server sees them. */
export const backends = (applicationName = "effect-pg-pool-test") =>
  adminQuery(
    "select pid, state, query, backend_type from pg_stat_activity where datname = $1 and application_name = $2 order by pid",
    [testDatabase(), applicationName]
  ) as Effect.Effect<ReadonlyArray<{ pid: number; state: string | null; query: string }>, QueryError | ConnectionError>

/** Polls `effect` until `predicate` holds, at most `attempts` times, a few milliseconds apart (real time, also under TestClock). */
export const eventually = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  predicate: (a: A) => boolean,
  options: { readonly attempts?: number; readonly interval?: Duration.DurationInput } = {}
): Effect.Effect<A, E | string, R> =>
  Effect.gen(function*() {
    const attempts = options.attempts ?? 200
    let last: A | undefined
    for (let i = 0; i < attempts; i++) {
      last = yield* effect
      if (predicate(last)) return last
      yield* TestServices.provideLive(Effect.sleep(options.interval ?? "25 millis"))
    }
    return yield* Effect.fail(`condition not met after ${attempts} attempts; last value: ${JSON.stringify(last)}`)
  })
