/**
 * The return path's gates, on the fake server under TestClock: what happens to a connection when it comes
 * back (reset inside a transaction, `reset: "always"` / `"full"`, invalidated, lost, maxUsage, maxIdle, the
 * idle purge on return), the closed pool, and one fiber per connection.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Option, TestClock } from "effect"
import * as PgPool from "../../../src/PgPool.js"
import * as PgPoolTest from "../../../src/PgPoolTest.js"
import * as Transaction from "../../../src/Transaction.js"
import { buildPool, expectStats, fakeLayer, hold, pidsAndTexts, settle, texts } from "../../support/fake.js"

const fake = fakeLayer

const pidOf = Effect.map(PgPool.query("select pg_backend_pid() as pid"), (rows) => Number(rows[0]!.pid))

describe("the return path", () => {
  for (const state of ["open", "failed"] as const) {
    it.effect(`a connection returned inside a transaction (${state}) is rolled back before anyone else gets it`, () =>
      Effect.gen(function*() {
        const server = yield* PgPoolTest.Controller
        yield* server.when("insert into t", { error: { code: "23505", message: "duplicate key" } })
        const inside = yield* Effect.makeLatch(false)
        const release = yield* Effect.makeLatch(false)
        const holder = yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
          const conn = yield* PgPool.connection
          yield* conn.query("BEGIN")
          yield* state === "open" ? conn.query("select 1") : Effect.ignore(conn.query("insert into t values (1)"))
          yield* inside.open
          yield* release.await
        })))
        yield* inside.await
        const next = yield* Effect.fork(PgPool.query("select current_setting('transaction_isolation') as iso"))
        yield* settle(PgPool.stats, (s) => s.waiting === 1)
        yield* release.open
        yield* Fiber.join(holder)
        yield* Fiber.join(next)
        const log = yield* server.statements
        assert.deepStrictEqual(log.map((s) => [s.text, s.transactionStatus]), [
          ["BEGIN", "idle"],
          state === "open" ? ["select 1", "transaction"] : ["insert into t values (1)", "transaction"],
          ["ROLLBACK", state === "open" ? "transaction" : "failed"],
          ["select current_setting('transaction_isolation') as iso", "idle"]
        ])
        assert.strictEqual(new Set(log.map((s) => s.backendPid)).size, 1)
        yield* expectStats({ size: 1, idle: 1, inUse: 0, closed: 0 })
      }).pipe(Effect.provide(fake({ maxConnections: 1 }))))
  }

  it.effect("reset \"transaction\" (the default) sends nothing for a connection that comes back idle", () =>
    Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.withConnection(Effect.zipRight(PgPool.query("select 2"), PgPool.query("select 3")))
      yield* Transaction.withTransaction(PgPool.query("select 4"))
      assert.deepStrictEqual(yield* texts, ["select 1", "select 2", "select 3", "BEGIN", "select 4", "COMMIT"])
    }).pipe(Effect.provide(fake({ maxConnections: 1 }))))

  it.effect("reset \"always\": every return sends ROLLBACK", () =>
    Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.withConnection(Effect.zipRight(PgPool.query("select 2"), PgPool.query("select 3")))
      assert.deepStrictEqual(yield* texts, ["select 1", "ROLLBACK", "select 2", "select 3", "ROLLBACK"])
      yield* expectStats({ size: 1, idle: 1, closed: 0 })
    }).pipe(Effect.provide(fake({ maxConnections: 1, reset: "always" }))))

  it.effect("reset \"full\": ROLLBACK, DISCARD ALL and setSession again on every return; session state does not leak", () =>
    Effect.gen(function*() {
      const timeout = PgPool.query("select current_setting('statement_timeout') as st")
      const inside = yield* PgPool.withConnection(
        Effect.zipRight(PgPool.query("SET statement_timeout = '5s'"), timeout)
      )
      assert.deepStrictEqual(inside, [{ st: "5s" }])
      assert.deepStrictEqual(yield* timeout, [{ st: "0" }])
      const zone = yield* PgPool.query("select current_setting('TimeZone') as tz")
      assert.deepStrictEqual(zone, [{ tz: "Europe/Paris" }])
      const session = "SET TIME ZONE 'Europe/Paris'"
      const reset = ["ROLLBACK", "DISCARD ALL", session]
      assert.deepStrictEqual(yield* texts, [
        session,
        "SET statement_timeout = '5s'",
        "select current_setting('statement_timeout') as st",
        ...reset,
        "select current_setting('statement_timeout') as st",
        ...reset,
        "select current_setting('TimeZone') as tz",
        ...reset
      ])
      yield* expectStats({ size: 1, idle: 1, closed: 0, created: 1 })
    }).pipe(Effect.provide(fake({ maxConnections: 1, reset: "full", setSession: ["SET TIME ZONE 'Europe/Paris'"] }))))

  it.effect("an invalidated connection is closed, not reused", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const invalidated = yield* Effect.scoped(Effect.gen(function*() {
        const conn = yield* PgPool.connection
        yield* conn.query("select 1")
        yield* conn.invalidate
        return conn.backendPid
      }))
      yield* expectStats({ size: 0, idle: 0, inUse: 0, closed: 1, closedByReason: { invalidated: 1 } })
      assert.notInclude((yield* server.backends).map((b) => b.backendPid), invalidated)
      const next = yield* pidOf
      assert.notStrictEqual(next, invalidated)
      yield* expectStats({ size: 1, idle: 1, created: 2 })
    }).pipe(Effect.provide(fake())))

  it.effect("a connection lost while checked out is closed on return and replaced, never handed out again", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const lost = yield* Effect.scoped(Effect.gen(function*() {
        const conn = yield* PgPool.connection
        assert.isTrue(yield* server.dropConnection(conn.backendPid))
        const error = yield* Effect.flip(conn.query("select 1"))
        assert.strictEqual(error._tag, "ConnectionError")
        return conn.backendPid
      }))
      yield* expectStats({ size: 0, inUse: 0, closed: 1, closedByReason: { broken: 1 } })
      const next = yield* pidOf
      assert.notStrictEqual(next, lost)
      yield* expectStats({ size: 1, idle: 1, created: 2 })
    }).pipe(Effect.provide(fake())))

  it.effect("an idle connection the server drops is closed at once and replaced at the next checkout", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const [first] = (yield* server.backends).map((b) => b.backendPid)
      assert.isTrue(yield* server.dropConnection(first))
      yield* expectStats({ size: 0, idle: 0, closed: 1, closedByReason: { broken: 1 } })
      assert.notStrictEqual(yield* pidOf, first)
      yield* expectStats({ size: 1, idle: 1, created: 2 })
    }).pipe(Effect.provide(fake())))

  it.effect("a statement whose connection is dropped in the middle: ConnectionError (no retry), the connection replaced", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("1 second")
      const running = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
      const [busy] = yield* settle(server.backends, (b) => b.some((x) => x.busy))
      assert.isTrue(yield* server.dropConnection(busy!.backendPid))
      const error = yield* Fiber.join(running)
      assert.strictEqual(error._tag, "ConnectionError")
      yield* expectStats({ size: 0, inUse: 0, closedByReason: { broken: 1 } })
      yield* server.setLatency(0)
      assert.notStrictEqual(yield* pidOf, busy!.backendPid)
    }).pipe(Effect.provide(fake({ retryLostQueries: false }))))

  it.effect("maxUsage: closed when it comes back after exactly N statements, and replaced", () =>
    Effect.gen(function*() {
      for (let i = 1; i <= 7; i++) yield* PgPool.query(`select ${i}`)
      const log = yield* pidsAndTexts
      const pids = log.map(([pid]) => pid)
      assert.strictEqual(new Set(pids.slice(0, 3)).size, 1)
      assert.strictEqual(new Set(pids.slice(3, 6)).size, 1)
      assert.notStrictEqual(pids[0], pids[3])
      assert.notStrictEqual(pids[3], pids[6])
      yield* expectStats({ size: 1, closed: 2, closedByReason: { maxUsage: 2 }, created: 3 })
      // statements on a pinned connection count one by one
      yield* PgPool.withConnection(Effect.zipRight(PgPool.query("select 8"), PgPool.query("select 9")))
      yield* expectStats({ closedByReason: { maxUsage: 3 }, created: 3, size: 0 })
    }).pipe(Effect.provide(fake({ maxUsage: 3 }))))

  it.effect("maxUsage never closes a connection inside a transaction: every statement of it runs on one connection", () =>
    Effect.gen(function*() {
      yield* Transaction.withTransaction(Effect.forEach([1, 2, 3, 4, 5], (i) => PgPool.query(`select ${i}`)))
      const log = yield* pidsAndTexts
      assert.deepStrictEqual(log.map(([, text]) => text), [
        "BEGIN",
        "select 1",
        "select 2",
        "select 3",
        "select 4",
        "select 5",
        "COMMIT"
      ])
      assert.strictEqual(new Set(log.map(([pid]) => pid)).size, 1)
      yield* expectStats({ size: 0, closedByReason: { maxUsage: 1 } })
    }).pipe(Effect.provide(fake({ maxUsage: 2 }))))

  it.effect("maxIdle: connections returned beyond it are closed", () =>
    Effect.gen(function*() {
      const holder = yield* hold(4)
      yield* expectStats({ size: 4, inUse: 4, created: 4 })
      yield* holder.release
      yield* expectStats({ size: 2, idle: 2, inUse: 0, closed: 2, closedByReason: { maxIdle: 2 } })
    }).pipe(Effect.provide(fake({ maxConnections: 4, maxIdle: 2 }))))

  it.effect("idle connections past idleTimeout are closed when a connection comes back (not only by maintenance)", () =>
    Effect.gen(function*() {
      const holder = yield* hold(3)
      yield* holder.release
      yield* expectStats({ size: 3, idle: 3 })
      yield* TestClock.adjust("2 minutes")
      // maintenance runs once an hour: only the return can close them
      yield* PgPool.query("select 1")
      yield* expectStats({ size: 1, idle: 1, closed: 2, closedByReason: { idle: 2 } })
    }).pipe(Effect.provide(fake({ maxConnections: 3, idleTimeout: "1 minute", maintenanceInterval: "1 hour" }))))

  it.effect("a connection past its lifetime is closed when it comes back, not while in use", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const pid = yield* PgPool.withConnection(Effect.gen(function*() {
        const pid = yield* pidOf
        yield* TestClock.adjust("2 hours")
        // still in use past its lifetime: it keeps working
        assert.strictEqual(yield* pidOf, pid)
        return pid
      }))
      yield* expectStats({ size: 0, closedByReason: { lifetime: 1 } })
      assert.notInclude((yield* server.backends).map((b) => b.backendPid), pid)
    }).pipe(Effect.provide(fake({ maxLifetime: "1 hour", maxLifetimeJitter: 0, maintenanceInterval: "1 day" }))))
})

describe("the closed pool", () => {
  it.effect("after the layer closes every call fails with PoolClosedError and every connection is closed", () =>
    Effect.gen(function*() {
      const { close, context, server } = yield* buildPool({ config: { minConnections: 2, healthCheck: false } })
      const provide = <A, E>(effect: Effect.Effect<A, E, PgPool.PgPool>) => Effect.provide(effect, context)
      yield* provide(PgPool.query("select 1"))
      yield* close
      assert.deepStrictEqual(yield* server.backends, [])
      const calls: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown, PgPool.PgPool>]> = [
        ["query", PgPool.query("select 1")],
        ["connection", Effect.scoped(PgPool.connection)],
        ["withConnection", PgPool.withConnection(Effect.void)],
        ["withTransaction", Transaction.withTransaction(PgPool.query("select 1"))]
      ]
      for (const [name, call] of calls) {
        const error = yield* Effect.flip(provide(call))
        assert.strictEqual((error as { readonly _tag: string })._tag, "PoolClosedError", name)
      }
      const stats = yield* provide(PgPool.stats)
      assert.deepStrictEqual([stats.size, stats.idle, stats.inUse, stats.closedByReason.poolClosed], [0, 0, 0, 2])
      assert.strictEqual(yield* provide(PgPool.purgeExpired), 0)
    }))

  it.effect("waiters queued when the layer closes fail with PoolClosedError at once", () =>
    Effect.gen(function*() {
      const { close, context, server } = yield* buildPool({ config: { maxConnections: 1, healthCheck: false } })
      const provide = <A, E>(effect: Effect.Effect<A, E, PgPool.PgPool>) => Effect.provide(effect, context)
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.fork(provide(Effect.scoped(Effect.zipRight(PgPool.connection, release.await))))
      yield* settle(provide(PgPool.stats), (s) => s.inUse === 1)
      const waiters = yield* Effect.forEach([1, 2, 3], (i) => Effect.fork(provide(PgPool.query(`select ${i}`))))
      yield* settle(provide(PgPool.stats), (s) => s.waiting === 3)
      const closing = yield* Effect.fork(close)
      for (const waiter of waiters) {
        const error = yield* Effect.flip(Fiber.join(waiter))
        assert.strictEqual(error._tag, "PoolClosedError")
      }
      // the held connection is waited for (drainTimeout), then closed when it comes back
      assert.isTrue(Option.isNone(yield* Fiber.poll(closing)))
      yield* release.open
      yield* Fiber.join(holder)
      yield* Fiber.join(closing)
      assert.deepStrictEqual(yield* server.backends, [])
      assert.deepStrictEqual(yield* server.statements, [])
    }))
})

describe("one fiber per connection", () => {
  it.effect("concurrent checkouts never share a connection", () =>
    Effect.gen(function*() {
      const holders = new Map<number, number>()
      let overlaps = 0
      let maxConcurrent = 0
      const enter = (pid: number) =>
        Effect.sync(() => {
          const n = (holders.get(pid) ?? 0) + 1
          holders.set(pid, n)
          if (n > 1) overlaps++
          maxConcurrent = Math.max(maxConcurrent, [...holders.values()].filter((x) => x > 0).length)
        })
      const leave = (pid: number) => Effect.sync(() => holders.set(pid, holders.get(pid)! - 1))
      const use = (pid: number, run: (text: string) => Effect.Effect<unknown, unknown, PgPool.PgPool>) =>
        Effect.acquireUseRelease(enter(pid), () => Effect.zipRight(run("select 1"), run("select 2")), () => leave(pid))
      const task = (i: number) =>
        i % 3 === 0
          ? Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => use(conn.backendPid, (t) => conn.query(t))))
          : i % 3 === 1
          ? PgPool.withConnection(Effect.flatMap(pidOf, (pid) => use(pid, (t) => PgPool.query(t))))
          : Transaction.withTransaction(
            Effect.flatMap(Transaction.Transaction, (tx) => use(tx.connection.backendPid, (t) => PgPool.query(t)))
          )
      const all = yield* Effect.fork(
        Effect.forEach(Array.from({ length: 24 }, (_, i) => i), task, { concurrency: "unbounded" })
      )
      for (let i = 0; i < 200 && Option.isNone(yield* Fiber.poll(all)); i++) yield* TestClock.adjust("10 millis")
      yield* Fiber.join(all)
      assert.strictEqual(overlaps, 0)
      assert.strictEqual(maxConcurrent, 3)
      // and on the server: no backend ever ran a statement while another was in flight on it
      yield* expectStats({ size: 3, idle: 3, inUse: 0, waiting: 0, acquired: 24 })
    }).pipe(Effect.provide(fake({ maxConnections: 3 }, "10 millis"))))
})
