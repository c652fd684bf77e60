/**
 * Maintenance under TestClock, on the fake server: idle expiry down to minConnections (idle time, not age),
 * maxLifetime replacement, minConnections refilled, keepalive pings of idle connections, and the shutdown's
 * drain.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Option, TestClock } from "effect"
import * as PgPool from "../../../src/PgPool.js"
import * as PgPoolTest from "../../../src/PgPoolTest.js"
import { buildPool, expectStats, fakeLayer, hold, joinNow, settle, yieldMany } from "../../support/fake.js"

const fake = (config: PgPool.Config = {}) => fakeLayer({ maintenanceInterval: "5 seconds", ...config })

const openPids = Effect.flatMap(
  PgPoolTest.Controller,
  (server) => Effect.map(server.backends, (backends) => backends.map((b) => b.backendPid).sort())
)

describe("maintenance", () => {
  it.effect("closes connections idle past idleTimeout, down to minConnections", () =>
    Effect.gen(function*() {
      const holder = yield* hold(4)
      yield* holder.release
      yield* expectStats({ size: 4, idle: 4, created: 4 })
      // maintenance runs every 5 seconds: at 55 s they have been idle 55 s
      yield* TestClock.adjust("59 seconds")
      yield* expectStats({ size: 4, idle: 4, closed: 0 })
      yield* TestClock.adjust("1 second")
      yield* expectStats({ size: 1, idle: 1, closed: 3, closedByReason: { idle: 3 } })
      yield* TestClock.adjust("1 minute")
      yield* expectStats({ size: 1, idle: 1, closed: 3 })
    }).pipe(Effect.provide(fake({ maxConnections: 4, minConnections: 1, idleTimeout: "1 minute" }))))

  it.effect("idleTimeout counts the time idle, not the age: a connection used recently stays", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const [first] = yield* openPids
      yield* TestClock.adjust("50 seconds")
      yield* PgPool.query("select 1")
      // 70 s old, idle for 20 s
      yield* TestClock.adjust("20 seconds")
      yield* expectStats({ size: 1, idle: 1, closed: 0 })
      assert.strictEqual(yield* PgPool.purgeExpired, 0)
      // idle for 60 s
      yield* TestClock.adjust("40 seconds")
      yield* expectStats({ size: 0, idle: 0, closed: 1, closedByReason: { idle: 1 } })
      assert.notInclude((yield* server.backends).map((b) => b.backendPid), first)
    }).pipe(Effect.provide(fake({ idleTimeout: "1 minute" }))))

  it.effect("maxLifetime: idle connections are replaced at their age (no jitter: all at once), minConnections kept", () =>
    Effect.gen(function*() {
      const before = yield* openPids
      assert.strictEqual(before.length, 2)
      yield* TestClock.adjust("9 minutes")
      yield* TestClock.adjust("59999 millis")
      yield* expectStats({ size: 2, closed: 0 })
      assert.deepStrictEqual(yield* openPids, before)
      yield* TestClock.adjust("1 milli")
      yield* expectStats({ size: 2, idle: 2, closed: 2, closedByReason: { lifetime: 2 }, created: 4 })
      const after = yield* openPids
      assert.strictEqual(after.length, 2)
      for (const pid of after) assert.notInclude(before, pid)
    }).pipe(Effect.provide(fake({
      maxConnections: 4,
      minConnections: 2,
      maxLifetime: "10 minutes",
      maxLifetimeJitter: 0,
      idleTimeout: "1 hour",
      maintenanceInterval: "1 minute"
    }))))

  it.effect("maxLifetime between maintenance runs: an expired idle connection is not handed out", () =>
    Effect.gen(function*() {
      const [old] = yield* openPids
      yield* TestClock.adjust("10 minutes")
      const [row] = yield* PgPool.query("select pg_backend_pid() as pid")
      assert.notStrictEqual(Number(row!.pid), old)
      yield* expectStats({ size: 1, closedByReason: { lifetime: 1 }, created: 2 })
    }).pipe(Effect.provide(fake({ maxLifetime: "10 minutes", maxLifetimeJitter: 0, maintenanceInterval: "1 day" }))))

  it.effect("minConnections is refilled by maintenance after connections are dropped", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const before = yield* openPids
      assert.strictEqual(before.length, 3)
      yield* server.dropConnection(before[0])
      yield* server.dropConnection(before[1])
      yield* expectStats({ size: 1, idle: 1, closedByReason: { broken: 2 } })
      yield* TestClock.adjust("5 seconds")
      yield* expectStats({ size: 3, idle: 3, created: 5, closedByReason: { broken: 2 } })
      const after = yield* openPids
      assert.include(after, before[2])
    }).pipe(Effect.provide(fake({ maxConnections: 5, minConnections: 3 }))))

  it.effect("keepalive: idle connections are pinged every healthCheck.interval", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const pids = yield* openPids
      const pings = Effect.map(server.statements, (log) =>
        pids.map((pid) => log.filter((s) => s.backendPid === pid && s.text === "select 1").length))
      yield* TestClock.adjust("29 seconds")
      assert.deepStrictEqual(yield* pings, [0, 0])
      yield* TestClock.adjust("1 second")
      yield* settle(pings, (n) =>
        n.every((x) => x === 1))
      yield* TestClock.adjust("29 seconds")
      assert.deepStrictEqual(yield* pings, [1, 1])
      yield* TestClock.adjust("1 second")
      yield* settle(pings, (n) => n.every((x) => x === 2))
      // a connection in use is not pinged: it is held from 60 s to 100 s
      const holder = yield* hold(1)
      yield* TestClock.adjust("40 seconds")
      yield* holder.release
      const [used, other] = pids[0] === holder.pids[0] ? [0, 1] : [1, 0]
      const counts = yield* settle(pings, (n) => n[other] === 3)
      assert.strictEqual(counts[used], 2)
      yield* expectStats({ size: 2, idle: 2, closed: 0 })
    }).pipe(Effect.provide(fake({
      minConnections: 2,
      healthCheck: { interval: "30 seconds", idleThreshold: "1 hour", timeout: "1 second" }
    }))))

  it.effect("keepalive: an idle connection that does not answer the ping within its timeout is closed and replaced", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const before = yield* openPids
      yield* server.setLatency("1 minute")
      yield* TestClock.adjust("30 seconds")
      // both pings are out; neither connection is idle or handed out meanwhile
      yield* settle(server.backends, (b) => b.length === 2 && b.every((x) => x.busy))
      const during = yield* PgPool.stats
      assert.deepStrictEqual([during.size, during.idle, during.inUse], [2, 0, 0])
      yield* TestClock.adjust("1 second")
      yield* expectStats({ size: 2, idle: 2, closedByReason: { broken: 2 }, created: 4 })
      for (const pid of yield* openPids) assert.notInclude(before, pid)
    }).pipe(Effect.provide(fake({
      minConnections: 2,
      healthCheck: { interval: "30 seconds", idleThreshold: "1 hour", timeout: "1 second" }
    }))))
})

describe("shutdown", () => {
  it.effect("closing the layer while a connect is in flight does not wait for the connect", () =>
    Effect.gen(function*() {
      const { close, context, server } = yield* buildPool({
        config: { lazy: true, healthCheck: false, drainTimeout: 0 }
      })
      yield* server.setConnectLatency("8 seconds")
      // daemons, so that a close that hangs fails this test instead of holding it up
      const waiter = yield* Effect.forkDaemon(Effect.flip(Effect.provide(PgPool.query("select 1"), context)))
      yield* settle(Effect.provide(PgPool.stats, context), (s) => s.pending === 1)
      const closing = yield* Effect.forkDaemon(close)
      yield* yieldMany(200)
      assert.isTrue(Option.isSome(yield* Fiber.poll(closing)), "the close waits for the connect (8 s of Clock time)")
      assert.strictEqual((yield* joinNow(waiter))._tag, "PoolClosedError")
      assert.deepStrictEqual(yield* server.backends, [])
    }))

  it.effect("drain: closing the layer waits up to drainTimeout for checked-out connections, then closes them", () =>
    Effect.gen(function*() {
      const { close, context, server } = yield* buildPool({
        config: { maxConnections: 2, minConnections: 2, drainTimeout: "10 seconds", healthCheck: false }
      })
      const provide = <A, E>(effect: Effect.Effect<A, E, PgPool.PgPool>) => Effect.provide(effect, context)
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.fork(provide(Effect.scoped(Effect.gen(function*() {
        const conn = yield* PgPool.connection
        yield* release.await
        return yield* Effect.flip(conn.query("select 'too late'"))
      }))))
      yield* settle(provide(PgPool.stats), (s) => s.inUse === 1)
      const closing = yield* Effect.fork(close)
      // the idle connection is closed at once, new work is refused, the held one is waited for
      yield* settle(server.backends, (b) => b.length === 1)
      const refused = yield* Effect.flip(provide(PgPool.query("select 1")))
      assert.strictEqual(refused._tag, "PoolClosedError")
      yield* TestClock.adjust("9999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(closing)))
      assert.strictEqual((yield* server.backends).length, 1)
      yield* TestClock.adjust("1 milli")
      yield* joinNow(closing)
      assert.deepStrictEqual(yield* server.backends, [])
      // the borrower's connection is gone
      yield* release.open
      const error = yield* Fiber.join(holder)
      assert.strictEqual(error._tag, "ConnectionError")
      const stats = yield* provide(PgPool.stats)
      assert.deepStrictEqual([stats.inUse, stats.idle, stats.waiting], [0, 0, 0])
    }))

  it.effect("drain: a connection that comes back within drainTimeout ends the wait at once", () =>
    Effect.gen(function*() {
      const { close, context, server } = yield* buildPool({
        config: { drainTimeout: "10 seconds", healthCheck: false }
      })
      const provide = <A, E>(effect: Effect.Effect<A, E, PgPool.PgPool>) => Effect.provide(effect, context)
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.fork(provide(Effect.scoped(Effect.gen(function*() {
        const conn = yield* PgPool.connection
        yield* release.await
        return yield* conn.query("select 'in time' as x")
      }))))
      yield* settle(provide(PgPool.stats), (s) => s.inUse === 1)
      const closing = yield* Effect.fork(close)
      yield* TestClock.adjust("3 seconds")
      assert.isTrue(Option.isNone(yield* Fiber.poll(closing)))
      yield* release.open
      assert.deepStrictEqual(yield* Fiber.join(holder), [{ x: "in time" }])
      yield* Fiber.join(closing)
      assert.deepStrictEqual(yield* server.backends, [])
      const stats = yield* provide(PgPool.stats)
      assert.deepStrictEqual([stats.size, stats.inUse, stats.closedByReason.poolClosed], [0, 0, 1])
    }))
})
