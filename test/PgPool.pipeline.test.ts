/**
 * Pipelining in the pool (issue 19): with `pipelineDepth`, a one-shot statement that finds every connection
 * busy is sent behind the statements in flight on one of them. Exactness is checked on the server: a counter
 * table whose rows say which statements ran, with random interruptions in deep pipelines; a lost connection
 * fails every statement in flight on it at once, and only statements that provably never ran are sent again.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Random } from "effect"
import * as PgPool from "../src/PgPool.js"
import type { ConnectionError } from "../src/PgPoolError.js"
import { adminQuery, backends, eventually, testConfig, testServer } from "./support/db.js"
import { failureOf } from "./support/exits.js"
import * as Proxy from "./support/proxy.js"

const poolOf = (config: PgPool.Config) =>
  Effect.map(Layer.build(PgPool.layer(testConfig(config))), (context) => Context.get(context, PgPool.PgPool))

/**
 * On a pool of one connection: creates `table`, then forks `head` and 10 inserts into `table` together. The
 * first takes the connection and the others ride it at once (before it counts as stalled); returns once all
 * 10 are pipelined.
 */
const tenBehind = (pool: PgPool.PgPool, table: string, head: string) =>
  Effect.gen(function*() {
    yield* pool.query(`create table if not exists ${table} (id int primary key)`)
    const [first, ...behind] = yield* Effect.forEach(
      [pool.query(head), ...Array.from({ length: 10 }, (_, i) => pool.query(`insert into ${table} values ($1)`, [i]))],
      Effect.fork
    )
    yield* eventually(pool.stats, (stats) => stats.pipelined === 10)
    return [first!, behind] as const
  })

describe("pipelining", () => {
  it.scopedLive("64 fibers on 2 connections: every answer right, statements pipelined, 2 backends", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-load", maxConnections: 2, pipelineDepth: 8 })
      let next = 0
      const worker = Effect.gen(function*() {
        while (next < 3_000) {
          const i = next++
          const rows = yield* pool.query(i % 3 === 0 ? "select $1::int as v" : "select $1::int as v, pg_sleep(0)", [i])
          assert.strictEqual(rows[0]!.v, i)
        }
      })
      yield* Effect.forEach(Array.from({ length: 64 }), () => worker, { concurrency: "unbounded", discard: true })
      const stats = yield* pool.stats
      assert.isAbove(stats.pipelined, 100, JSON.stringify(stats))
      assert.strictEqual(stats.size, 2)
      assert.strictEqual(stats.inUse, 0)
      assert.strictEqual((yield* backends("pipe-load")).length, 2)
      // back to normal use: a transaction and a pinned connection on the same pool
      assert.deepStrictEqual(yield* pool.withConnection(pool.query("select 1 as one")), [{ one: 1 }])
    }))

  it.scopedLive("a statement that leaves a transaction open fails 25000 and takes no statement with it: nothing rides behind it", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-begin", maxConnections: 2, pipelineDepth: 16 })
      yield* pool.query("create table pipe_begin (id int)")
      // every 25th statement opens a transaction it does not end: the inserts behind it would run inside that
      // transaction and be rolled back with it when the connection went back to the pool
      const opens = (i: number) => i % 25 === 0
      const exits = yield* Effect.forEach(
        Array.from({ length: 400 }, (_, i) => i),
        (i) =>
          Effect.exit(
            opens(i)
              ? pool.query(i % 2 === 0 ? `begin; insert into pipe_begin values (-${i})` : "BEGIN")
              : pool.query("insert into pipe_begin values ($1)", [i])
          ),
        { concurrency: 64 }
      )
      const stats = yield* pool.stats
      assert.isAbove(stats.pipelined, 50, "the inserts were pipelined")
      exits.forEach((exit, i) => {
        if (opens(i)) {
          const error = failureOf(exit)
          assert.strictEqual((error as { code?: string }).code, "25000", String(i))
          assert.include((error as Error).message, "left a transaction open")
        } else {
          assert.isTrue(Exit.isSuccess(exit), String(i))
        }
      })
      const rows = yield* pool.query(
        "select count(*)::int as n, count(*) filter (where id < 0)::int as opened from pipe_begin"
      )
      assert.deepStrictEqual(
        rows,
        [{ n: 384, opened: 0 }],
        "every insert reported done is there; the open ones rolled back"
      )
      assert.strictEqual((yield* pool.stats).inUse, 0)
      const idleInTransaction = yield* adminQuery(
        "select count(*)::int as n from pg_stat_activity where application_name = 'pipe-begin' and state like 'idle in transaction%'"
      )
      assert.deepStrictEqual(idleInTransaction, [{ n: 0 }])
      // a transaction on one connection is still the user's to run
      yield* pool.withConnection(Effect.gen(function*() {
        yield* pool.query("BEGIN")
        yield* pool.query("insert into pipe_begin values (1000)")
        yield* pool.query("COMMIT")
      }))
      assert.deepStrictEqual(yield* pool.query("select count(*)::int as n from pipe_begin where id = 1000"), [{ n: 1 }])
    }))

  it.scopedLive("maxUsage holds with pipelining: no connection runs more statements than that, and statements still ride", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-usage", maxConnections: 2, maxUsage: 5, pipelineDepth: 16 })
      // the pace of the pipelines is known once statements were answered
      for (let i = 0; i < 6; i++) yield* pool.query("select 1")
      const rows = yield* Effect.forEach(
        Array.from({ length: 300 }),
        () => pool.query("select pg_backend_pid() as pid, pg_sleep(0.001)"),
        { concurrency: 100 }
      )
      const perBackend = new Map<number, number>()
      for (const [row] of rows) perBackend.set(row!.pid as number, (perBackend.get(row!.pid as number) ?? 0) + 1)
      const stats = yield* pool.stats
      assert.isAtMost(Math.max(...perBackend.values()), 5, JSON.stringify([...perBackend]))
      assert.isAbove(stats.pipelined, 0, JSON.stringify(stats))
      assert.isAtLeast(stats.closedByReason.maxUsage, 50, JSON.stringify(stats))
      assert.strictEqual(stats.inUse, 0)
    }))

  it.scopedLive("a long statement holds up nothing: statements are not sent behind it once it has run a while", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-long", maxConnections: 2, pipelineDepth: 16 })
      const long = yield* Effect.fork(pool.query("select pg_sleep(1.5)"))
      // "a while": longer than the pool's stall bound (20 ms); a statement may ride it before that (nothing says
      // yet that it is a long one), which made this test fail now and then when the poll came back at once
      yield* eventually(
        adminQuery(
          "select count(*)::int as n from pg_stat_activity where application_name = 'pipe-long' and state = " +
            "'active' and query like '%pg_sleep(1.5)%' and clock_timestamp() - query_start > interval '100 ms'"
        ),
        (rows) => Number(rows[0]!.n) === 1
      )
      // 16 fibers of short statements on the 2 connections: they ride the other one, not the sleeping one
      const before = (yield* pool.stats).pipelined
      const slowest = yield* Effect.map(
        Effect.forEach(Array.from({ length: 16 }), () =>
          Effect.gen(function*() {
            let worst = 0
            for (let i = 0; i < 30; i++) {
              const start = performance.now()
              yield* pool.query("select 1")
              worst = Math.max(worst, performance.now() - start)
            }
            return worst
          }), { concurrency: "unbounded" }),
        (worst) => Math.max(...worst)
      )
      assert.isBelow(slowest, 1_000, "a statement waited behind the long one")
      assert.isAbove((yield* pool.stats).pipelined - before, 0)
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(long)))
    }))

  it.scopedLive("on by default, within the acquire timeout: statements ride only a connection whose pace is known", () =>
    Effect.gen(function*() {
      // the defaults but one connection and a short acquire timeout
      const pool = yield* poolOf({ applicationName: "pipe-bound", maxConnections: 1, acquireTimeout: "300 millis" })
      const reasonOf = (exit: Exit.Exit<unknown, unknown>) =>
        Exit.isSuccess(exit) ? "ok" : (failureOf(exit) as { readonly reason?: string }).reason
      // its connection opened first (a checkout with no statement: no pace measured), so that a slow connect
      // does not eat into the acquire timeouts below
      yield* pool.withConnection(Effect.void)
      // a fresh pool has measured nothing: 8 statements of 200 ms at once queue as without pipelining, so the
      // one served first and the one handed the connection before its deadline succeed; the others time out
      const first = yield* Effect.forEach(
        Array.from({ length: 8 }, () => pool.query("select pg_sleep(0.2)")),
        Effect.exit,
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(first.map(reasonOf), ["ok", "ok", ...Array(6).fill("acquireTimeout")])
      assert.strictEqual((yield* pool.stats).pipelined, 0)
      // measured at 200 ms a statement, one more behind one in flight would wait past half the timeout: the
      // same burst again rides nothing
      const again = yield* Effect.forEach(
        Array.from({ length: 8 }, () => pool.query("select pg_sleep(0.2)")),
        Effect.exit,
        { concurrency: "unbounded" }
      )
      assert.strictEqual(again.filter((exit) => reasonOf(exit) === "acquireTimeout").length, 6)
      assert.strictEqual((yield* pool.stats).pipelined, 0)
      // fast statements bring the pace down (answered within a ms): now they ride
      for (let i = 0; i < 20; i++) yield* pool.query("select 1")
      const fast = yield* Effect.forEach(
        Array.from({ length: 64 }, (_, i) => pool.query("select $1::int as i", [i])),
        Effect.exit,
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(fast.map(reasonOf), Array(64).fill("ok"))
      assert.isAbove((yield* pool.stats).pipelined, 0)
    }))

  it.scopedLive("interrupting random statements in deep pipelines cancels exactly them: the rest run once", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-cancel", maxConnections: 2, pipelineDepth: 16 })
      yield* pool.query("create table if not exists hits (id int primary key)")
      let interruptedAbsent = 0
      let id = 0
      for (let round = 0; round < 12; round++) {
        const ids = Array.from({ length: 32 }, () => ++id)
        const fibers = yield* Effect.forEach(ids, (n) =>
          Effect.fork(
            pool.query("insert into hits select $1::int from pg_sleep($2::float8)", [n, (n % 5) * 0.002])
          ))
        // interrupt about a third of them, at random moments while the pipelines are deep
        const victims = new Set<number>()
        for (const [i, fiber] of fibers.entries()) {
          if ((yield* Random.nextIntBetween(0, 3)) === 0) {
            victims.add(ids[i]!)
            yield* Effect.sleep(`${yield* Random.nextIntBetween(0, 4)} millis`)
            yield* Fiber.interrupt(fiber)
          }
        }
        const exits = yield* Effect.forEach(fibers, Fiber.await)
        const rows = yield* pool.query("select id from hits where id = any($1::int[])", [ids])
        const present = new Set(rows.map((row) => Number(row.id)))
        for (const [i, exit] of exits.entries()) {
          const n = ids[i]!
          if (victims.has(n)) {
            // cancelled (no effect) or finished before the cancel (full effect): nothing in between to see
            if (!present.has(n)) interruptedAbsent++
            continue
          }
          assert.isTrue(Exit.isSuccess(exit), `statement ${n} was not interrupted but failed: ${String(exit)}`)
          assert.isTrue(present.has(n), `statement ${n} succeeded but its row is missing`)
        }
      }
      // the cancels did reach their statements (else no interrupted one would be missing)
      assert.isAbove(interruptedAbsent, 0)
      const stats = yield* pool.stats
      assert.isAbove(stats.pipelined, 0)
      // nothing was left checked out or in flight, once the last cancels have settled (an interrupted statement's
      // connection goes back when its answer, or its cancel's, has come, which may be after the last fiber ended)
      yield* eventually(pool.stats, (stats) => stats.inUse === 0 && stats.waiting === 0)
    }))

  it.scopedLive("a terminated backend: the statement it ran fails at once, those behind it never ran and are sent again", () =>
    Effect.gen(function*() {
      const pool = yield* poolOf({ applicationName: "pipe-term", maxConnections: 1, pipelineDepth: 16 })
      const [head, behind] = yield* tenBehind(pool, "lost_term", "select pg_sleep(30)")
      const [{ pid }] = (yield* backends("pipe-term")) as unknown as [{ pid: number }]
      yield* adminQuery("select pg_terminate_backend($1)", [pid])
      const headExit = yield* Effect.timeout(Fiber.await(head), "5 seconds")
      assert.strictEqual(failureOf(headExit)._tag, "ConnectionError")
      const exits = yield* Effect.timeout(Effect.forEach(behind, Fiber.await), "10 seconds")
      for (const exit of exits) assert.isTrue(Exit.isSuccess(exit), String(exit))
      // each exactly once (the primary key would refuse a second)
      assert.deepStrictEqual(yield* pool.query("select count(*)::int as n from lost_term"), [{ n: 10 }])
    }))

  it.scopedLive("a broken network: every statement in flight fails at once with a ConnectionError, none is sent again", () =>
    Effect.gen(function*() {
      const server = testServer()
      const proxy = yield* Proxy.make({ target: { host: server.host, port: server.port } })
      const pool = yield* poolOf({
        host: proxy.host,
        port: proxy.port,
        applicationName: "pipe-net",
        maxConnections: 1,
        pipelineDepth: 16
      })
      const [head, behind] = yield* tenBehind(pool, "lost_net", "select pg_sleep(1)")
      assert.strictEqual(proxy.connections(), 1)
      yield* proxy.setMode("reset")
      const started = performance.now()
      const exits = yield* Effect.timeout(Effect.forEach([head, ...behind], Fiber.await), "5 seconds")
      assert.isBelow(performance.now() - started, 1_000)
      for (const exit of exits) {
        const error = failureOf(exit) as ConnectionError
        assert.strictEqual(error._tag, "ConnectionError")
        assert.notStrictEqual(error.safeToRetry, true)
      }
      // whether any of them ran is unknown to the client, so none was sent again: no connect was even tried
      assert.strictEqual(proxy.connections(), 1)
    }))
})
