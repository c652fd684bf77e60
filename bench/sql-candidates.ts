/**
 * The database candidates: `SELECT 1` and the transaction workload, for our pool and the libraries users
 * would pick instead. Every pool gets 10 connections, and idle timeouts long enough that no pool closes
 * connections while the other candidates take their turn.
 *
 * A new way of using our pool is one line in a list below, made with the helpers here (`sqlClientSelect1`,
 * `ourTransaction`, `sqlClientTransaction`, or `ready`); a slot for something not written yet is a
 * `pending(name, role, reason)` line, shown in the report as "not yet available".
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import pg from "pg"
import postgres from "postgres"
import * as PgPool from "../src/PgPool.js"
import type { PoolError, QueryError } from "../src/PgPoolError.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import * as Transaction from "../src/Transaction.js"
import * as Baseline from "./baseline.js"
import { fromPromise, fromRuntime, ready } from "./candidate.js"
import type { Candidate, Role } from "./candidate.js"
import type { Target } from "./database.js"
import { ROWS, TABLE } from "./database.js"
import { pgbench } from "./pgbench.js"
import { noopTracerLayer } from "./tracer.js"

export const POOL_SIZE = 10

/** Long enough that no pool closes an idle connection during a run (pg.Pool's default is 10 s). */
const IDLE_TIMEOUT_MS = 10 * 60_000

const SELECT_ROW = `SELECT id, counter FROM ${TABLE} WHERE id = $1`
const UPDATE_ROW = `UPDATE ${TABLE} SET counter = counter + 1 WHERE id = $1`

const randomId = (): number => 1 + Math.floor(Math.random() * ROWS)

// ---------------------------------------------------------------------------------------------------------
// layers and clients
// ---------------------------------------------------------------------------------------------------------

/** Our pool, as an application would configure it (its connection logs kept out of the report's output). */
const ourLayer = (db: Target, config: PgPool.Config = {}): Layer.Layer<PgPool.PgPool, unknown> =>
  PgPool.layer({ url: db.url, maxConnections: POOL_SIZE, applicationName: "bench-ours", ...config }).pipe(
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )

/**
 * The pool built from `--baseline=<revision>` (see baseline.ts), configured as ours. Its candidates are in the
 * lists only in a run that has a baseline; their names are fixed (the report's header names the commit).
 */
const baselineLayer = (baseline: Baseline.Modules, db: Target): Layer.Layer<PgPool.PgPool, unknown> =>
  baseline.PgPool.layer({ url: db.url, maxConnections: POOL_SIZE, applicationName: "bench-baseline" }).pipe(
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )

/** `candidate` in a run with a baseline, else nothing. */
const ifBaseline = (candidate: () => Candidate<Target>): ReadonlyArray<Candidate<Target>> =>
  Baseline.commit() === undefined ? [] : [candidate()]

/** Our `SqlClient` (PgPoolSql) on our pool. */
const ourSqlLayer = (db: Target): Layer.Layer<SqlClient.SqlClient, unknown> =>
  PgPoolSql.layer.pipe(Layer.provide(ourLayer(db)))

const effectSqlPgLayer = (db: Target): Layer.Layer<SqlClient.SqlClient, unknown> =>
  PgClient.layer({
    url: db.url,
    maxConnections: POOL_SIZE,
    idleTimeout: IDLE_TIMEOUT_MS,
    applicationName: "bench-effect-sql-pg"
  })

const pgPool = (db: Target): pg.Pool =>
  new pg.Pool({
    connectionString: Redacted.value(db.url),
    max: POOL_SIZE,
    idleTimeoutMillis: IDLE_TIMEOUT_MS,
    application_name: "bench-pg-pool"
  })

const postgresJs = (db: Target): postgres.Sql =>
  postgres(Redacted.value(db.url), {
    max: POOL_SIZE,
    idle_timeout: 0,
    onnotice: () => {},
    connection: { application_name: "bench-postgres-js" }
  })

// ---------------------------------------------------------------------------------------------------------
// SELECT 1
// ---------------------------------------------------------------------------------------------------------

const pgPoolSelect1: Candidate<Target> = ready("pg.Pool", "alternative", async (db) => {
  const pool = pgPool(db)
  await pool.query("SELECT 1")
  return fromPromise(() => pool.query("SELECT 1"), () => pool.end())
})

/**
 * pg.Pool called from Effect workers, as an Effect program without this package would call it: the workers
 * are the same fibers as ours, so the difference in memory between the two is the pools' alone. (Bare
 * pg.Pool's workers are async functions, about 1 KB each while they wait; a fiber waiting in `Effect.all` is
 * about 6 KB whatever it waits for.)
 */
const pgPoolFromEffectSelect1: Candidate<Target> = ready("pg.Pool (from Effect)", "alternative", async (db) => {
  const pool = pgPool(db)
  await pool.query("SELECT 1")
  const opened = await fromRuntime(
    ManagedRuntime.make(Layer.empty),
    Effect.tryPromise(() => pool.query("SELECT 1"))
  )
  return { workload: opened.workload, close: () => opened.close().then(() => pool.end()) }
})

/** `SELECT 1` through any `SqlClient` layer (@effect/sql-pg's PgClient, later our PgPoolSql). */
const sqlClientSelect1 = (
  name: string,
  role: Role,
  layer: (db: Target) => Layer.Layer<SqlClient.SqlClient, unknown>
): Candidate<Target> =>
  ready(name, role, async (db) => {
    const runtime = ManagedRuntime.make(layer(db))
    const sql = await runtime.runPromise(SqlClient.SqlClient)
    return fromRuntime(runtime, Effect.suspend(() => sql`SELECT 1`))
  })

export const select1: ReadonlyArray<Candidate<Target>> = [
  ready(
    "PgPool.query",
    "ours",
    (db) => fromRuntime(ManagedRuntime.make(ourLayer(db)), Effect.suspend(() => PgPool.query("SELECT 1")))
  ),
  ready(
    "PgPool.query (pipelineDepth 1)",
    "ours",
    (db) =>
      fromRuntime(
        ManagedRuntime.make(ourLayer(db, { pipelineDepth: 1 })),
        Effect.suspend(() => PgPool.query("SELECT 1"))
      )
  ),
  ready("PgPool.connection + conn.query", "ours", (db) =>
    fromRuntime(
      ManagedRuntime.make(ourLayer(db)),
      Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => conn.query("SELECT 1")))
    )),
  sqlClientSelect1("PgPoolSql (SqlClient)", "ours", ourSqlLayer),
  ...ifBaseline(() =>
    ready("PgPool.query (baseline)", "alternative", async (db) => {
      const baseline = await Baseline.load()
      return fromRuntime(
        ManagedRuntime.make(baselineLayer(baseline, db)),
        Effect.suspend(() => baseline.PgPool.query("SELECT 1"))
      )
    })
  ),
  pgPoolSelect1,
  pgPoolFromEffectSelect1,
  ready("postgres.js", "alternative", async (db) => {
    const sql = postgresJs(db)
    await sql`SELECT 1`
    return fromPromise(() => sql`SELECT 1`, () => sql.end({ timeout: 5 }))
  }),
  sqlClientSelect1("@effect/sql-pg PgClient", "alternative", effectSqlPgLayer),
  pgbench("SELECT 1;\n", POOL_SIZE)
]

/**
 * `SELECT 1` with a tracer installed (one that keeps nothing, so what is measured is the spans, not an
 * exporter): the pool then makes a `PgPool.query` span per statement. A suite of its own, in a process of its
 * own: Effect's run loop calls the fiber's tracer at every step, and with two tracers in one process (the
 * default one of the other candidates, and this one) that call site slows every Effect candidate by about 10%.
 */
export const traced: ReadonlyArray<Candidate<Target>> = [
  ready("PgPool.query (no-op tracer)", "ours", (db) =>
    fromRuntime(
      ManagedRuntime.make(Layer.merge(ourLayer(db), noopTracerLayer)),
      Effect.suspend(() => PgPool.query("SELECT 1"))
    )),
  pgPoolSelect1
]

// ---------------------------------------------------------------------------------------------------------
// transaction: BEGIN; SELECT a row by primary key; UPDATE its counter; COMMIT
// ---------------------------------------------------------------------------------------------------------

/**
 * The two transaction workloads: `row`, SELECT a row by primary key then UPDATE its counter (a row picked at
 * random per transaction); `select1`, a lone `SELECT 1` (the transaction mechanism's own cost).
 */
export type TransactionWorkload = "row" | "select1"

/**
 * The statements inside the transaction, through our `PgPool.query` (which uses the pinned connection), or the
 * baseline's.
 */
const ourBody = (
  workload: TransactionWorkload,
  pool: typeof PgPool = PgPool
): Effect.Effect<unknown, PoolError | QueryError, PgPool.PgPool> =>
  workload === "select1" ? pool.query("SELECT 1") : Effect.suspend(() => {
    const id = randomId()
    return Effect.zipRight(pool.query(SELECT_ROW, [id]), pool.query(UPDATE_ROW, [id]))
  })

/** A transaction combinator of ours: BEGIN/COMMIT by hand, or `Transaction.withTransaction`. */
type OurTransaction = <A, E, R>(body: Effect.Effect<A, E, R>) => Effect.Effect<A, unknown, R | PgPool.PgPool>

const ourTransaction = (name: string, transaction: OurTransaction, workload: TransactionWorkload): Candidate<Target> =>
  ready(name, "ours", (db) => fromRuntime(ManagedRuntime.make(ourLayer(db)), transaction(ourBody(workload))))

/**
 * BEGIN/COMMIT by hand on a pinned connection. On failure the pool's reset (`reset: "transaction"`) rolls
 * back before the connection is reused.
 */
const manualTransaction: OurTransaction = (body) =>
  PgPool.withConnection(
    Effect.zipRight(
      PgPool.query("BEGIN"),
      Effect.zipLeft(body, PgPool.query("COMMIT"))
    )
  )

/** The transaction workload through any `SqlClient` layer's `withTransaction`. */
const sqlClientTransaction = (
  name: string,
  role: Role,
  layer: (db: Target) => Layer.Layer<SqlClient.SqlClient, unknown>,
  workload: TransactionWorkload
): Candidate<Target> =>
  ready(name, role, async (db) => {
    const runtime = ManagedRuntime.make(layer(db))
    const sql = await runtime.runPromise(SqlClient.SqlClient)
    const body: Effect.Effect<unknown, SqlError> = workload === "select1" ? sql`SELECT 1` : Effect.suspend(() => {
      const id = randomId()
      // The table name is spelled out: a tagged template cannot take TABLE without an identifier helper.
      return Effect.zipRight(
        sql`SELECT id, counter FROM effect_pg_pool_bench_accounts WHERE id = ${id}`,
        sql`UPDATE effect_pg_pool_bench_accounts SET counter = counter + 1 WHERE id = ${id}`
      )
    })
    return fromRuntime(runtime, sql.withTransaction(body))
  })

/** pgbench's script of a workload. */
const pgbenchScript = (workload: TransactionWorkload): string =>
  workload === "select1"
    ? "BEGIN;\nSELECT 1;\nCOMMIT;\n"
    : [
      `\\set id random(1, ${ROWS})`,
      "BEGIN;",
      `SELECT id, counter FROM ${TABLE} WHERE id = :id;`,
      `UPDATE ${TABLE} SET counter = counter + 1 WHERE id = :id;`,
      "COMMIT;",
      ""
    ].join("\n")

export const transaction = (workload: TransactionWorkload): ReadonlyArray<Candidate<Target>> => [
  ourTransaction("PgPool.withConnection + BEGIN/COMMIT", manualTransaction, workload),
  ourTransaction("Transaction.withTransaction", (body) => Transaction.withTransaction(body), workload),
  sqlClientTransaction("PgPoolSql withTransaction", "ours", ourSqlLayer, workload),
  ...ifBaseline(() =>
    ready("Transaction.withTransaction (baseline)", "alternative", async (db) => {
      const baseline = await Baseline.load()
      return fromRuntime(
        ManagedRuntime.make(baselineLayer(baseline, db)),
        baseline.Transaction.withTransaction(ourBody(workload, baseline.PgPool))
      )
    })
  ),
  ready("pg.Pool", "alternative", async (db) => {
    const pool = pgPool(db)
    await pool.query("SELECT 1")
    const run = async () => {
      const client = await pool.connect()
      try {
        await client.query("BEGIN")
        if (workload === "select1") {
          await client.query("SELECT 1")
        } else {
          const id = randomId()
          await client.query(SELECT_ROW, [id])
          await client.query(UPDATE_ROW, [id])
        }
        await client.query("COMMIT")
      } catch (error) {
        await client.query("ROLLBACK").catch(() => undefined)
        throw error
      } finally {
        client.release()
      }
    }
    return fromPromise(run, () => pool.end())
  }),
  ready("postgres.js sql.begin", "alternative", async (db) => {
    const sql = postgresJs(db)
    await sql`SELECT 1`
    const run = () =>
      sql.begin(async (tx) => {
        if (workload === "select1") {
          await tx`SELECT 1`
          return
        }
        const id = randomId()
        await tx`SELECT id, counter FROM effect_pg_pool_bench_accounts WHERE id = ${id}`
        await tx`UPDATE effect_pg_pool_bench_accounts SET counter = counter + 1 WHERE id = ${id}`
      })
    return fromPromise(run, () => sql.end({ timeout: 5 }))
  }),
  sqlClientTransaction("@effect/sql-pg withTransaction", "alternative", effectSqlPgLayer, workload),
  pgbench(pgbenchScript(workload), POOL_SIZE)
]
