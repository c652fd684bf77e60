/**
 * The waiter queue, on the fake server under TestClock: first come first served, the acquire timeout, leaving
 * the queue (timeout, interruption), maxWaiting, blocking: false, who serves a waiter (a connection that comes
 * back, or a new connect), and the error of a waiter whose timeout runs out while connects are in flight or
 * failing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Option, Schedule, TestClock } from "effect"
import * as PgPool from "../../../src/PgPool.js"
import * as PgPoolTest from "../../../src/PgPoolTest.js"
import { expectStats, fakeLayer, hold, joinNow, pidsAndTexts, settle, texts } from "../../support/fake.js"

const waiting = (n: number) => settle(PgPool.stats, (s) => s.waiting === n)

const fake = fakeLayer

describe("waiters", () => {
  it.effect("are served first come, first served (one-shot statements and checkouts in one queue)", () =>
    Effect.gen(function*() {
      const holder = yield* hold(1)
      const served: Array<number> = []
      const fibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
      for (let i = 0; i < 6; i++) {
        // alternate the two kinds of waiter: a one-shot statement and a checkout for withConnection
        const work = i % 2 === 0
          ? PgPool.query(`select ${i} as n`)
          : PgPool.withConnection(Effect.zipRight(Effect.sync(() => served.push(i)), PgPool.query(`select ${i} as n`)))
        fibers.push(yield* Effect.fork(work))
        yield* waiting(i + 1)
      }
      yield* holder.release
      yield* Fiber.joinAll(fibers)
      const log = yield* pidsAndTexts
      assert.deepStrictEqual(log.map(([, text]) => text), [0, 1, 2, 3, 4, 5].map((i) => `select ${i} as n`))
      assert.deepStrictEqual(served, [1, 3, 5])
      assert.deepStrictEqual(new Set(log.map(([pid]) => pid)), new Set(holder.pids))
      yield* expectStats({ size: 1, idle: 1, inUse: 0, waiting: 0, acquired: 7, created: 1, timeouts: 0 })
    }).pipe(Effect.provide(fake({ maxConnections: 1 }))))

  it.effect("acquireTimeout is honoured to the millisecond under TestClock; the waiter leaves the queue and never gets a connection", () =>
    Effect.gen(function*() {
      const holder = yield* hold(1)
      const first = yield* Effect.fork(Effect.flip(PgPool.query("select 'first' as x")))
      yield* waiting(1)
      yield* TestClock.adjust("3 seconds")
      const second = yield* Effect.fork(Effect.flip(PgPool.query("select 'second' as x")))
      yield* waiting(2)
      // every waiter has its own deadline: 10 s after it queued
      yield* TestClock.adjust("6999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(first)))
      yield* TestClock.adjust("1 milli")
      const error = yield* joinNow(first)
      assert.strictEqual(error._tag, "PoolExhaustedError")
      if (error._tag === "PoolExhaustedError") {
        assert.strictEqual(error.reason, "acquireTimeout")
        assert.strictEqual(error.waitedMillis, 10_000)
      }
      yield* expectStats({ waiting: 1, timeouts: 1 })
      yield* TestClock.adjust("2999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(second)))
      yield* TestClock.adjust("1 milli")
      const late = yield* joinNow(second)
      assert.strictEqual(late._tag === "PoolExhaustedError" ? late.reason : late._tag, "acquireTimeout")
      yield* expectStats({ waiting: 0, timeouts: 2, inUse: 1 })
      // the connection that comes back goes idle: neither timed-out waiter gets it
      yield* holder.release
      yield* expectStats({ size: 1, idle: 1, inUse: 0, waiting: 0, acquired: 1, timeouts: 2 })
      assert.deepStrictEqual(yield* texts, [])
    }).pipe(Effect.provide(fake({ maxConnections: 1, acquireTimeout: "10 seconds" }))))

  it.effect("an interrupted waiter leaves the queue at once; the connection goes to the next one", () =>
    Effect.gen(function*() {
      const holder = yield* hold(1)
      const a = yield* Effect.fork(PgPool.query("select 'a' as x"))
      yield* waiting(1)
      const b = yield* Effect.fork(PgPool.withConnection(PgPool.query("select 'b' as x")))
      yield* waiting(2)
      const c = yield* Effect.fork(PgPool.query("select 'c' as x"))
      yield* waiting(3)
      yield* Fiber.interrupt(a)
      yield* expectStats({ waiting: 2 })
      yield* Fiber.interrupt(b)
      yield* expectStats({ waiting: 1 })
      yield* holder.release
      assert.deepStrictEqual(yield* Fiber.join(c), [{ x: "c" }])
      assert.deepStrictEqual(yield* texts, ["select 'c' as x"])
      yield* expectStats({ size: 1, idle: 1, inUse: 0, waiting: 0, acquired: 2, timeouts: 0 })
    }).pipe(Effect.provide(fake({ maxConnections: 1 }))))

  it.effect("a waiter interrupted as its connection is handed over gives the connection back", () =>
    Effect.gen(function*() {
      for (const kind of ["query", "withConnection", "connection"] as const) {
        const release = yield* Deferred.make<Fiber.RuntimeFiber<unknown, unknown>>()
        // the holder hands its connection over (on return) and interrupts the waiter in the same breath
        const holder = yield* Effect.fork(Effect.gen(function*() {
          const waiter = yield* Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release)))
          yield* Fiber.interrupt(waiter)
        }))
        yield* settle(PgPool.stats, (s) => s.inUse === 1)
        const work = kind === "query"
          ? PgPool.query("select 1")
          : kind === "withConnection"
          ? PgPool.withConnection(PgPool.query("select 1"))
          : Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => conn.query("select 1")))
        const waiter = yield* Effect.fork(work)
        yield* waiting(1)
        yield* Deferred.succeed(release, waiter)
        yield* Fiber.join(holder)
        const exit = yield* Fiber.await(waiter)
        assert.isTrue(Exit.isInterrupted(exit) || Exit.isSuccess(exit), kind)
        yield* expectStats({ size: 1, idle: 1, inUse: 0, waiting: 0 }, kind)
      }
    }).pipe(Effect.provide(fake({ maxConnections: 1 }))))

  it.effect("maxWaiting: one waiter more fails at once with PoolExhaustedError(maxWaiting), the queue unchanged", () =>
    Effect.gen(function*() {
      const holder = yield* hold(1)
      const waiters = [
        yield* Effect.fork(PgPool.query("select 1 as x")),
        yield* Effect.fork(PgPool.query("select 2 as x"))
      ]
      yield* waiting(2)
      const error = yield* Effect.flip(PgPool.query("select 3 as x"))
      assert.strictEqual(error._tag, "PoolExhaustedError")
      if (error._tag === "PoolExhaustedError") {
        assert.strictEqual(error.reason, "maxWaiting")
        assert.strictEqual(error.stats.waiting, 2)
        assert.strictEqual(error.stats.inUse, 1)
      }
      const checkout = yield* Effect.flip(Effect.scoped(PgPool.connection))
      assert.strictEqual(checkout._tag === "PoolExhaustedError" ? checkout.reason : checkout._tag, "maxWaiting")
      yield* expectStats({ waiting: 2, timeouts: 0, acquired: 1 })
      yield* holder.release
      assert.deepStrictEqual(yield* Fiber.join(waiters[0]!), [{ x: 1 }])
      assert.deepStrictEqual(yield* Fiber.join(waiters[1]!), [{ x: 2 }])
      assert.deepStrictEqual(yield* texts, ["select 1 as x", "select 2 as x"])
      yield* expectStats({ waiting: 0, acquired: 3, idle: 1 })
    }).pipe(Effect.provide(fake({ maxConnections: 1, maxWaiting: 2 }))))

  it.effect("maxWaiting counts only the waiters for busy connections, not those a connect will serve", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      // one connection open (held): the pool is not cold, connects run side by side
      const holder = yield* hold(1)
      yield* server.setConnectLatency("1 second")
      const a = yield* Effect.fork(PgPool.query("select 'a' as x"))
      const b = yield* Effect.fork(PgPool.query("select 'b' as x"))
      yield* expectStats({ waiting: 2, pending: 2, size: 3 })
      // no room for a third connect: this one would wait for a busy connection
      const error = yield* Effect.flip(PgPool.query("select 'c' as x"))
      assert.strictEqual(error._tag === "PoolExhaustedError" ? error.reason : error._tag, "maxWaiting")
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(a), [{ x: "a" }])
      assert.deepStrictEqual(yield* Fiber.join(b), [{ x: "b" }])
      yield* holder.release
      yield* expectStats({ size: 3, idle: 3, pending: 0, waiting: 0, created: 3 })
    }).pipe(Effect.provide(fake({ maxConnections: 3, maxWaiting: 0, lazy: true }))))

  it.effect("a cold pool opens one connection at a time until one connects: a burst of callers is one connect", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setConnectLatency("1 second")
      const fibers = yield* Effect.forEach(
        Array.from({ length: 10 }, (_, i) => i),
        (i) => Effect.fork(PgPool.query(`select ${i} as x`))
      )
      yield* expectStats({ waiting: 10, pending: 1, size: 1 })
      // it connected: the others start at once, within maxConnections
      yield* TestClock.adjust("1 second")
      yield* expectStats({ pending: 3, size: 4 })
      yield* TestClock.adjust("1 second")
      const rows = yield* Effect.forEach(fibers, joinNow)
      assert.deepStrictEqual(rows, Array.from({ length: 10 }, (_, i) => [{ x: i }]))
      yield* expectStats({ size: 4, idle: 4, pending: 0, waiting: 0, created: 4 })
      assert.strictEqual(yield* server.connects, 4)
    }).pipe(Effect.provide(fake({ maxConnections: 4, lazy: true }))))

  it.effect("a cold pool whose server refuses: one connect for a burst of callers, every one fails fast", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.refuseConnections({ code: "57P03", message: "the database system is shutting down" })
      const errors = yield* Effect.forEach(
        Array.from({ length: 10 }, (_, i) => i),
        () => Effect.flip(PgPool.query("select 1")),
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(
        errors.map((error) => error._tag === "ConnectionError" ? error.code : error._tag),
        Array.from({ length: 10 }, () => "57P03")
      )
      assert.strictEqual(yield* server.connects, 1)
      yield* expectStats({ waiting: 0, pending: 0, size: 0, timeouts: 0, connectFailures: 1 })
    }).pipe(Effect.provide(fake({ maxConnections: 4, lazy: true, acquireTimeout: "1 minute" }))))

  it.effect("blocking: false fails at once with PoolExhaustedError(maxConnections) when no connection can be had", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const holder = yield* hold(1)
      // room for a second connection: it is opened (and waited for), not refused
      yield* server.setConnectLatency("1 second")
      const second = yield* Effect.fork(PgPool.query("select 2 as x"))
      yield* expectStats({ pending: 1, waiting: 1 })
      const error = yield* Effect.flip(PgPool.query("select 3 as x"))
      assert.strictEqual(error._tag, "PoolExhaustedError")
      if (error._tag === "PoolExhaustedError") {
        assert.strictEqual(error.reason, "maxConnections")
        assert.strictEqual(error.stats.size, 2)
      }
      yield* expectStats({ waiting: 1, timeouts: 0 })
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(second), [{ x: 2 }])
      yield* holder.release
      yield* expectStats({ size: 2, idle: 2, inUse: 0, waiting: 0, acquired: 2 })
    }).pipe(Effect.provide(fake({ maxConnections: 2, blocking: false }))))

  it.effect("a waiter is served by a connection that comes back before the connect started for it completes", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.fork(
        Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => Effect.as(release.await, conn.backendPid)))
      )
      yield* expectStats({ inUse: 1, size: 1 })
      yield* server.setConnectLatency("1 second")
      const waiter = yield* Effect.fork(PgPool.query("select pg_backend_pid() as pid"))
      yield* expectStats({ waiting: 1, pending: 1, size: 2 })
      yield* TestClock.adjust("500 millis")
      yield* release.open
      const held = yield* Fiber.join(holder)
      const [row] = yield* Fiber.join(waiter)
      assert.strictEqual(Number(row!.pid), held)
      // the connect still completes, and its connection goes idle for the next checkout
      yield* expectStats({ waiting: 0, pending: 1, size: 2, idle: 1, created: 1 })
      yield* TestClock.adjust("500 millis")
      yield* expectStats({ waiting: 0, pending: 0, size: 2, idle: 2, created: 2, acquired: 2 })
    }).pipe(Effect.provide(fake({ maxConnections: 2 }))))

  it.effect("a new connect serves a waiter when nothing comes back", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const held = yield* hold(1)
      yield* server.setConnectLatency("1 second")
      const waiter = yield* Effect.fork(PgPool.query("select pg_backend_pid() as pid"))
      yield* expectStats({ waiting: 1, pending: 1, size: 2 })
      yield* TestClock.adjust("999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(waiter)))
      yield* TestClock.adjust("1 milli")
      const [row] = yield* joinNow(waiter)
      assert.notStrictEqual(Number(row!.pid), held.pids[0])
      yield* expectStats({ waiting: 0, pending: 0, size: 2, idle: 1, inUse: 1, created: 2, acquired: 2 })
      yield* held.release
    }).pipe(Effect.provide(fake({ maxConnections: 2 }))))

  it.effect("an acquire timeout while a connect is in flight fails in time with a ConnectionError, not PoolExhaustedError", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      // a connect that takes 8 seconds (within connectTimeout) against an acquire timeout of 5
      yield* server.setConnectLatency("8 seconds")
      const waiter = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
      yield* expectStats({ waiting: 1, pending: 1 })
      yield* TestClock.adjust("4999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(waiter)))
      yield* TestClock.adjust("1 milli")
      const error = yield* joinNow(waiter)
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "in progress")
      assert.include(error.message, "waited 5000 ms")
      yield* expectStats({ waiting: 0, timeouts: 1, pending: 1, acquired: 0 })
      // the connect completes later; its connection is kept for the next checkout
      yield* TestClock.adjust("3 seconds")
      yield* expectStats({ pending: 0, size: 1, idle: 1, created: 1 })
      assert.deepStrictEqual(yield* PgPool.query("select 1 as x"), [{ x: 1 }])
    }).pipe(Effect.provide(fake({ lazy: true, acquireTimeout: "5 seconds" }))))

  it.effect("while the only host is down, callers fail at once with its last failure; one probe per reconnect interval, whatever the demand", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const connects = server.connects
      yield* server.refuseConnections({ code: "57P03", message: "the database system is starting up" })
      const first = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(first._tag === "ConnectionError" ? first.code : first._tag, "57P03")
      assert.strictEqual(yield* connects, 1)
      // a hundred callers meanwhile: each fails at once from the known state, none tries a connect
      const errors = yield* Effect.forEach(
        Array.from({ length: 100 }, (_, i) => i),
        () => Effect.flip(PgPool.query("select 1")),
        { concurrency: "unbounded" }
      )
      for (const error of errors) {
        assert.strictEqual(error._tag, "ConnectionError")
        if (error._tag !== "ConnectionError") continue
        assert.strictEqual(error.code, "57P03")
        assert.include(error.message, "is down")
        assert.include(error.message, "the database system is starting up")
        assert.isString(error.host)
        assert.include(error.message, `${error.host}:${error.port}`)
      }
      assert.strictEqual(yield* connects, 1)
      yield* expectStats({ waiting: 0, pending: 0, size: 0, timeouts: 0, connectFailures: 1 })
      // the probe, every 2 seconds: one connect each, counted as a connect failure
      yield* TestClock.adjust("1999 millis")
      assert.strictEqual(yield* connects, 1)
      yield* TestClock.adjust("1 milli")
      yield* settle(connects, (n) => n === 2)
      yield* TestClock.adjust("2 seconds")
      yield* settle(connects, (n) => n === 3)
      const later = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(later._tag === "ConnectionError" ? later.attempts : later._tag, 3)
      // the server answers again: the next probe gets in, and callers are served
      yield* server.refuseConnections(false)
      yield* TestClock.adjust("2 seconds")
      yield* settle(connects, (n) => n === 4)
      assert.deepStrictEqual(yield* PgPool.query("select 1 as x"), [{ x: 1 }])
      assert.strictEqual(yield* connects, 5)
      yield* expectStats({ waiting: 0, pending: 0, size: 1, timeouts: 0, connectFailures: 3, created: 1 })
      // it stays up: no probe any more
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(yield* connects, 5)
    }).pipe(Effect.provide(fake({ lazy: true, acquireTimeout: "5 seconds", reconnect: Schedule.spaced("2 seconds") }))))

  it.effect("a connect failure that retrying cannot mend fails the head waiter at once, not at its deadline", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.refuseConnections({ code: "28P01", message: "password authentication failed" })
      const error = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(error._tag === "ConnectionError" ? error.code : error._tag, "28P01")
      yield* expectStats({ waiting: 0, pending: 0, size: 0, timeouts: 0, connectFailures: 1 })
      assert.strictEqual(yield* server.connects, 1)
    }).pipe(Effect.provide(fake({ lazy: true, acquireTimeout: "1 minute" }))))
})
