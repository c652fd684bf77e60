// Runs, through the installed package, every path where effect-pg-pool reaches into node-postgres' internals
// (pg.Client's connection, its ReadyForQuery messages, processID/secretKey and pg.Connection's cancel, the type
// parsers in client._types, pg/lib/utils.js, pg-protocol's serializer, pg-cursor, notifications), so that a pg,
// pg-cursor or pg-protocol release in the declared ranges that changes them shows here. Each check fails the
// program (exit code 1) when its outcome is wrong; the results are printed as one JSON line for
// test/package.test.ts. DATABASE_URL names a database the program may create tables in.
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Effect, Fiber, Layer, Logger, LogLevel, Redacted, Schedule, Stream } from "effect"
import { PgPool, PgPoolSql, Transaction } from "effect-pg-pool"
import { existsSync, readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const url = process.env.DATABASE_URL
if (url === undefined || url === "") throw new Error("DATABASE_URL is not set")

const check = (condition, what, value) =>
  condition ? Effect.void : Effect.dieMessage(`${what}: ${JSON.stringify(value)}`)

const PoolLive = PgPool.layer({ url: Redacted.make(url), maxConnections: 3, applicationName: "consumer-internals" })

/** Automatic preparation (Parse/Bind/Execute written by pg-protocol's serializer on pg's socket). */
const prepared = PgPool.withConnection(Effect.gen(function*() {
  const pid = (yield* PgPool.query("select pg_backend_pid() as pid"))[0].pid
  const texts = []
  for (let i = 0; i < 7; i++) texts.push((yield* PgPool.query("select $1::text as t", [String(i)]))[0].t)
  yield* check(texts.join() === "0,1,2,3,4,5,6", "prepared statement results", texts)
  const [{ n }] = yield* PgPool.query(
    "select count(*)::int as n from pg_prepared_statements where name like 'effect_pg_pool_%'"
  )
  yield* check(n > 0, "statements prepared on the pinned connection", n)
  const [{ samePid }] = yield* PgPool.query("select pg_backend_pid() = $1 as \"samePid\"", [pid])
  yield* check(samePid === true, "one pinned connection", samePid)

  // a prepared statement gone stale (the table changed under it) is run again as text: outside a transaction
  // on the transaction status "I" of the ReadyForQuery, as the first statement of a transaction (after its
  // BEGIN) on "E", with a ROLLBACK and a new BEGIN
  yield* PgPool.query("create temporary table stale_a (a int); insert into stale_a values (1)")
  for (let i = 0; i < 7; i++) yield* PgPool.query("select * from stale_a")
  const [{ preparedSelect }] = yield* PgPool.query(
    "select count(*)::int as \"preparedSelect\" from pg_prepared_statements where statement = 'select * from stale_a'"
  )
  yield* check(preparedSelect === 1, "select prepared before the table changes", preparedSelect)
  yield* PgPool.query("alter table stale_a add column b int default 2")
  const stale = yield* PgPool.query("select * from stale_a")
  yield* check(stale.length === 1 && stale[0].a === 1 && stale[0].b === 2, "stale statement run again", stale)
  yield* PgPool.query("create temporary table stale_b (a int); insert into stale_b values (1)")
  for (let i = 0; i < 7; i++) yield* PgPool.query("select * from stale_b")
  yield* PgPool.query("alter table stale_b add column b int default 3")
  const staleInTransaction = yield* Transaction.withTransaction(Effect.gen(function*() {
    const rows = yield* PgPool.query("select * from stale_b")
    const [{ inTransaction }] = yield* PgPool.query(
      "select pg_backend_pid() = $1 and now() <> statement_timestamp() as \"inTransaction\"",
      [pid]
    )
    return { rows, inTransaction }
  }))
  yield* check(
    staleInTransaction.rows.length === 1 && staleInTransaction.rows[0].b === 3,
    "stale statement run again in a transaction",
    staleInTransaction
  )
  return { prepared: n, stale, staleInTransaction }
}))

/** A transaction that fails rolls back; one that succeeds commits. */
const transactions = Effect.gen(function*() {
  yield* PgPool.query("drop table if exists rollback_t; create table rollback_t (x int)")
  const failed = yield* Transaction.withTransaction(Effect.gen(function*() {
    yield* PgPool.query("insert into rollback_t values ($1)", [1])
    return yield* Effect.fail("boom")
  })).pipe(Effect.flip)
  const [{ afterRollback }] = yield* PgPool.query("select count(*)::int as \"afterRollback\" from rollback_t")
  yield* check(failed === "boom" && afterRollback === 0, "rolled back", { failed, afterRollback })
  yield* Transaction.withTransaction(PgPool.query("insert into rollback_t values ($1)", [2]))
  const [{ afterCommit }] = yield* PgPool.query("select count(*)::int as \"afterCommit\" from rollback_t")
  yield* check(afterCommit === 1, "committed", afterCommit)
  return { failed, afterRollback, afterCommit }
})

/** Interrupting a statement sends a CancelRequest (pg.Connection, with the backend's processID and secretKey). */
const cancel = Effect.gen(function*() {
  const start = Date.now()
  const statement = yield* PgPool.query("select pg_sleep(10)").pipe(Effect.timeout("300 millis"), Effect.either)
  const statementMs = Date.now() - start
  const statsAfterStatement = yield* PgPool.stats
  yield* check(
    statement._tag === "Left" && statement.left._tag === "TimeoutException",
    "statement timed out",
    statement
  )
  yield* check(statementMs < 2000, "statement cancelled at once (ms)", statementMs)
  yield* check(statsAfterStatement.inUse === 0, "connection back after the cancel", statsAfterStatement.inUse)
  // the same on a cursor whose read is out
  const sql = yield* SqlClient.SqlClient
  const streamStart = Date.now()
  const stream = yield* sql`select pg_sleep(10)`.stream.pipe(
    Stream.runDrain,
    Effect.timeout("300 millis"),
    Effect.either
  )
  const streamMs = Date.now() - streamStart
  yield* check(stream._tag === "Left", "stream timed out", stream)
  yield* check(streamMs < 2000, "stream cancelled at once (ms)", streamMs)
  const [{ sleeping }] = yield* PgPool.query(
    "select count(*)::int as sleeping from pg_stat_activity where query = 'select pg_sleep(10)' and state = 'active'"
  )
  yield* check(sleeping === 0, "no statement left running on the server", sleeping)
  const stats = yield* PgPool.stats
  yield* check(stats.inUse === 0, "connections back after the cancels", stats.inUse)
  return { statementMs, streamMs, sleeping, inUse: stats.inUse }
})

/** A cursor (pg-cursor) streams rows in batches. */
const cursor = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const [count, sum] = yield* sql`select generate_series(1, 2500) as n`.stream.pipe(
    Stream.runFold([0, 0], ([c, s], row) => [c + 1, s + row.n])
  )
  yield* check(count === 2500 && sum === 3126250, "streamed rows", { count, sum })
  return count
})

/** LISTEN on a dedicated connection, NOTIFY through the pool (pg's notification event). */
const notification = Effect.gen(function*() {
  const pg = yield* PgClient.PgClient
  const listener = yield* pg.listen("consumer_channel").pipe(Stream.take(1), Stream.runCollect, Effect.fork)
  // notify until the listener has one (its LISTEN may not have reached the server yet)
  const received = yield* Fiber.join(listener).pipe(
    Effect.race(Effect.zipRight(
      pg.notify("consumer_channel", "hello").pipe(Effect.repeat(Schedule.spaced("50 millis"))),
      Effect.never
    )),
    Effect.timeout("10 seconds")
  )
  const payloads = [...received]
  yield* check(payloads[0] === "hello", "notification payload", payloads)
  return payloads
})

/** Several statements in one text, without parameters (pg's simple query). */
const multiStatement = Effect.gen(function*() {
  const rows = yield* PgPool.query(
    "drop table if exists multi_t; create table multi_t (x int); insert into multi_t values (1), (2); select count(*)::int as n from multi_t"
  )
  const [{ n }] = yield* PgPool.query("select count(*)::int as n from multi_t")
  yield* check(n === 2, "several statements in one text", { rows, n })
  return { rows, n }
})

/** Parameters serialised by pg/lib/utils.js, results parsed by the type parsers of pg's client._types. */
const types = Effect.gen(function*() {
  const [row] = yield* PgPool.query(
    "select $1::timestamptz as ts, $2::jsonb as j, $3::int[] as arr, $4::bytea as b, $5::text as n, " +
      "9007199254740993::int8 as big, 1.5::float8 as f, true as t",
    [new Date(0), { a: 1 }, [1, 2, 3], Buffer.from("hi"), null]
  )
  const ok = row.ts instanceof Date && row.ts.getTime() === 0 && row.j?.a === 1 &&
    JSON.stringify(row.arr) === "[1,2,3]" && Buffer.isBuffer(row.b) && row.b.toString() === "hi" &&
    row.n === null && row.big === "9007199254740993" && row.f === 1.5 && row.t === true
  yield* check(ok, "parameters and types", row)
  return { ts: row.ts.toISOString(), j: row.j, arr: row.arr, b: row.b.toString(), n: row.n, big: row.big }
})

/** A statement error (ErrorResponse) and COPY FROM STDIN (refused with CopyFail); the connection stays usable. */
const errors = PgPool.withConnection(Effect.gen(function*() {
  const divide = yield* PgPool.query("select 1 / 0").pipe(Effect.flip)
  yield* check(divide._tag === "QueryError" && divide.code === "22012", "division by zero", divide)
  yield* PgPool.query("create temporary table copy_t (x int)")
  const copy = yield* PgPool.query("copy copy_t from stdin").pipe(Effect.flip)
  yield* check(copy._tag === "QueryError", "COPY refused", copy)
  // a parameter whose serialiser throws is not sent, and leaves nothing behind for the next statement
  const unsendable = yield* PgPool.query("select $1::text as t", [{
    toPostgres: () => {
      throw new Error("no")
    }
  }]).pipe(Effect.flip)
  yield* check(unsendable._tag === "QueryError" && unsendable.code === "22023", "unsendable parameter", unsendable)
  const [{ t }] = yield* PgPool.query("select $1::text as t", ["next"])
  yield* check(t === "next", "the statement after an unsendable parameter", t)
  const [{ after }] = yield* PgPool.query("select 1 as after")
  yield* check(after === 1, "connection usable after the errors", after)
  return { divide: divide.code, copy: copy.code, unsendable: unsendable.code }
}))

/** A connection ended by the server (pg_terminate_backend) is a ConnectionError, and the pool goes on. */
const lost = Effect.gen(function*() {
  const error = yield* Effect.scoped(Effect.gen(function*() {
    const conn = yield* PgPool.connection
    yield* PgPool.query("select pg_terminate_backend($1)", [conn.backendPid])
    return yield* conn.query("select 1").pipe(Effect.flip)
  }))
  yield* check(error._tag === "ConnectionError", "statement on a terminated connection", error)
  const [{ again }] = yield* PgPool.query("select 1 as again")
  const stats = yield* PgPool.stats
  yield* check(again === 1 && stats.inUse === 0, "pool goes on", { again, stats })
  return { error: error._tag, broken: stats.closedByReason.broken }
})

const program = Effect.gen(function*() {
  return {
    prepared: yield* prepared,
    transactions: yield* transactions,
    cancel: yield* cancel,
    cursor: yield* cursor,
    notification: yield* notification,
    multiStatement: yield* multiStatement,
    types: yield* types,
    errors: yield* errors,
    lost: yield* lost,
    stats: yield* PgPool.stats
  }
})

// the versions the installed effect-pg-pool resolves (found as Node finds them, from its own directory)
const fromPackage = createRequire(fileURLToPath(import.meta.resolve("effect-pg-pool")))
const versions = Object.fromEntries(["pg", "pg-cursor", "pg-protocol"].map((name) => {
  const dir = fromPackage.resolve.paths(name).find((dir) => existsSync(join(dir, name, "package.json")))
  return [name, JSON.parse(readFileSync(join(dir, name, "package.json"), "utf8")).version]
}))

const result = await Effect.runPromise(program.pipe(
  Effect.provide(PgPoolSql.layer.pipe(Layer.provideMerge(PoolLive))),
  Logger.withMinimumLogLevel(LogLevel.Warning)
))
console.log(JSON.stringify({ versions, ...result, inUse: result.stats.inUse }))
