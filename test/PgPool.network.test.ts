/**
 * A blackholed network (issue 3): the pool talks to its private server through the test TCP proxy, which is
 * switched to "drop" (every byte and every close is swallowed, sockets stay open: a pulled cable, a silent
 * firewall) and back to "pass". Acquire, connect and queries must fail within their timeouts, the pool must
 * close within a bounded time, and it must recover by itself once the network heals.
 */
import { assert, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Schedule, Scope } from "effect"
import * as PgPool from "../src/PgPool.js"
import type { ConnectionError, QueryError } from "../src/PgPoolError.js"
import * as Transaction from "../src/Transaction.js"
import { eventually } from "./support/db.js"
import { failureOf, timedExit } from "./support/exits.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Proxy from "./support/proxy.js"
import * as PrivateServer from "./support/server.js"

class Server extends Context.Tag("test/network/Server")<Server, PrivateServer.PrivateServer>() {}

/** A proxy to the server and a pool config going through it (each test has its own application name). */
const throughProxy = (applicationName: string, mode: Proxy.Mode = "pass") =>
  Effect.gen(function*() {
    const server = yield* Server
    const proxy = yield* Proxy.make({ target: { host: server.host, port: server.port }, mode })
    const config = (overrides: PgPool.Config = {}): PgPool.Config =>
      server.config({ applicationName, host: proxy.host, port: proxy.port, ...overrides })
    return { server, proxy, config }
  })

/** A pool in a scope of its own, for the tests that measure its close (`close`; else closed with the test). */
const closablePool = (config: PgPool.Config) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(PgPool.layer(config), scope)
    return { pool: Context.get(context, PgPool.PgPool), close: Scope.close(scope, Exit.void) }
  })

/**
 * Resets every proxied connection before the pool's scope closes (finalizers run in reverse order), for the
 * tests that do not measure the close itself. Call it after making the pool.
 */
const resetBeforeClose = (proxy: Proxy.TcpProxy) => Effect.addFinalizer(() => proxy.setMode("reset"))

layer(Layer.scoped(Server, PrivateServer.make()), { excludeTestServices: true, timeout: "60 seconds" })(
  "PgPool on a blackholed network",
  (it) => {
    it.scoped("connecting into the blackhole: a waiter fails within acquireTimeout with ConnectionError", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-acquire", "drop")
        // the connect hangs (accepted, then silence) and connectTimeout is longer than acquireTimeout
        const pool = yield* PrivateServer.makePool(
          config({ lazy: true, acquireTimeout: "1 second", connectTimeout: "10 seconds" })
        )
        const { exit, millis } = yield* timedExit(pool.query("select 1"))
        const error = failureOf(exit)
        // not PoolExhaustedError: nothing is busy, the database cannot be reached
        assert.strictEqual(error._tag, "ConnectionError")
        assert.isAtLeast(millis, 900)
        assert.isBelow(millis, 1_000 + 1_500)
        assert.isAtLeast(proxy.connections(), 1)
        // a scoped checkout too
        const checkout = yield* timedExit(Effect.scoped(pool.connection))
        assert.strictEqual(failureOf(checkout.exit)._tag, "ConnectionError")
        assert.isBelow(checkout.millis, 1_000 + 1_500)
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.waiting, stats.inUse], [0, 0])
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("connecting into the blackhole: connectTimeout bounds every attempt, the probe's too; callers fail at once meanwhile; the layer fails within it", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-connect", "drop")
        const pool = yield* PrivateServer.makePool(config({
          lazy: true,
          acquireTimeout: "2 seconds",
          connectTimeout: "400 millis",
          reconnect: Schedule.spaced("100 millis")
        }))
        const { exit, millis } = yield* timedExit(pool.query("select 1"))
        const error = failureOf(exit) as ConnectionError
        assert.strictEqual(error._tag, "ConnectionError")
        assert.include(error.message, "connectTimeout")
        // the first attempt gave up after 400 ms, and its caller with it
        assert.isAtLeast(millis, 390)
        assert.isBelow(millis, 400 + 1_000)
        // the host is down now: callers fail at once, and the probe alone connects, each attempt giving up after
        // 400 ms and the next one following 100 ms later (about 4 in 2 s), however many callers there are
        const start = Date.now()
        let calls = 0
        while (Date.now() - start < 2_000) {
          const later = yield* timedExit(pool.query("select 1"))
          calls++
          const laterError = failureOf(later.exit) as ConnectionError
          assert.strictEqual(laterError._tag, "ConnectionError")
          assert.include(laterError.message, "is down")
          assert.include(laterError.message, "connectTimeout")
          assert.isBelow(later.millis, 100)
          yield* Effect.sleep("5 millis")
        }
        const attempts = proxy.acceptTimes()
        const context = `attempts at ${JSON.stringify(attempts)} for ${calls} calls`
        assert.isAtLeast(calls, 50, context)
        assert.isAtLeast(attempts.length, 1 + 3, context)
        assert.isAtMost(attempts.length, 1 + 5, context)
        assert.isTrue(attempts.slice(1).every((t, i) => t - attempts[i]! >= 480), context)

        // an eager layer gives up within connectTimeout
        const built = yield* timedExit(
          Effect.scoped(Layer.build(PgPool.layer(config({ connectTimeout: "1 second" }))))
        )
        assert.strictEqual(failureOf(built.exit)._tag, "ConnectionError")
        assert.isBelow(built.millis, 1_000 + 1_500)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a statement on a blackholed connection fails within queryTimeout", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-query")
        const pool = yield* PrivateServer.makePool(config({
          maxConnections: 2,
          queryTimeout: "500 millis",
          healthCheck: false,
          acquireTimeout: "1 second",
          connectTimeout: "500 millis"
        }))
        yield* resetBeforeClose(proxy)
        assert.deepStrictEqual(
          yield* Effect.all([
            pool.query("select 1 as one, pg_sleep(0.1)"),
            pool.query("select 1 as one, pg_sleep(0.1)")
          ], {
            concurrency: 2
          }).pipe(Effect.map((results) => results.map((rows) => rows[0]!.one))),
          [1, 1]
        )
        yield* proxy.setMode("drop")
        // one-shot statement
        const oneShot = yield* timedExit(pool.query("select 1"))
        const error = failureOf(oneShot.exit) as QueryError
        assert.strictEqual(error._tag, "QueryError")
        assert.strictEqual(error.code, "57014")
        assert.isAtLeast(oneShot.millis, 450)
        assert.isBelow(oneShot.millis, 500 + 1_500)
        // a statement on a scoped connection (the network is reset before the connection goes back, so that
        // its return does not wait for the cancel request lost in the blackhole)
        const scoped = yield* Effect.scoped(
          Effect.flatMap(pool.connection, (conn) =>
            Effect.zipLeft(timedExit(conn.query("select 1")), proxy.setMode("reset")))
        )
        assert.strictEqual((failureOf(scoped.exit) as QueryError).code, "57014")
        assert.isAtLeast(scoped.millis, 450)
        assert.isBelow(scoped.millis, 500 + 1_500)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a waiter behind a connection stuck in the blackhole fails within acquireTimeout", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-waiter")
        const pool = yield* PrivateServer.makePool(
          config({ maxConnections: 1, acquireTimeout: "1 second", healthCheck: false })
        )
        yield* resetBeforeClose(proxy)
        assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
        yield* proxy.setMode("drop")
        // no queryTimeout: this statement hangs and holds the only connection
        const stuck = yield* Effect.forkScoped(Effect.exit(pool.query("select 1")))
        yield* eventually(pool.stats, (s) => s.inUse === 1)
        const { exit, millis } = yield* timedExit(pool.query("select 2"))
        const error = failureOf(exit)
        // the connection is busy (its statement unanswered): the pool is exhausted, and says so in time
        assert.strictEqual(error._tag, "PoolExhaustedError")
        assert.isAtLeast(millis, 900)
        assert.isBelow(millis, 1_000 + 1_500)
        assert.deepStrictEqual([(yield* pool.stats).waiting, (yield* pool.stats).timeouts], [0, 1])
        // end it: the connection is reset, the stuck statement fails
        yield* proxy.setMode("reset")
        assert.strictEqual(failureOf(yield* Fiber.join(stuck))._tag, "ConnectionError")
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("the pool closes within a bounded time under the blackhole", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy, server } = yield* throughProxy("blackhole-close")
        const { close, pool } = yield* closablePool(
          config({ minConnections: 2, drainTimeout: "1 second", healthCheck: false })
        )
        yield* eventually(server.backends("blackhole-close"), (rows) => rows.length === 2)
        // a borrower whose statement goes into the blackhole, and an idle connection
        const checkedOut = yield* Deferred.make<void>()
        yield* proxy.setMode("drop")
        const borrower = yield* Effect.forkScoped(
          Effect.scoped(Effect.gen(function*() {
            const conn = yield* pool.connection
            yield* Deferred.succeed(checkedOut, undefined)
            return yield* conn.query("select 1")
          })).pipe(Effect.exit)
        )
        yield* Deferred.await(checkedOut)
        // and a one-shot statement on the other connection
        const oneShot = yield* Effect.forkScoped(Effect.exit(pool.query("select 2")))
        yield* eventually(pool.stats, (s) => s.inUse === 2)
        const { exit, millis } = yield* timedExit(close)
        assert.isTrue(Exit.isSuccess(exit))
        // it waited drainTimeout for the borrower, then closed everything without hearing from the server
        assert.isAtLeast(millis, 900)
        assert.isBelow(millis, 1_000 + 4_000)
        // the borrower's statement failed (its connection was closed under it), and no socket is left open
        const borrowed = failureOf(yield* Fiber.join(borrower))
        assert.strictEqual(borrowed._tag, "ConnectionError")
        // saying why: not a network failure, the pool's close
        assert.include(
          borrowed.message,
          "The pool was closed while the statement ran: its connection was still checked out after drainTimeout (1000 ms)"
        )
        assert.isFalse((borrowed as ConnectionError).safeToRetry === true)
        const cut = failureOf(yield* Fiber.join(oneShot))
        assert.strictEqual(cut._tag, "ConnectionError")
        assert.include(cut.message, "The pool was closed while the statement ran")
        yield* eventually(proxy.stats, (s) => s.open === 0)
        assert.strictEqual(failureOf(yield* Effect.exit(pool.query("select 1")))._tag, "PoolClosedError")
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a statement cut off in the blackhole holds up the pool's close no longer than drainTimeout (its lost CancelRequest is not waited for)", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-cut")
        const { close, pool } = yield* closablePool(
          config({ maxConnections: 1, drainTimeout: "500 millis", healthCheck: false })
        )
        assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
        yield* proxy.setMode("drop")
        // interrupted by the timeout: cancelled in the background, over a CancelRequest the blackhole swallows
        const cut = yield* Effect.exit(Effect.timeout(pool.query("select 1"), "300 millis"))
        assert.strictEqual(failureOf(cut)._tag, "TimeoutException")
        const { exit, millis } = yield* timedExit(close)
        assert.isTrue(Exit.isSuccess(exit))
        // drainTimeout, then the connection is closed, and its settling with it (the lost CancelRequest was waited
        // for up to 5 seconds)
        assert.isBelow(millis, 500 + 1_500)
        yield* eventually(proxy.stats, (s) => s.open === 0)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a health-check ping cut off by an interruption closes its connection instead of leaking it", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const { config, proxy } = yield* throughProxy("blackhole-ping")
        const pool = yield* PrivateServer.makePool(config({
          maxConnections: 1,
          acquireTimeout: "2 seconds",
          connectTimeout: "1 second",
          healthCheck: { idleThreshold: 0, interval: "1 hour", timeout: "30 seconds" }
        }))
        yield* resetBeforeClose(proxy)
        assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
        yield* proxy.setMode("drop")
        // the checkout pings the idle connection first; the ping hangs in the blackhole and the caller gives up
        const cut = yield* Effect.exit(pool.query("select 2").pipe(Effect.timeout("200 millis")))
        assert.isTrue(Exit.isFailure(cut))
        const stats = yield* eventually(pool.stats, (s) => s.size === 0 && s.inUse === 0 && s.idle === 0)
        assert.strictEqual(stats.closedByReason.broken, 1)
        yield* proxy.setMode("pass")
        // the only slot is free again: a new connection serves the next caller
        assert.deepStrictEqual(yield* pool.query("select 3 as three"), [{ three: 3 }])
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("after the network heals the pool recovers by itself", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const app = "blackhole-heal"
        const { config, proxy, server } = yield* throughProxy(app)
        const pool = yield* PrivateServer.makePool(config({
          minConnections: 2,
          maxConnections: 3,
          connectTimeout: "500 millis",
          acquireTimeout: "1 second",
          queryTimeout: "1 second",
          reconnect: Schedule.spaced("100 millis"),
          maintenanceInterval: "200 millis",
          healthCheck: { idleThreshold: "200 millis", interval: "500 millis", timeout: "300 millis" }
        }))
        yield* resetBeforeClose(proxy)
        yield* eventually(server.backends(app), (rows) => rows.length === 2)
        assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])

        yield* proxy.setMode("drop")
        // during the outage statements fail, each within its bounds (queryTimeout, acquireTimeout)
        const during = yield* Effect.all(
          Array.from({ length: 4 }, () => timedExit(pool.query("select 1 as one"))),
          { concurrency: "unbounded" }
        )
        for (const { exit, millis } of during) {
          const error = failureOf(exit)
          assert.include(["QueryError", "ConnectionError", "PoolExhaustedError"], error._tag)
          assert.isBelow(millis, 1_000 + 1_500)
        }

        yield* proxy.setMode("pass")
        // the same pool, no rebuild: statements succeed again once the stuck connections are replaced
        yield* eventually(
          pool.query("select 1 as one").pipe(Effect.orElseSucceed((): ReadonlyArray<PgPool.Row> => [])),
          (rows) => rows.length === 1,
          { attempts: 150, interval: "100 millis" }
        )
        const rows = yield* Effect.all(Array.from({ length: 10 }, (_, i) => pool.query("select $1::int as i", [i])))
        assert.deepStrictEqual(rows.map((r) => r[0]!.i), Array.from({ length: 10 }, (_, i) => i))
        // and it settles: nothing in use, and the server sees exactly the pool's connections
        const stats = yield* eventually(
          pool.stats,
          (s) => s.inUse === 0 && s.pending === 0 && s.waiting === 0 && s.size >= 2,
          { attempts: 150, interval: "100 millis" }
        )
        yield* eventually(server.backends(app), (rows) => rows.length === stats.size, {
          attempts: 150,
          interval: "100 millis"
        })
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("idle connections reset by the network reach no caller: what was written into a reset socket never left, and goes out on a new connection", () =>
      Effect.gen(function*() {
        const errors = yield* watchProcessErrors
        const app = "reset-idle"
        const { config, proxy, server } = yield* throughProxy(app)
        const pool = yield* PrivateServer.makePool(config({ minConnections: 4, maxConnections: 4, healthCheck: false }))
        yield* resetBeforeClose(proxy)
        for (let round = 0; round < 3; round++) {
          const before = yield* eventually(server.backends(app), (rows) => rows.length === 4)
          yield* eventually(pool.stats, (s) => s.idle === 4)
          // every connection reset, and at once (before the pool has read the resets) one of each kind of use: a
          // one-shot statement is sent again (what went into the reset socket never left); a checkout whose first
          // statement could not be is not handed a connection the network has reset (Connection.probe)
          yield* proxy.setMode("reset")
          yield* proxy.setMode("pass")
          const results = yield* Effect.all([
            pool.query("select 1 as one"),
            pool.withConnection(pool.query("select 2 as one")),
            Effect.scoped(Effect.flatMap(pool.connection, (conn) => conn.query("select 3 as one"))),
            Effect.provideService(Transaction.withTransaction(PgPool.query("select 4 as one")), PgPool.PgPool, pool)
          ], { concurrency: "unbounded" })
          assert.deepStrictEqual(results, [[{ one: 1 }], [{ one: 2 }], [{ one: 3 }], [{ one: 4 }]])
          // the fault happened: the backends of before are gone
          yield* eventually(
            server.backends(app),
            (rows) => rows.every((row) => !before.some((old) => old.pid === row.pid))
          )
        }
        assert.isAtLeast((yield* pool.stats).closedByReason.broken, 12)
        assert.deepStrictEqual(errors.describe(), [])
      }))
  }
)
