/**
 * Real faults against real servers (issue 3): each group runs on its own private PostgreSQL server, which the
 * tests stop, restart, and whose backends they terminate, SIGSTOP or cancel. The three servers start in
 * parallel once for the file; the tests of a group share theirs (each test uses its own pool and its own
 * `application_name`, so they do not see each other's backends).
 *
 * Waiting for a condition is done by polling with a bound (`eventually`); a short real-time timeout is used
 * only around something that is expected to hang, to show that it does.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Option, Schedule, Scope } from "effect"
import * as PgPool from "../src/PgPool.js"
import type { ConnectionError, PoolError, QueryError } from "../src/PgPoolError.js"
import { eventually } from "./support/db.js"
import { failureOf, now, timedExit, valueOf } from "./support/exits.js"
import { describeOutcomes, startLoad, workersWithSuccessAfter } from "./support/load.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Proxy from "./support/proxy.js"
import * as PrivateServer from "./support/server.js"

// ---------------------------------------------------------------------------------------------------------
// servers: one per group, started in parallel
// ---------------------------------------------------------------------------------------------------------

/** Restarted under load. */
class RestartServer extends Context.Tag("test/faults/RestartServer")<RestartServer, PrivateServer.PrivateServer>() {}
/** Down at the start of each test (stopped, started by the tests that need it). */
class DownServer extends Context.Tag("test/faults/DownServer")<DownServer, PrivateServer.PrivateServer>() {}
/** Always running: backends are terminated, stopped with SIGSTOP, cancelled. */
class BackendServer extends Context.Tag("test/faults/BackendServer")<BackendServer, PrivateServer.PrivateServer>() {}

const Servers = Layer.mergeAll(
  Layer.scoped(RestartServer, PrivateServer.make()),
  Layer.scoped(DownServer, PrivateServer.make({ running: false })),
  Layer.scoped(BackendServer, PrivateServer.make())
)

// ---------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------

const pidOf = (rows: ReadonlyArray<PgPool.Row>): number => Number(rows[0]!.pid)
const backendPid = (pool: PgPool.PgPool) => Effect.map(pool.query("select pg_backend_pid() as pid"), pidOf)

/** The connection `application_name` of a test's pool: each test has its own, so `backends(name)` sees only its own. */
const configFor = (server: PrivateServer.PrivateServer, applicationName: string, overrides: PgPool.Config = {}) =>
  server.config({ applicationName, ...overrides })

/** SIGSTOPs a server backend for the current scope: SIGCONT when the scope closes, whatever happened. */
const stopBackend = (pid: number) =>
  Effect.acquireRelease(
    Effect.sync(() => process.kill(pid, "SIGSTOP")),
    // the backend may be gone already
    () => Effect.ignore(Effect.try(() => process.kill(pid, "SIGCONT")))
  )

// ---------------------------------------------------------------------------------------------------------

layer(Servers, { excludeTestServices: true, timeout: "60 seconds" })("PgPool under real faults", (it) => {
  // -------------------------------------------------------------------------------------------------------
  describe("restart of the server while queries run", () => {
    const maxConnections = 4
    const workers = 2 * maxConnections

    /**
     * 8 workers on 4 connections (so 4 statements are on the server and 4 are queued at any moment), the server
     * stopped (fast shutdown: every backend is terminated), kept down for a moment, started again. The workers
     * go on issuing statements all along, at whatever rate failing fast allows.
     */
    const restartUnderLoad = (applicationName: string, retryLostQueries: boolean) =>
      Effect.gen(function*() {
        const server = yield* RestartServer
        const errors = yield* watchProcessErrors
        yield* server.start
        const startTime = yield* server.startTime
        const pool = yield* PrivateServer.makePool(configFor(server, applicationName, {
          maxConnections,
          acquireTimeout: "20 seconds",
          connectTimeout: "2 seconds",
          reconnect: Schedule.spaced("200 millis"),
          retryLostQueries
        }))
        const load = yield* startLoad(pool, workers)
        // warm: every worker has had a few statements answered
        yield* eventually(load.outcomes, (outcomes) =>
          Array.from({ length: workers }, (_, w) =>
            w).every((w) =>
              outcomes.filter((o) => o.worker === w && o.error === undefined).length >= 3
            ), { attempts: 200, interval: "25 millis" })
        const stopBegan = yield* now
        yield* server.stop
        const stopped = yield* now
        // down: statements issued now fail at once with ConnectionError (the host is known to be down), none
        // waits out its acquire timeout of 20 s
        const probes = yield* Effect.all(
          Array.from({ length: 3 }, () =>
            timedExit(pool.query("select 1 as one"))),
          { concurrency: "unbounded" }
        )
        for (const probe of probes) {
          assert.strictEqual(failureOf(probe.exit)._tag, "ConnectionError")
          assert.isBelow(probe.millis, 1_000)
        }
        yield* Effect.sleep("500 millis")
        const startBegan = yield* now
        yield* server.start
        const started = yield* now
        // the server really restarted
        assert.isAbove((yield* server.startTime).getTime(), startTime.getTime())
        // queries succeed again within about one reconnect interval: every worker gets statements answered that
        // it issued after the restart
        yield* eventually(
          load.outcomes,
          (outcomes) =>
            workersWithSuccessAfter(outcomes, started).size === workers,
          { attempts: 300, interval: "50 millis" }
        )
        const firstSuccess = Math.min(
          ...(yield* load.outcomes).filter((o) => o.error === undefined && o.startedAt > started).map((o) => o.endedAt)
        )
        const outcomes = yield* load.stop
        const failures = outcomes.filter((o) => o.error !== undefined)
        const context = `failures: ${describeOutcomes(failures.slice(0, 20))} (${failures.length}); stop ${
          Math.round(stopBegan)
        }..${Math.round(stopped)}, start ${Math.round(startBegan)}..${Math.round(started)}, first success ${
          Math.round(firstSuccess)
        }`
        assert.isBelow(firstSuccess - started, 200 + 1_000, context)
        // every failure is a ConnectionError, of a statement issued before the server was back (and its probe in)
        assert.isTrue(failures.every((o) => o.error === "ConnectionError"), context)
        assert.isTrue(failures.every((o) => o.startedAt < firstSuccess), context)
        // statements issued while the server was down failed fast
        const issuedWhileDown = outcomes.filter((o) => o.startedAt > stopped && o.endedAt < startBegan)
        assert.isAbove(issuedWhileDown.length, 10, context)
        assert.isTrue(issuedWhileDown.every((o) => o.error === "ConnectionError" && o.endedAt - o.startedAt < 1_000))
        // the pool is back to normal: nothing in use, every connection a live backend on the server
        const stats = yield* eventually(pool.stats, (s) => s.inUse === 0 && s.waiting === 0 && s.pending === 0)
        assert.isAtLeast(stats.closedByReason.broken, 1)
        yield* eventually(server.backends(applicationName), (rows) => rows.length === stats.size)
        assert.deepStrictEqual(errors.describe(), [])
        return { failures, outcomes, stopBegan, stopped }
      })

    it.scoped("queries fail fast while the server is down and succeed again after the restart (retryLostQueries)", () =>
      Effect.gen(function*() {
        // statements lost with their connection are re-sent, and fail fast like the others while it is down:
        // the assertions of restartUnderLoad hold with the option too
        yield* restartUnderLoad("restart-retry", true)
      }))

    it.scoped("retryLostQueries: false: the statements in flight fail with ConnectionError, later ones succeed", () =>
      Effect.gen(function*() {
        const { failures, stopBegan } = yield* restartUnderLoad("restart-no-retry", false)
        // 4 statements were on the server when it went down: they fail (at least one)
        assert.isAtLeast(failures.filter((o) => o.startedAt <= stopBegan).length, 1, describeOutcomes(failures))
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("pg_terminate_backend", () => {
    it.scoped("on idle pooled backends: the pool notices, replaces them, and the next queries work", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "terminate-idle"
        // no health check: the pool must notice the loss by itself (the driver's error/end events)
        const pool = yield* PrivateServer.makePool(
          configFor(server, app, { minConnections: 3, healthCheck: false, maintenanceInterval: "100 millis" })
        )
        const before = yield* eventually(server.backends(app), (rows) => rows.length === 3)
        const terminated = yield* server.terminateAll(app)
        assert.deepStrictEqual([...terminated].sort(), before.map((b) => b.pid).sort())
        // the pool closes the lost connections without anyone touching them ...
        yield* eventually(pool.stats, (s) => s.closedByReason.broken === 3)
        // ... and maintenance opens replacements (minConnections)
        const after = yield* eventually(
          server.backends(app),
          (rows) => rows.length === 3 && rows.every((row) => !terminated.includes(row.pid))
        )
        const pids = yield* Effect.all(
          Array.from(
            { length: 3 },
            () => pool.query("select pg_backend_pid() as pid, pg_sleep(0.1)").pipe(Effect.map(pidOf))
          ),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual([...pids].sort(), after.map((b) => b.pid).sort())
        const stats = yield* pool.stats
        assert.strictEqual(stats.closedByReason.broken, 3)
        assert.strictEqual(stats.created, 6)
        assert.deepStrictEqual([stats.size, stats.inUse], [3, 0])
        assert.deepStrictEqual(errors.describe(), [])
      }))

    /** A statement that sleeps 30 s the first time it runs and returns at once after that (a sequence counts). */
    const sleepOnce = (sequence: string) =>
      `select pg_sleep(case when nextval('${sequence}') = 1 then 30 else 0 end), pg_backend_pid() as pid`

    it.scoped("on a busy backend under PgPool.query: the statement is retried on a fresh connection (retryLostQueries)", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "terminate-busy-retry"
        yield* server.query("drop sequence if exists busy_retry_seq")
        yield* server.query("create sequence busy_retry_seq")
        const pool = yield* PrivateServer.makePool(
          configFor(server, app, { healthCheck: false, retryLostQueries: true })
        )
        const running = yield* Effect.fork(timedExit(pool.query(sleepOnce("busy_retry_seq"))))
        const [victim] = yield* eventually(
          server.backends(app),
          (rows) => rows.some((row) => row.state === "active" && row.query.includes("pg_sleep"))
        )
        assert.isTrue(yield* server.terminate(victim!.pid))
        const { exit, millis } = yield* Fiber.join(running)
        // the caller gets the result of the retry, from another backend, without waiting out the 30 s
        const rows = valueOf(exit)
        assert.notStrictEqual(pidOf(rows), victim!.pid)
        assert.isBelow(millis, 10_000)
        // the statement ran twice (at-least-once, as documented)
        assert.deepStrictEqual(yield* server.query("select last_value::int as n from busy_retry_seq"), [{ n: 2 }])
        const stats = yield* pool.stats
        assert.strictEqual(stats.closedByReason.broken, 1)
        assert.strictEqual(stats.inUse, 0)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("on a busy backend under PgPool.query (retryLostQueries: false, the default): the caller gets ConnectionError", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "terminate-busy-no-retry"
        yield* server.query("drop sequence if exists busy_no_retry_seq")
        yield* server.query("create sequence busy_no_retry_seq")
        const pool = yield* PrivateServer.makePool(
          configFor(server, app, { healthCheck: false, retryLostQueries: false })
        )
        const running = yield* Effect.fork(Effect.exit(pool.query(sleepOnce("busy_no_retry_seq"))))
        const [victim] = yield* eventually(
          server.backends(app),
          (rows) => rows.some((row) => row.state === "active" && row.query.includes("pg_sleep"))
        )
        assert.isTrue(yield* server.terminate(victim!.pid))
        const error = failureOf(yield* Fiber.join(running))
        assert.strictEqual(error._tag, "ConnectionError")
        assert.strictEqual((error as ConnectionError).code, "57P01")
        // not retried
        assert.deepStrictEqual(yield* server.query("select last_value::int as n from busy_no_retry_seq"), [{ n: 1 }])
        // the lost connection was closed, not returned; the next statement gets a new one
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.closedByReason.broken, stats.inUse, stats.idle], [1, 0, 0])
        assert.notStrictEqual(yield* backendPid(pool), victim!.pid)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("on a busy scoped connection: conn.query fails with ConnectionError and the connection is not returned", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "terminate-busy-connection"
        const pool = yield* PrivateServer.makePool(configFor(server, app, { healthCheck: false }))
        const seen = yield* Effect.scoped(Effect.gen(function*() {
          const conn = yield* pool.connection
          const running = yield* Effect.fork(Effect.exit(conn.query("select pg_sleep(30)")))
          yield* eventually(
            server.backends(app),
            (rows) => rows.some((row) => row.pid === conn.backendPid && row.state === "active")
          )
          assert.isTrue(yield* server.terminate(conn.backendPid))
          const lost = failureOf(yield* Fiber.join(running))
          const again = failureOf(yield* Effect.exit(conn.query("select 1")))
          return { pid: conn.backendPid, lost, again }
        }))
        assert.strictEqual(seen.lost._tag, "ConnectionError")
        assert.strictEqual((seen.lost as ConnectionError).code, "57P01")
        assert.strictEqual(seen.again._tag, "ConnectionError")
        // closed instead of returned
        const stats = yield* pool.stats
        assert.deepStrictEqual(
          [stats.closedByReason.broken, stats.size, stats.idle, stats.inUse],
          [1, 0, 0, 0]
        )
        assert.notStrictEqual(yield* backendPid(pool), seen.pid)
        assert.deepStrictEqual(errors.describe(), [])
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("server down when the layer is built", () => {
    it.scoped("building PgPool.layer fails with ConnectionError within connectTimeout", () =>
      Effect.gen(function*() {
        const server = yield* DownServer
        const errors = yield* watchProcessErrors
        yield* server.stop
        const { exit, millis } = yield* timedExit(
          Effect.scoped(Layer.build(PgPool.layer(configFor(server, "down-eager", { connectTimeout: "1 second" }))))
        )
        const error = failureOf(exit)
        assert.strictEqual(error._tag, "ConnectionError")
        if (error._tag !== "ConnectionError") return
        assert.isAtMost(millis, 1_000 + 1_500)
        // it tried (and retried, per the reconnect schedule: 100, 200, 400 ms) until connectTimeout ran out, and
        // says how many times
        assert.isAtLeast(error.attempts ?? 0, 3)
        assert.include(error.message, `${error.attempts} failed attempts`)
        assert.isDefined(error.cause)
        assert.strictEqual(error.port, server.port)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("lazy: true builds at once; queries fail fast with ConnectionError, then recover", () =>
      Effect.gen(function*() {
        const server = yield* DownServer
        const errors = yield* watchProcessErrors
        yield* server.stop
        const built = yield* timedExit(Layer.build(PgPool.layer(configFor(server, "down-lazy", {
          lazy: true,
          acquireTimeout: "1 second",
          connectTimeout: "500 millis",
          reconnect: Schedule.spaced("100 millis")
        }))))
        assert.isBelow(built.millis, 500)
        const pool = Context.get(valueOf(built.exit), PgPool.PgPool)

        const { exit, millis } = yield* timedExit(pool.query("select 1 as one"))
        const error = failureOf(exit)
        // "the database is down", not "the pool is full", as soon as the connect failed
        assert.strictEqual(error._tag, "ConnectionError")
        if (error._tag !== "ConnectionError") return
        assert.isBelow(millis, 500 + 500)
        assert.isDefined(error.cause)
        // the host is known to be down now: the next caller fails at once, naming it and the attempts
        const next = yield* timedExit(pool.query("select 1 as one"))
        const known = failureOf(next.exit)
        assert.strictEqual(known._tag, "ConnectionError")
        if (known._tag !== "ConnectionError") return
        assert.isBelow(next.millis, 100)
        assert.include(known.message, `${server.host}:${server.port} is down`)
        assert.isAtLeast(known.attempts ?? 0, 1)
        // a scoped checkout fails the same way
        const checkout = failureOf(yield* Effect.exit(Effect.scoped(pool.connection)))
        assert.strictEqual(checkout._tag, "ConnectionError")

        yield* server.start
        // the same pool (no rebuild) connects once the server is up
        const rows = yield* eventually(
          pool.query("select 1 as one").pipe(Effect.orElseSucceed((): ReadonlyArray<PgPool.Row> => [])),
          (rows) => rows.length === 1,
          { attempts: 100, interval: "50 millis" }
        )
        assert.deepStrictEqual(rows, [{ one: 1 }])
        assert.strictEqual((yield* pool.stats).inUse, 0)
        assert.deepStrictEqual(errors.describe(), [])
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("connect attempts during an outage follow the reconnect schedule, whatever the request rate", () => {
    /**
     * The server is stopped and the pool connects through a proxy in "pass" mode, which accepts every connect
     * attempt, tries the stopped server, and resets the client: the proxy's accept times are the pool's
     * connect attempts. Ten fibers call about 1,000 times a second for `window` ms; each call must fail fast
     * with ConnectionError, and the attempts follow the schedule (the first caller's, then the probe's).
     */
    const outage = (reconnect: Schedule.Schedule<unknown, unknown> | undefined, window: number) =>
      Effect.gen(function*() {
        const server = yield* DownServer
        const errors = yield* watchProcessErrors
        yield* server.stop
        const proxy = yield* Proxy.make({ target: { host: server.host, port: server.port } })
        const pool = yield* PrivateServer.makePool(configFor(server, "outage", {
          host: proxy.host,
          port: proxy.port,
          lazy: true,
          maxConnections: 10,
          acquireTimeout: "20 seconds",
          connectTimeout: "1 second",
          ...(reconnect === undefined ? {} : { reconnect })
        }))
        const began = yield* now
        let calls = 0
        let slowest = 0
        let last: ConnectionError | undefined
        const caller = Effect.gen(function*() {
          while ((yield* now) - began < window) {
            const { exit, millis } = yield* timedExit(pool.query("select 1"))
            const error = failureOf(exit)
            assert.strictEqual(error._tag, "ConnectionError", error.message)
            last = error as ConnectionError
            calls++
            slowest = Math.max(slowest, millis)
            yield* Effect.sleep("10 millis")
          }
        })
        yield* Effect.all(Array.from({ length: 10 }, () => caller), { concurrency: "unbounded", discard: true })
        const attempts = proxy.acceptTimes()
        const context = `attempts at ${JSON.stringify(attempts)}, ${calls} calls, slowest ${slowest} ms`
        // about 1,000 calls a second, each answered at once (none waited out its acquire timeout of 20 s)
        assert.isAtLeast(calls, window / 2, context)
        assert.isBelow(slowest, 1_000, context)
        // the last error names the host and the attempts so far (one may still have been in flight)
        assert.include(last!.message, "is down")
        const counted = last!.attempts ?? 0
        assert.isTrue(counted === attempts.length || counted === attempts.length - 1, `${counted}; ${context}`)
        assert.deepStrictEqual(errors.describe(), [])
        const gaps = attempts.slice(1).map((t, i) => t - attempts[i]!)
        return { attempts, gaps, context }
      })

    it.scoped("spaced 200 ms: one attempt every 200 ms, no busy loop", () =>
      Effect.gen(function*() {
        // 1.5 s at one attempt per 200 ms (plus the time an attempt takes): about 8
        const { attempts, context, gaps } = yield* outage(Schedule.spaced("200 millis"), 1_500)
        assert.isAtLeast(attempts.length, 5, context)
        assert.isAtMost(attempts.length, 9, context)
        assert.isTrue(gaps.every((gap) => gap >= 190), context)
        assert.isTrue(gaps.every((gap) => gap <= 600), context)
      }))

    it.scoped("exponential 50 ms x2: the gaps double", () =>
      Effect.gen(function*() {
        // delays 50, 100, 200, 400, 800: attempts at about 0, 50, 150, 350, 750, (1550)
        const { attempts, context, gaps } = yield* outage(Schedule.exponential("50 millis", 2), 1_700)
        assert.isAtLeast(attempts.length, 5, context)
        assert.isAtMost(attempts.length, 7, context)
        gaps.slice(0, 4).forEach((gap, i) => {
          const expected = 50 * 2 ** i
          assert.isAtLeast(gap, expected - 10, context)
          assert.isAtMost(gap, expected + 300, context)
        })
      }))

    it.scoped("the default schedule (exponential from 100 ms, jittered) backs off too", () =>
      Effect.gen(function*() {
        // delays about 100, 200, 400, 800 (each ±20%): attempts at about 0, 100, 300, 700, 1500
        const { attempts, context, gaps } = yield* outage(undefined, 1_700)
        assert.isAtLeast(attempts.length, 3, context)
        assert.isAtMost(attempts.length, 6, context)
        assert.isTrue(gaps.every((gap) => gap >= 75), context)
        // growing: each gap is longer than the one before
        assert.isTrue(gaps.slice(1).every((gap, i) => gap > gaps[i]!), context)
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("health check", () => {
    it.scoped("on checkout: a SIGSTOPped idle backend is caught by the ping; the caller gets a good connection", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "health-checkout"
        const pool = yield* PrivateServer.makePool(
          configFor(server, app, { healthCheck: { idleThreshold: 0, timeout: "300 millis" } })
        )
        const frozen = yield* backendPid(pool)
        yield* stopBackend(frozen)
        const { exit, millis } = yield* timedExit(backendPid(pool))
        const pid = valueOf(exit)
        assert.notStrictEqual(pid, frozen)
        // the ping waited its timeout, then a new connection was opened: quick, and no error for the caller
        assert.isAtLeast(millis, 250)
        assert.isBelow(millis, 3_000)
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.closedByReason.broken, stats.created, stats.inUse], [1, 2, 0])
        // a scoped checkout gets the good one too
        const again = yield* Effect.scoped(Effect.map(pool.connection, (conn) => conn.backendPid))
        assert.strictEqual(again, pid)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("on an interval: maintenance pings idle connections and replaces a dead one", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "health-interval"
        const pool = yield* PrivateServer.makePool(configFor(server, app, {
          minConnections: 1,
          maintenanceInterval: "100 millis",
          healthCheck: { idleThreshold: "1 hour", interval: "200 millis", timeout: "300 millis" }
        }))
        const [idle] = yield* eventually(server.backends(app), (rows) => rows.length === 1)
        yield* stopBackend(idle!.pid)
        // nobody checks a connection out: maintenance finds the dead one, closes it, opens a new one
        yield* eventually(pool.stats, (s) => s.closedByReason.broken === 1 && s.idle === 1, { attempts: 120 })
        // no ping on checkout (idleThreshold 1 hour), so the connection handed out must be the new one
        const pid = yield* backendPid(pool)
        assert.notStrictEqual(pid, idle!.pid)
        assert.deepStrictEqual(errors.describe(), [])
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("interrupting select pg_sleep(30)", () => {
    const noActiveBackend = (server: PrivateServer.PrivateServer, app: string) =>
      eventually(server.backends(app), (rows) => rows.every((row) => row.state !== "active"), {
        attempts: 60,
        interval: "50 millis"
      })

    it.scoped("under PgPool.query: no active backend within 2 s; the connection is reused", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "interrupt-query"
        const pool = yield* PrivateServer.makePool(configFor(server, app))
        const pid = yield* backendPid(pool)
        const running = yield* Effect.fork(pool.query("select pg_sleep(30)"))
        yield* eventually(server.backends(app), (rows) => rows.some((row) => row.state === "active"))
        const interruptedAt = yield* now
        yield* Fiber.interrupt(running)
        yield* noActiveBackend(server, app)
        assert.isBelow((yield* now) - interruptedAt, 2_000)
        // the pool keeps working, on the same connection: it came back once the cancel had settled
        assert.strictEqual(yield* backendPid(pool), pid)
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.closed, stats.inUse, stats.idle], [0, 0, 1])
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("on a scoped connection: no active backend within 2 s; the pool keeps working", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "interrupt-connection"
        const pool = yield* PrivateServer.makePool(configFor(server, app))
        const running = yield* Effect.fork(
          Effect.scoped(Effect.flatMap(pool.connection, (conn) => conn.query("select pg_sleep(30)")))
        )
        yield* eventually(server.backends(app), (rows) => rows.some((row) => row.state === "active"))
        const interruptedAt = yield* now
        yield* Fiber.interrupt(running)
        yield* noActiveBackend(server, app)
        assert.isBelow((yield* now) - interruptedAt, 2_000)
        assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.inUse, stats.waiting], [0, 0])
        assert.deepStrictEqual(errors.describe(), [])
      }))
  })

  // -------------------------------------------------------------------------------------------------------
  describe("graceful shutdown", () => {
    /** Builds `PgPool.layer` into a scope of its own, to close it in the middle of the test. */
    const buildPool = (config: PgPool.Config) =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
        const context = yield* Layer.buildWithScope(PgPool.layer(config), scope)
        return { scope, pool: Context.get(context, PgPool.PgPool) }
      })

    /** Checks a connection out in a fiber and holds it until `release` completes; then runs `select 1`. */
    const holdConnection = (pool: PgPool.PgPool, release: Deferred.Deferred<void>) =>
      Effect.gen(function*() {
        const checkedOut = yield* Deferred.make<PgPool.PooledConnection>()
        const fiber = yield* Effect.forkScoped(Effect.scoped(Effect.gen(function*() {
          const conn = yield* pool.connection
          yield* Deferred.succeed(checkedOut, conn)
          yield* Deferred.await(release)
          return yield* conn.query("select 1 as one")
        })))
        return { fiber, conn: yield* Deferred.await(checkedOut) }
      })

    const assertClosed = (pool: PgPool.PgPool) =>
      Effect.gen(function*() {
        const query: PoolError | QueryError = failureOf(yield* Effect.exit(pool.query("select 1")))
        assert.strictEqual(query._tag, "PoolClosedError")
        const checkout = failureOf(yield* Effect.exit(Effect.scoped(pool.connection)))
        assert.strictEqual(checkout._tag, "PoolClosedError")
        const pinned = failureOf(yield* Effect.exit(pool.withConnection(Effect.void)))
        assert.strictEqual(pinned._tag, "PoolClosedError")
      })

    it.scoped("closing waits for a checked-out connection; returned in time, the close is clean", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "drain-returned"
        const { pool, scope } = yield* buildPool(
          configFor(server, app, { minConnections: 2, drainTimeout: "10 seconds" })
        )
        const release = yield* Deferred.make<void>()
        const held = yield* holdConnection(pool, release)
        const closing = yield* Effect.fork(timedExit(Scope.close(scope, Exit.void)))
        // new calls fail at once ...
        yield* eventually(Effect.exit(pool.query("select 1")), (exit) => Exit.isFailure(exit))
        yield* assertClosed(pool)
        // ... while the close waits for the borrower
        assert.isTrue(Option.isNone(yield* Fiber.join(closing).pipe(Effect.timeoutOption("300 millis"))))
        // the idle connection is already closed, the borrowed one is still there
        yield* eventually(server.backends(app), (rows) => rows.length === 1 && rows[0]!.pid === held.conn.backendPid)
        // the borrower can still use it, and gives it back
        const releasedAt = yield* now
        yield* Deferred.succeed(release, undefined)
        assert.deepStrictEqual(yield* Fiber.join(held.fiber), [{ one: 1 }])
        const closed = yield* Fiber.join(closing)
        assert.isTrue(Exit.isSuccess(closed.exit))
        // the close finished as soon as the connection came back, long before drainTimeout
        assert.isBelow((yield* now) - releasedAt, 2_000)
        const stats = yield* pool.stats
        assert.deepStrictEqual([stats.inUse, stats.idle, stats.size], [0, 0, 0])
        assert.strictEqual(stats.closedByReason.poolClosed, 2)
        yield* eventually(server.backends(app), (rows) => rows.length === 0)
        yield* assertClosed(pool)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a connection not returned is closed after drainTimeout", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "drain-timeout"
        const { pool, scope } = yield* buildPool(configFor(server, app, { drainTimeout: "1 second" }))
        const never = yield* Deferred.make<void>()
        const held = yield* holdConnection(pool, never)
        const { exit, millis } = yield* timedExit(Scope.close(scope, Exit.void))
        assert.isTrue(Exit.isSuccess(exit))
        assert.isAtLeast(millis, 900)
        assert.isBelow(millis, 1_000 + 2_500)
        // the borrowed connection was closed under its borrower
        yield* eventually(server.backends(app), (rows) => rows.length === 0)
        const error = failureOf(yield* Effect.exit(held.conn.query("select 1")))
        assert.strictEqual(error._tag, "ConnectionError")
        yield* assertClosed(pool)
        yield* Fiber.interrupt(held.fiber)
        assert.strictEqual((yield* pool.stats).inUse, 0)
        assert.deepStrictEqual(errors.describe(), [])
      }))

    it.scoped("a close interrupted while it waits for a borrower closes the borrowed connection at once", () =>
      Effect.gen(function*() {
        const server = yield* BackendServer
        const errors = yield* watchProcessErrors
        const app = "drain-interrupted"
        const { pool, scope } = yield* buildPool(configFor(server, app, { drainTimeout: "1 minute" }))
        const never = yield* Deferred.make<void>()
        const held = yield* holdConnection(pool, never)
        // the fiber closing the pool (an application shutting down) waits for the borrower ...
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* eventually(Effect.exit(pool.query("select 1")), (exit) => Exit.isFailure(exit))
        // ... and is interrupted meanwhile (a second signal, an outer timeout): the interruption reaches the
        // wait even though a finalizer runs uninterruptibly, and the pool's background fibers end with it
        yield* Fiber.interrupt(closing)
        yield* eventually(server.backends(app), (rows) => rows.length === 0)
        const error = failureOf(yield* Effect.exit(held.conn.query("select 1")))
        assert.strictEqual(error._tag, "ConnectionError")
        yield* Fiber.interrupt(held.fiber)
        assert.strictEqual((yield* pool.stats).inUse, 0)
        assert.deepStrictEqual(errors.describe(), [])
      }))
  })
})
