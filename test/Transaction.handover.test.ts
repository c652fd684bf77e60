/**
 * Handing a connection over at COMMIT: when someone waits for a connection and nothing else needs the one of a
 * transaction that commits, it goes to the next waiter as soon as the COMMIT is sent, and the next checkout's
 * first statement (with its BEGIN) goes out behind the COMMIT, in the same write. Checked on the server: a
 * COMMIT made slow by a deferred constraint trigger (pg_sleep) keeps the next statement waiting behind it, so
 * that a failure of the COMMIT, an interruption of the next transaction and a lost connection can be made to
 * happen exactly then.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Deferred, Effect, Exit, Fiber, Layer, Random } from "effect"
import { serviceOf } from "../src/internal/pgpool/service.js"
import * as PgPool from "../src/PgPool.js"
import * as Transaction from "../src/Transaction.js"
import { adminQuery, backends, eventually, testConfig } from "./support/db.js"
import { failureOf, valueOf } from "./support/exits.js"

const poolOf = (config: PgPool.Config) =>
  Effect.map(
    Layer.build(PgPool.layer(testConfig({ maxConnections: 1, ...config }))),
    (context) => Context.get(context, PgPool.PgPool)
  )

/** How many connections were handed over with their COMMIT out (internal tally). */
const handedOver = (pool: PgPool.PgPool) => Effect.sync(() => serviceOf(pool)!.main.tally.handedOver)

const pidOf = (pool: PgPool.PgPool) =>
  Effect.map(pool.query("select pg_backend_pid() as pid"), (rows) => Number(rows[0]!.pid))

/** A table whose rows make their transaction's COMMIT take `seconds` (a deferred constraint trigger sleeps). */
const slowCommitTable = (pool: PgPool.PgPool, table: string, seconds: number) =>
  Effect.gen(function*() {
    yield* pool.query(`drop table if exists ${table}`)
    yield* pool.query(`create table ${table} (id int primary key)`)
    yield* pool.query(
      `create or replace function ${table}_sleep() returns trigger language plpgsql as $$ begin perform pg_sleep(${seconds}); return null; end $$`
    )
    yield* pool.query(
      `create constraint trigger ${table}_commit after insert on ${table} deferrable initially deferred for each row execute function ${table}_sleep()`
    )
  })

const ids = (pool: PgPool.PgPool, table: string) =>
  Effect.map(pool.query(`select id from ${table} order by id`), (rows) => rows.map((row) => Number(row.id)))

/**
 * Transaction A inserts `first` and holds on until `next` (forked) waits for the pool's one connection; then A
 * commits. Returns the fibers of A and of `next`.
 */
const behindCommit = <A, E>(pool: PgPool.PgPool, first: string, next: Effect.Effect<A, E, PgPool.PgPool>) =>
  Effect.gen(function*() {
    const go = yield* Deferred.make<void>()
    const a = yield* Effect.fork(
      Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query(first)
        const pid = yield* PgPool.query("select pg_backend_pid() as pid")
        yield* Deferred.await(go)
        return Number(pid[0]!.pid)
      })).pipe(Effect.provideService(PgPool.PgPool, pool))
    )
    yield* eventually(pool.stats, (stats) => stats.inUse === 1)
    const b = yield* Effect.fork(next.pipe(Effect.provideService(PgPool.PgPool, pool)))
    yield* eventually(pool.stats, (stats) => stats.waiting === 1)
    yield* Deferred.succeed(go, undefined)
    return [a, b] as const
  })

/**
 * `behindCommit` with a COMMIT made slow (`seconds`, on table `${table}_a`) and `next`, a transaction of one
 * statement on `${table}_b`: returns once the connection was handed over and the COMMIT is running on the
 * server (its trigger sleeps), with the fibers of A and B and the backend's pid.
 */
const commitRunning = (pool: PgPool.PgPool, app: string, table: string, seconds: number, next: string) =>
  Effect.gen(function*() {
    yield* slowCommitTable(pool, `${table}_a`, seconds)
    yield* pool.query(`create table if not exists ${table}_b (id int primary key)`)
    const [a, b] = yield* behindCommit(
      pool,
      `insert into ${table}_a values (1)`,
      Transaction.withTransaction(PgPool.query(next))
    )
    yield* eventually(handedOver(pool), (n) => n === 1)
    const committing = (row: { readonly query: string }) =>
      row.query.includes(`${table}_a_sleep`) || row.query === "COMMIT"
    const running = yield* eventually(backends(app), (rows) => rows.some(committing))
    return { a, b, pid: running.find(committing)!.pid }
  })

describe("handing the connection over at COMMIT", () => {
  it.scopedLive("the next transaction goes out behind the COMMIT: both commit, on one connection", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-ok" })
      yield* slowCommitTable(pool, "ho_ok_a", 0.2)
      yield* pool.query("create table if not exists ho_ok_b (id int primary key)")
      const [a, b] = yield* behindCommit(
        pool,
        "insert into ho_ok_a values (1)",
        Transaction.withTransaction(Effect.zipRight(PgPool.query("insert into ho_ok_b values (2)"), pidOf(pool)))
      )
      const pidA = valueOf(yield* Fiber.await(a))
      const pidB = valueOf(yield* Fiber.await(b))
      assert.strictEqual(yield* handedOver(pool), 1)
      assert.strictEqual(pidB, pidA, "one connection throughout")
      assert.deepStrictEqual(yield* ids(pool, "ho_ok_a"), [1])
      assert.deepStrictEqual(yield* ids(pool, "ho_ok_b"), [2])
      const stats = yield* pool.stats
      assert.strictEqual(stats.closed, 0)
      assert.strictEqual(stats.inUse, 0)
    }))

  it.scopedLive("a one-shot statement waiting goes out behind the COMMIT too", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-oneshot" })
      yield* slowCommitTable(pool, "ho_one", 0.2)
      const [a, c] = yield* behindCommit(pool, "insert into ho_one values (1)", PgPool.query("select 3 as three"))
      valueOf(yield* Fiber.await(a))
      assert.deepStrictEqual(valueOf(yield* Fiber.await(c)), [{ three: 3 }])
      assert.strictEqual(yield* handedOver(pool), 1)
      assert.deepStrictEqual(yield* ids(pool, "ho_one"), [1])
      assert.strictEqual((yield* pool.stats).closed, 0)
      yield* eventually(pool.stats, (stats) => stats.inUse === 0)
    }))

  it.scopedLive("a COMMIT that fails fails its transaction only: the next one runs and commits on the same connection", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-fail" })
      yield* pool.query("drop table if exists ho_uniq")
      yield* pool.query("create table ho_uniq (id int unique deferrable initially deferred)")
      yield* pool.query("create table if not exists ho_next (id int primary key)")
      const [a, b] = yield* behindCommit(
        pool,
        "insert into ho_uniq values (1), (1)",
        Transaction.withTransaction(Effect.zipRight(PgPool.query("insert into ho_next values (7)"), pidOf(pool)))
      )
      const exitA = yield* Fiber.await(a)
      const error = failureOf(exitA)
      assert.strictEqual(error._tag, "QueryError")
      assert.strictEqual((error as { readonly code?: string }).code, "23505", String(error))
      const pidB = valueOf(yield* Fiber.await(b))
      assert.strictEqual(yield* handedOver(pool), 1)
      assert.deepStrictEqual(yield* ids(pool, "ho_uniq"), [])
      assert.deepStrictEqual(yield* ids(pool, "ho_next"), [7])
      assert.strictEqual(yield* pidOf(pool), pidB)
      assert.strictEqual((yield* pool.stats).closed, 0)
    }))

  it.scopedLive("interrupting the next transaction while its statement waits behind the COMMIT cancels that statement, never the COMMIT", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-cancel" })
      // a CancelRequest reaching this COMMIT would stop its trigger's pg_sleep: the COMMIT would fail (57014);
      // while it runs its trigger, B's BEGIN and insert wait behind it
      const { a, b } = yield* commitRunning(
        pool,
        "handover-cancel",
        "ho_cancel",
        0.5,
        "insert into ho_cancel_b select 2 from pg_sleep(0.3)"
      )
      yield* Fiber.interrupt(b)
      // the COMMIT succeeded (valueOf shows the cause otherwise)
      valueOf(yield* Fiber.await(a))
      assert.deepStrictEqual(yield* ids(pool, "ho_cancel_a"), [1])
      assert.deepStrictEqual(yield* ids(pool, "ho_cancel_b"), [])
      // the connection is sound: back in the pool, and it runs a transaction
      yield* eventually(pool.stats, (stats) => stats.inUse === 0)
      yield* Transaction.withTransaction(PgPool.query("insert into ho_cancel_b values (3)")).pipe(
        Effect.provideService(PgPool.PgPool, pool)
      )
      assert.deepStrictEqual(yield* ids(pool, "ho_cancel_b"), [3])
    }))

  it.scopedLive("interrupting random transactions while connections are handed over cancels exactly them: every other commits once", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-random", maxConnections: 2 })
      // every COMMIT runs a trigger that sleeps 10 ms: the next transaction's statement waits behind it, where a
      // CancelRequest sent at once would reach the COMMIT and fail a transaction nobody interrupted
      yield* slowCommitTable(pool, "ho_hits", 0.01)
      let interruptedAbsent = 0
      let id = 0
      for (let round = 0; round < 10; round++) {
        const ids = Array.from({ length: 16 }, () => ++id)
        const fibers = yield* Effect.forEach(ids, (n) =>
          Effect.fork(
            Transaction.withTransaction(
              Effect.zipRight(
                PgPool.query("insert into ho_hits values ($1)", [n]),
                PgPool.query("select pg_sleep($1::float8)", [(n % 3) * 0.001])
              )
            ).pipe(Effect.provideService(PgPool.PgPool, pool))
          ))
        const victims = new Set<number>()
        for (const [i, fiber] of fibers.entries()) {
          if ((yield* Random.nextIntBetween(0, 3)) === 0) {
            victims.add(ids[i]!)
            // spread over the round, so that many land while a statement waits behind a COMMIT
            yield* Effect.sleep(`${yield* Random.nextIntBetween(0, 15)} millis`)
            yield* Fiber.interrupt(fiber)
          }
        }
        const exits = yield* Effect.forEach(fibers, Fiber.await)
        const present = new Set(
          yield* Effect.map(
            pool.query("select id from ho_hits where id = any($1::int[])", [ids]),
            (rows) => rows.map((row) => Number(row.id))
          )
        )
        for (const [i, exit] of exits.entries()) {
          const n = ids[i]!
          if (victims.has(n)) {
            // rolled back (cancelled or interrupted before its COMMIT) or committed whole: nothing in between
            if (!present.has(n)) interruptedAbsent++
            continue
          }
          if (Exit.isFailure(exit)) {
            assert.fail(`transaction ${n} was not interrupted but failed: ${Cause.pretty(exit.cause)}`)
          }
          assert.isTrue(present.has(n), `transaction ${n} succeeded but its row is missing`)
        }
      }
      assert.isAbove(interruptedAbsent, 0)
      assert.isAbove(yield* handedOver(pool), 10)
      const stats = yield* pool.stats
      assert.strictEqual(stats.closed, 0)
      yield* eventually(pool.stats, (stats) => stats.inUse === 0)
    }))

  for (
    const [name, table, config, recycled] of [
      ["not with pipelineDepth: 1 (pipelining off): the connection goes back after the COMMIT's answer", "ho_off", {
        pipelineDepth: 1
      }, false],
      ["not when the connection must be counted: with maxUsage it is recycled as before", "ho_usage", {
        maxUsage: 3
      }, true]
    ] as const
  ) {
    it.scopedLive(name, () =>
      Effect.gen(function*() {
        const pool = yield* poolOf({ applicationName: `handover-${table}`, ...config })
        yield* pool.query(`create table if not exists ${table} (id int primary key)`)
        const [a, b] = yield* behindCommit(
          pool,
          `insert into ${table} values (1)`,
          Transaction.withTransaction(PgPool.query(`insert into ${table} values (2)`))
        )
        valueOf(yield* Fiber.await(a))
        valueOf(yield* Fiber.await(b))
        assert.strictEqual(yield* handedOver(pool), 0)
        assert.deepStrictEqual(yield* ids(pool, table), [1, 2])
        if (recycled) assert.isAbove((yield* pool.stats).closedByReason.maxUsage, 0)
      }))
  }

  it.scopedLive("with leakDetectionThreshold: handed over; the committing checkout's leak watch stops, the next one has its own", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-leak", leakDetectionThreshold: "1 minute" })
      const core = serviceOf(pool)!.main
      const watchOf = Effect.sync(() => [...core.all][0]?.leakWatch)
      yield* pool.query("create table if not exists ho_leak (id int primary key)")
      const holding = yield* Deferred.make<void>()
      const next = Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into ho_leak values (2)")
        yield* Deferred.await(holding)
      }))
      const [a, b] = yield* behindCommit(pool, "insert into ho_leak values (1)", next)
      const first = yield* watchOf
      assert.isDefined(first, "A's checkout is watched")
      valueOf(yield* Fiber.await(a))
      assert.strictEqual(yield* handedOver(pool), 1)
      // (within a bound: a watch left running would only end at its threshold, a minute away)
      assert.isTrue(
        Exit.isInterrupted(yield* Effect.timeout(Fiber.await(first!), "5 seconds")),
        "A's watch was stopped"
      )
      // B holds the connection now, watched by a watch of its own
      const second = yield* eventually(watchOf, (watch) => watch !== undefined && watch !== first)
      assert.isNull(second!.unsafePoll(), "still watching")
      yield* Deferred.succeed(holding, undefined)
      valueOf(yield* Fiber.await(b))
      assert.isTrue(Exit.isInterrupted(yield* Fiber.await(second!)))
      assert.deepStrictEqual(yield* ids(pool, "ho_leak"), [1, 2])
    }))

  it.scopedLive("a connection lost while the COMMIT is out fails both at once with ConnectionError; the pool recovers", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "handover-lost" })
      const { a, b, pid } = yield* commitRunning(
        pool,
        "handover-lost",
        "ho_lost",
        5,
        "insert into ho_lost_b values (2)"
      )
      yield* adminQuery("select pg_terminate_backend($1)", [pid])
      assert.strictEqual(failureOf(yield* Fiber.await(a))._tag, "ConnectionError")
      assert.strictEqual(failureOf(yield* Fiber.await(b))._tag, "ConnectionError")
      // the fault happened: that backend is gone
      yield* eventually(backends("handover-lost"), (rows) => rows.every((row) => row.pid !== pid))
      assert.deepStrictEqual(yield* ids(pool, "ho_lost_a"), [])
      assert.deepStrictEqual(yield* ids(pool, "ho_lost_b"), [])
      assert.notStrictEqual(yield* pidOf(pool), pid)
    }))
})
