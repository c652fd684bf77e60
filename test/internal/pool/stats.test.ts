/**
 * The pool's accounting, on the fake server under TestClock: after every step of a scenario `stats` agrees with
 * the server's open backends (see `agrees` in test/support/fake.ts), also after storms of interruptions; and the
 * `db.client.connection.*` metrics agree with `stats`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Schedule, TestClock } from "effect"
import * as PgPool from "../../../src/PgPool.js"
import * as PgPoolTest from "../../../src/PgPoolTest.js"
import {
  buildPool,
  counterValue,
  expectStats,
  fakeLayer,
  gaugeValue,
  histogramCount,
  hold,
  joinNow,
  settle,
  uniqueName
} from "../../support/fake.js"

const fake = fakeLayer

const waiting = (n: number) => settle(PgPool.stats, (s) => s.waiting === n)

describe("stats", () => {
  it.effect("agree with the server after every step of a scenario", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* expectStats({ size: 0, idle: 0, inUse: 0, pending: 0, waiting: 0, created: 0, closed: 0, acquired: 0 })

      yield* PgPool.query("select 1")
      yield* expectStats({ size: 1, idle: 1, inUse: 0, created: 1, acquired: 1 })

      const holder = yield* hold(3)
      yield* expectStats({ size: 3, idle: 0, inUse: 3, created: 3, acquired: 4 })

      const a = yield* Effect.fork(PgPool.query("select 'a'"))
      const b = yield* Effect.fork(PgPool.query("select 'b'"))
      yield* expectStats({ waiting: 2, inUse: 3, pending: 0 })
      yield* Fiber.interrupt(a)
      yield* expectStats({ waiting: 1, timeouts: 0 })
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.await(b)
      yield* expectStats({ waiting: 0, timeouts: 1, acquired: 4 })

      yield* holder.conns[0]!.invalidate
      yield* holder.release
      yield* expectStats({ size: 2, idle: 2, inUse: 0, closed: 1, closedByReason: { invalidated: 1 } })

      yield* server.dropConnection()
      yield* expectStats({ size: 1, idle: 1, closed: 2, closedByReason: { invalidated: 1, broken: 1 } })

      // a connect that fails for good: counted, and the waiter fails at once
      const busy = yield* hold(1)
      yield* server.refuseConnections({ code: "28P01", message: "password authentication failed" })
      const refused = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(refused._tag, "ConnectionError")
      yield* expectStats({ size: 1, inUse: 1, pending: 0, waiting: 0, connectFailures: 1, created: 3 })
      yield* server.refuseConnections(false)

      // a connect in flight is counted in size and pending, not idle or inUse
      yield* server.setConnectLatency("1 second")
      const c = yield* Effect.fork(PgPool.query("select 'c'"))
      yield* expectStats({ size: 2, pending: 1, waiting: 1, inUse: 1, idle: 0 })
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(c)
      yield* expectStats({ size: 2, pending: 0, waiting: 0, inUse: 1, idle: 1, created: 4 })
      yield* busy.release
      const end = yield* expectStats({
        size: 2,
        idle: 2,
        inUse: 0,
        pending: 0,
        waiting: 0,
        created: 4,
        closed: 2,
        acquired: 6,
        timeouts: 1,
        connectFailures: 1
      })
      assert.strictEqual(end.connects, 5)
      assert.deepStrictEqual(end.stats.hosts.map((h) => [h.host, h.size, h.idle, h.inUse]), [["fake", 2, 2, 0]])
    }).pipe(Effect.provide(fake({ maxConnections: 3, lazy: true, acquireTimeout: "10 seconds" }))))

  it.effect("an interruption storm of waiters leaves no waiter and no connection checked out", () =>
    Effect.gen(function*() {
      const holder = yield* hold(3)
      const fibers = yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) =>
        Effect.fork(
          i % 3 === 0
            ? PgPool.query("select 1")
            : i % 3 === 1
            ? PgPool.withConnection(PgPool.query("select 1"))
            : Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => conn.query("select 1")))
        ))
      yield* waiting(40)
      yield* Fiber.interruptAll(fibers)
      yield* expectStats({ waiting: 0, inUse: 3, size: 3 })
      yield* holder.release
      yield* expectStats({ waiting: 0, inUse: 0, idle: 3, size: 3, acquired: 3, timeouts: 0, closed: 0 })
      const server = yield* PgPoolTest.Controller
      assert.deepStrictEqual(yield* server.statements, [])
    }).pipe(Effect.provide(fake({ maxConnections: 3 }))))

  it.effect("an interruption storm of running statements and waiters: statements cancelled, nothing leaks", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const fibers = yield* Effect.forEach(Array.from({ length: 30 }, (_, i) => i), (i) =>
        Effect.fork(
          i % 2 === 0
            ? PgPool.query("select pg_sleep(1)")
            : PgPool.withConnection(Effect.zipRight(PgPool.query("select 1"), PgPool.query("select pg_sleep(1)")))
        ))
      yield* expectStats({ inUse: 3, waiting: 27, size: 3 })
      yield* TestClock.adjust("500 millis")
      yield* Fiber.interruptAll(fibers)
      const end = yield* expectStats({ inUse: 0, waiting: 0, pending: 0 })
      assert.strictEqual(end.stats.size, end.backends.length)
      assert.isTrue(end.backends.every((b) => !b.busy && b.transactionStatus === "idle"), JSON.stringify(end.backends))
      assert.isAtLeast(yield* server.cancels, 3)
      // the pool still works, on the connections it has
      yield* server.setLatency(0)
      yield* Effect.forEach([1, 2, 3, 4], () => PgPool.query("select 1"), { concurrency: "unbounded" })
      yield* expectStats({ inUse: 0, waiting: 0 })
    }).pipe(Effect.provide(fake({ maxConnections: 3 }, "1 second"))))

  it.effect("interruptions during connects: no connection is lost or counted twice", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      // one connection open (held): the pool is not cold, connects run side by side
      const holder = yield* hold(1)
      yield* server.setConnectLatency("1 second")
      const fibers = yield* Effect.forEach(Array.from({ length: 10 }, (_, i) => i), () =>
        Effect.fork(PgPool.query("select 1")))
      yield* expectStats({ waiting: 10, pending: 3, size: 4 })
      yield* Fiber.interruptAll(fibers)
      yield* expectStats({ waiting: 0 })
      // the connects were started for waiters that left: they complete and their connections go idle
      yield* TestClock.adjust("1 second")
      yield* holder.release
      yield* expectStats({ waiting: 0, pending: 0, inUse: 0, size: 4, idle: 4, created: 4, acquired: 1 })
    }).pipe(Effect.provide(fake({ maxConnections: 4, lazy: true }))))
})

describe("metrics", () => {
  /** The pool's gauges agree with its stats. */
  const gaugesAgree = (name: string) =>
    Effect.gen(function*() {
      const stats = yield* PgPool.stats
      const gauges = {
        idle: yield* gaugeValue("db.client.connection.count", name, { "db.client.connection.state": "idle" }),
        used: yield* gaugeValue("db.client.connection.count", name, { "db.client.connection.state": "used" }),
        pending: yield* gaugeValue("db.client.connection.pending_requests", name),
        max: yield* gaugeValue("db.client.connection.max", name),
        timeouts: yield* counterValue("db.client.connection.timeouts", name)
      }
      assert.deepStrictEqual(gauges, {
        idle: stats.idle,
        used: stats.size - stats.idle - stats.pending,
        pending: stats.waiting,
        max: stats.maxConnections,
        timeouts: stats.timeouts
      })
    })

  it.effect("db.client.connection.count by state, pending_requests and timeouts agree with stats at every step", () => {
    const name = uniqueName("gauges")
    return Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* expectStats({ size: 1, idle: 1 })
      yield* gaugesAgree(name)
      const holder = yield* hold(2)
      yield* expectStats({ inUse: 2, size: 2 })
      yield* gaugesAgree(name)
      const waiter = yield* Effect.fork(PgPool.query("select 1"))
      yield* waiting(1)
      yield* gaugesAgree(name)
      yield* TestClock.adjust("5 seconds")
      yield* Fiber.await(waiter)
      yield* expectStats({ timeouts: 1, waiting: 0 })
      yield* gaugesAgree(name)
      yield* holder.release
      yield* expectStats({ idle: 2, inUse: 0 })
      yield* gaugesAgree(name)
      yield* server.dropConnection()
      yield* expectStats({ idle: 1, size: 1 })
      yield* gaugesAgree(name)
      assert.strictEqual(yield* gaugeValue("db.client.connection.idle.max", name), 2)
      assert.strictEqual(yield* gaugeValue("db.client.connection.idle.min", name), 1)
    }).pipe(Effect.provide(fake({ name, maxConnections: 2, minConnections: 1, acquireTimeout: "5 seconds" })))
  })

  it.effect("the histograms count each connect, each checkout and each return once (returns of every kind)", () => {
    const name = uniqueName("histograms")
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      // the 2nd statement of this connection: closed for maxUsage on return
      yield* PgPool.withConnection(PgPool.query("select 2"))
      yield* Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => conn.invalidate))
      yield* PgPool.query("select 3")
      yield* PgPool.query("select 4")
      yield* Effect.ignore(PgPool.withConnection(Effect.fail("boom")))
      const stats = (yield* expectStats({ acquired: 6, closedByReason: { invalidated: 1, maxUsage: 2 } })).stats
      assert.strictEqual(yield* histogramCount("db.client.connection.create_time", name), stats.created)
      assert.strictEqual(yield* histogramCount("db.client.connection.wait_time", name), stats.acquired)
      assert.strictEqual(yield* histogramCount("db.client.connection.use_time", name), stats.acquired)
    }).pipe(Effect.provide(fake({ name, maxUsage: 2 })))
  })

  it.effect("db.client.connection.use_time counts a connection closed for maxIdle on return once", () => {
    const name = uniqueName("use-time-maxidle")
    return Effect.gen(function*() {
      const holder = yield* hold(3)
      yield* holder.release
      const stats = (yield* expectStats({ acquired: 3, idle: 1, closedByReason: { maxIdle: 2 } })).stats
      assert.strictEqual(
        yield* histogramCount("db.client.connection.use_time", name),
        stats.acquired,
        "one use_time sample per return"
      )
    }).pipe(Effect.provide(fake({ name, maxConnections: 3, maxIdle: 1 })))
  })

  it.effect("the reconnect schedule under TestClock: connectFailures and create_time agree with the server's connects", () => {
    const name = uniqueName("reconnect")
    return Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.refuseConnections({ code: "57P03", message: "starting up" })
      const error = yield* Effect.flip(PgPool.query("select 1 as x"))
      assert.strictEqual(error._tag === "ConnectionError" ? error.code : error._tag, "57P03")
      yield* expectStats({ connectFailures: 1, waiting: 0, pending: 0 })
      // the probe's failed connect counts too
      yield* TestClock.adjust("1 second")
      yield* expectStats({ connectFailures: 2 })
      yield* server.refuseConnections(false)
      yield* TestClock.adjust("1 second")
      // the probe got in (a connect of its own, closed again); the pool's own connection follows on demand
      yield* settle(server.connects, (n) => n === 3)
      assert.deepStrictEqual(yield* PgPool.query("select 1 as x"), [{ x: 1 }])
      yield* expectStats({ connectFailures: 2, created: 1, size: 1, idle: 1, pending: 0 })
      assert.strictEqual(yield* server.connects, 4)
      assert.strictEqual(yield* histogramCount("db.client.connection.create_time", name), 1)
    }).pipe(Effect.provide(fake({ name, lazy: true, reconnect: Schedule.spaced("1 second") })))
  })
})

describe("connect accounting", () => {
  it.effect("a connect slower than connectTimeout is a failure at connectTimeout; the host is probed on the schedule", () =>
    Effect.gen(function*() {
      // built in a Scope of its own, left open if the test fails: closing a pool with a fake connect in flight
      // waits for that connect on the TestClock (see maintenance.test.ts, "shutdown")
      const { close, context, server } = yield* buildPool({
        config: {
          lazy: true,
          healthCheck: false,
          drainTimeout: 0,
          connectTimeout: "10 seconds",
          acquireTimeout: "1 minute",
          reconnect: Schedule.spaced("1 second")
        }
      })
      yield* Effect.gen(function*() {
        yield* server.setConnectLatency("1 minute")
        const waiter = yield* Effect.fork(Effect.flip(PgPool.query("select 1 as x")))
        yield* expectStats({ pending: 1, waiting: 1, connectFailures: 0 })
        yield* TestClock.adjust("9999 millis")
        yield* expectStats({ pending: 1, connectFailures: 0 })
        yield* TestClock.adjust("1 milli")
        // the connect is abandoned at connectTimeout, and its waiter fails with it at once
        const error = yield* joinNow(waiter)
        assert.strictEqual(error._tag, "ConnectionError")
        assert.include(error.message, "connectTimeout")
        yield* expectStats({ connectFailures: 1, created: 0, waiting: 0, pending: 0 })
        // the probe, a second later, connects at once: the host is up again, the next caller is served
        yield* server.setConnectLatency(0)
        yield* TestClock.adjust("1 second")
        yield* settle(server.connects, (n) => n === 2)
        assert.deepStrictEqual(yield* PgPool.query("select 1 as x"), [{ x: 1 }])
        yield* expectStats({ connectFailures: 1, created: 1, size: 1, pending: 0, waiting: 0 })
      }).pipe(Effect.provide(context))
      yield* close
    }))
})
