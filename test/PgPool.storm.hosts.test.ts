/**
 * No reconnect storm against a host that is down (issue 15, point 1), on a real primary with a real streaming
 * standby, each behind a TCP proxy that counts accepted connections (one per connect attempt).
 *
 * The primary is stopped (a fast shutdown: it refuses connections) for a measured time while writers run, then
 * started again (the same primary: no promotion; the standby reconnects to it). The connects to the stopped
 * primary must follow the `reconnect` Schedule (one probe at a time, whatever the rate of writes), the standby,
 * whose role the pool knows, must not be tried by writes at all, every write meanwhile fails fast with a
 * ConnectionError naming the primary, and writes succeed again within about one Schedule interval of the
 * primary's return.
 *
 * One replication pair for the file; each test builds its own pool and its own proxies. Waiting for a
 * condition is polling with a bound; the only sleeps pace the load or keep the primary down for a measured
 * time. The clocks are live.
 */
import { assert, layer } from "@effect/vitest"
import { Cause, Context, Effect, Either, Exit, Fiber, Layer, Schedule } from "effect"
import * as PgPool from "../src/PgPool.js"
import type { ConnectionError } from "../src/PgPoolError.js"
import { failureOf, now, timedExit } from "./support/exits.js"
import { type Outcome, poll, startLoad } from "./support/load.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Proxy from "./support/proxy.js"
import * as Replication from "./support/replication.js"

/** The reconnect Schedule of every test here: one probe a second. */
const interval = 1_000
/** How long the primary stays down. */
const outageMillis = 4_000
/** The acquire timeout of the pools: a write that waited for it would show as slow. */
const acquireTimeout = 20_000

const summary = (outcomes: ReadonlyArray<Outcome>) => {
  const byError = new Map<string, number>()
  for (const o of outcomes) byError.set(o.error ?? "ok", (byError.get(o.error ?? "ok") ?? 0) + 1)
  return JSON.stringify(Object.fromEntries(byError))
}

const startTime = (node: Replication.Node) =>
  Effect.map(node.query("select pg_postmaster_start_time()::text as t"), (rows) => String(rows[0]!.t))

/** A pool on the pair through two counting proxies (primary first), with the reconnect Schedule of the file. */
const proxiedPair = (pair: Replication.Replication, applicationName: string, extra: PgPool.Config = {}) =>
  Effect.gen(function*() {
    const primaryProxy = yield* Proxy.make({ target: { host: pair.primary.host, port: pair.primary.port } })
    const standbyProxy = yield* Proxy.make({ target: { host: pair.standby.host, port: pair.standby.port } })
    const context = yield* Layer.build(PgPool.layer(pair.config({
      hosts: [
        { host: primaryProxy.host, port: primaryProxy.port },
        { host: standbyProxy.host, port: standbyProxy.port }
      ],
      reconnect: Schedule.spaced(`${interval} millis`),
      acquireTimeout: `${acquireTimeout} millis`,
      applicationName,
      ...extra
    })))
    return {
      pool: Context.get(context, PgPool.PgPool),
      primaryProxy,
      standbyProxy,
      primaryKey: `${primaryProxy.host}:${primaryProxy.port}`
    }
  })

/**
 * The scenario of both tests: a pool on the two proxies; `workers` writers pausing `pauseMillis` between
 * writes (and one reader on the standby); the primary stopped for `outageMillis`, then started again.
 */
const outage = (applicationName: string, workers: number, pauseMillis: number) =>
  Effect.gen(function*() {
    const pair = yield* Replication.ReplicationPair
    const errors = yield* watchProcessErrors
    yield* pair.primary.query("create table if not exists storm_writes (worker int, n int)")
    const { pool, primaryKey, primaryProxy, standbyProxy } = yield* proxiedPair(pair, applicationName, {
      connectTimeout: "2 seconds"
    })
    const roleCheckInterval = 5_000 // the default

    // warm: writes succeed on the primary, reads on the standby (its read pool has its connection)
    const writers = yield* startLoad(pool, workers, {
      statement: (index, n) => ({ text: "insert into storm_writes (worker, n) values ($1, $2)", params: [index, n] }),
      pace: pauseMillis
    })
    let reads = 0
    const readFailures: Array<string> = []
    let reading = true
    const reader = yield* Effect.forkScoped(Effect.gen(function*() {
      while (reading) {
        const exit = yield* Effect.exit(pool.readOnly(pool.query("select pg_is_in_recovery() as standby")))
        if (Exit.isSuccess(exit) && exit.value[0]!.standby === true) reads++
        else readFailures.push(Exit.isSuccess(exit) ? "not on the standby" : Cause.pretty(exit.cause))
        yield* Effect.sleep("100 millis")
      }
    }))
    yield* poll(
      "writes and reads succeed before the fault",
      writers.outcomes,
      (o) => o.filter((x) => x.error === undefined).length >= 5 * workers && reads >= 2,
      10_000
    )
    assert.deepStrictEqual(readFailures, [])
    const before = yield* startTime(pair.primary)

    // the fault: the primary stops; it refuses connections
    const primaryBefore = primaryProxy.connections()
    const standbyBefore = standbyProxy.connections()
    const stopBegan = yield* now
    yield* pair.primary.stop
    const stopped = yield* now
    const refused = yield* Effect.either(pair.primary.query("select 1"))
    assert.isTrue(Either.isLeft(refused), "the stopped primary refuses connections")
    yield* Effect.sleep(`${outageMillis} millis`)
    const startBegan = yield* now
    const primaryAttempts = primaryProxy.connections() - primaryBefore
    const standbyAttempts = standbyProxy.connections() - standbyBefore
    const downMillis = startBegan - stopBegan
    const statsDown = yield* pool.stats
    const attemptTimes = primaryProxy.acceptTimes().slice(primaryBefore)

    // the primary comes back (the same one)
    yield* pair.primary.start
    const started = yield* now
    assert.notStrictEqual(yield* startTime(pair.primary), before, "the primary really restarted")
    yield* poll(
      "writes succeed again after the primary's return",
      writers.outcomes,
      (o) => o.some((x) => x.error === undefined && x.startedAt > started),
      10_000
    )
    const outcomes = yield* writers.stop
    reading = false
    yield* Fiber.join(reader)
    const firstSuccess = Math.min(
      ...outcomes.filter((o) => o.error === undefined && o.startedAt > started).map((o) => o.endedAt)
    )
    const duringOutage = outcomes.filter((o) => o.startedAt > stopped && o.endedAt < startBegan)
    const failures = outcomes.filter((o) => o.error !== undefined)
    const slowest = Math.max(...duringOutage.map((o) => o.endedAt - o.startedAt))
    const readsDuring = reads
    const context_ = {
      writes: outcomes.length,
      duringOutage: duringOutage.length,
      outageOutcomes: summary(duringOutage),
      failures: failures.length,
      slowestDuringOutage: Math.round(slowest),
      downMillis: Math.round(downMillis),
      primaryAttempts,
      attemptTimes,
      standbyAttempts,
      recoveryMillis: Math.round(firstSuccess - started),
      startMillis: Math.round(started - startBegan),
      firstFailure: failures[0]?.message,
      lastFailure: failures[failures.length - 1]?.message,
      codes: [...new Set(failures.map((o) => o.code))],
      attempts: [...new Set(failures.map((o) => o.attempts))],
      retryable: [...new Set(failures.map((o) => o.retryable))],
      hostsDown: statsDown.hosts
    }
    const described = JSON.stringify(context_)
    yield* Effect.logInfo(`${applicationName}: ${described}`)

    // every write during the outage failed fast with a ConnectionError naming the primary (no
    // PoolExhaustedError, no defect, none waited out its acquire timeout)
    assert.isAtLeast(duringOutage.length, Math.floor(outageMillis / (pauseMillis + 5)) * workers / 2, described)
    assert.isTrue(duringOutage.every((o) => o.error === "ConnectionError"), described)
    assert.isBelow(slowest, 1_000, described)
    assert.isTrue(failures.every((o) => o.error === "ConnectionError"), described)
    assert.isTrue(failures.every((o) => o.startedAt < firstSuccess), described)
    const last = duringOutage[duringOutage.length - 1]!
    assert.include(last.message, `${primaryKey} is down`, described)
    // the connects to the stopped primary follow the Schedule: about one a second (plus the first caller's)
    assert.isAtMost(primaryAttempts, Math.ceil(downMillis / interval) + 2, described)
    assert.isAtLeast(primaryAttempts, Math.floor(outageMillis / interval) - 1, described)
    const gaps = attemptTimes.slice(2).map((t, i) => t - attemptTimes[i + 1]!)
    assert.isTrue(gaps.every((gap) => gap >= interval - 50), described)
    // the standby's role is known: writes never try it; only the role checks (every 5 s) connect to it
    assert.isAtMost(standbyAttempts, Math.ceil(downMillis / roleCheckInterval) + 1, described)
    // reads went on on the standby all along
    assert.deepStrictEqual(readFailures, [], described)
    assert.isAtLeast(readsDuring, Math.floor(outageMillis / 200), described)
    // the primary's return is found by the next probe: writes succeed within about one interval
    assert.isBelow(firstSuccess - started, interval + 1_000, described)
    // nothing left behind
    const { value: stats } = yield* poll(
      "the pool is at rest",
      pool.stats,
      (s) => s.inUse === 0 && s.waiting === 0,
      5_000
    )
    const primaryStats = stats.hosts.find((h) => h.port === primaryProxy.port)!
    assert.isTrue(primaryStats.up, JSON.stringify(stats.hosts))
    assert.deepStrictEqual(errors.describe(), [])
    // the standby follows the primary again, for the next test
    yield* pair.waitForStreaming()
  }).pipe(Effect.scoped)

layer(Replication.layer(), { excludeTestServices: true, timeout: "60 seconds" })(
  "a stopped primary behind a proxy: connects follow the reconnect Schedule",
  (it) => {
    it.effect("one writer every 20 ms: about one connect a second to the stopped primary, none per write to the standby; writes back within an interval", () =>
      outage("storm-hosts-one", 1, 20))

    it.effect("20 writers, about 1,000 writes a second: the connects still follow the Schedule", () =>
      outage("storm-hosts-many", 20, 20))

    it.effect("a write while the primary is known to be down fails with a ConnectionError naming it, its failed connects and the last failure", () =>
      Effect.gen(function*() {
        const pair = yield* Replication.ReplicationPair
        const errors = yield* watchProcessErrors
        yield* pair.primary.query("create table if not exists storm_writes (worker int, n int)")
        const { pool, primaryKey, primaryProxy } = yield* proxiedPair(pair, "storm-hosts-error")
        const write = pool.query("insert into storm_writes (worker, n) values (-1, -1)")
        yield* write
        // the primary's network resets every connection: the host does not answer
        yield* primaryProxy.setMode("reset")
        // the first writes find the lost connection, then a connect fails: the host is known to be down
        const connectsBefore = primaryProxy.connections()
        const seen: Array<string> = []
        while (primaryProxy.connections() === connectsBefore && seen.length < 10) {
          const failed = failureOf(yield* Effect.exit(write))
          assert.strictEqual(failed._tag, "ConnectionError", failed.message)
          seen.push(failed.message)
        }
        assert.isAbove(primaryProxy.connections(), connectsBefore, JSON.stringify(seen))
        // the next write fails at once, from that state, without a connect
        const connectsThen = primaryProxy.connections()
        const { exit, millis } = yield* timedExit(write)
        assert.strictEqual(primaryProxy.connections(), connectsThen, "no connect for a write to a known-down host")
        const error = failureOf(exit) as ConnectionError
        const described = JSON.stringify({
          message: error.message,
          attempts: error.attempts,
          code: error.code,
          retryable: error.retryable,
          host: error.host,
          port: error.port,
          cause: String(error.cause),
          millis
        })
        yield* Effect.logInfo(`storm-hosts-error: before: ${JSON.stringify(seen)}; ${described}`)
        assert.strictEqual(error._tag, "ConnectionError", described)
        assert.isBelow(millis, 200, described)
        assert.include(error.message, `${primaryKey} is down`, described)
        assert.isDefined(error.cause, described)
        // the failed connects so far (README: "naming the host, the failed connects so far (attempts) and the
        // last failure (cause, code)")
        assert.isAtLeast(error.attempts ?? 0, 1, described)
        assert.deepStrictEqual(errors.describe(), [])
      }).pipe(Effect.scoped))
  }
)
