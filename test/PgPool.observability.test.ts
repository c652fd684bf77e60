import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, HashSet, Layer, Logger, LogLevel, Metric, MetricState, Option, Redacted, TestClock } from "effect"
import * as PgPool from "../src/PgPool.js"
import { backends, eventually, testConfig } from "./support/db.js"

interface Captured {
  readonly level: string
  readonly message: string
  readonly annotations: Record<string, unknown>
}

/** A logger that keeps every entry, so tests can read what the pool logged. */
const capture = () => {
  const entries: Array<Captured> = []
  const logger = Logger.make<unknown, void>(({ annotations, logLevel, message }) => {
    const record: Record<string, unknown> = {}
    for (const [key, value] of annotations) record[key] = value
    entries.push({
      level: logLevel.label,
      message: (Array.isArray(message) ? message : [message]).map(String).join(" "),
      annotations: record
    })
  })
  const layer = Layer.merge(Logger.replace(Logger.defaultLogger, logger), Logger.minimumLogLevel(LogLevel.Debug))
  return { entries, layer }
}

const poolLayer = (config: PgPool.Config, logs?: Layer.Layer<never>) =>
  logs === undefined
    ? PgPool.layer(testConfig(config))
    : Layer.provide(PgPool.layer(testConfig(config)), logs)

/** The state of one of the pool's metrics, for this pool's name (and extra tags). */
const metricState = (name: string, pool: string, tags: Record<string, string> = {}) =>
  Effect.map(Metric.snapshot, (pairs) => {
    for (const pair of pairs) {
      if (pair.metricKey.name !== name) continue
      const labels = new Map(pair.metricKey.tags.map((t) => [t.key, t.value]))
      if (labels.get("db.client.connection.pool.name") !== pool) continue
      if (Object.entries(tags).every(([k, v]) => labels.get(k) === v)) return Option.some(pair.metricState)
    }
    return Option.none()
  })

const histogramCount = (name: string, pool: string) =>
  Effect.map(metricState(name, pool), (state) =>
    Option.match(state, {
      onNone: () => 0,
      onSome: (s) => MetricState.isHistogramState(s) ? s.count : -1
    }))

const gaugeValue = (name: string, pool: string, tags: Record<string, string> = {}) =>
  Effect.map(metricState(name, pool, tags), (state) =>
    Option.match(state, {
      onNone: () => -1,
      onSome: (s) => MetricState.isGaugeState(s) ? Number(s.value) : -2
    }))

const counterValue = (name: string, pool: string) =>
  Effect.map(metricState(name, pool), (state) =>
    Option.match(state, {
      onNone: () => 0,
      onSome: (s) => MetricState.isCounterState(s) ? Number(s.count) : -1
    }))

const password = () => /:([^:@/]*)@/.exec(Redacted.value(testConfig().url as Redacted.Redacted))![1]!

describe("PgPool observability", () => {
  it.effect("logs connections opened and closed with the reason, and never the password", () => {
    const { entries, layer } = capture()
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.query("select 1")
      yield* PgPool.query("select 1")
      const opened = entries.filter((e) => e.message === "connection opened")
      assert.isAtLeast(opened.length, 2)
      yield* eventually(Effect.sync(() => entries.filter((e) => e.message === "connection closed").length), (n) => n >= 1)
      assert.isTrue(entries.some((e) => e.message === "connection closed" && e.annotations.reason === "maxUsage"))
      assert.isNumber(opened[0]!.annotations.backendPid)
      const secret = password()
      for (const entry of entries) assert.notInclude(JSON.stringify(entry), secret)
    }).pipe(Effect.provide(poolLayer({ maxUsage: 2, name: "logs-pool" }, layer)))
  })

  it.effect("logs limits that were hit", () => {
    const { entries, layer } = capture()
    return Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))))
      yield* eventually(PgPool.stats, (s) => s.inUse === 1)
      const error = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(error._tag, "PoolExhaustedError")
      const warning = entries.find((e) => e.level === "WARN" && e.annotations.error === "PoolExhaustedError")
      assert.isDefined(warning)
      assert.include(warning!.message, "maxConnections")
      yield* Deferred.succeed(release, undefined)
    }).pipe(Effect.provide(poolLayer({ maxConnections: 1, blocking: false }, layer)))
  })

  it.effect("leakDetectionThreshold logs a warning naming the span where the connection was checked out", () => {
    const { entries, layer } = capture()
    return Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(
        Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))).pipe(
          Effect.withSpan("handle-order-request")
        )
      )
      yield* eventually(PgPool.stats, (s) => s.inUse === 1)
      yield* TestClock.adjust("1 second")
      assert.isFalse(entries.some((e) => e.message.includes("possible connection leak")))
      yield* TestClock.adjust("2 seconds")
      const leak = yield* eventually(
        Effect.sync(() => entries.find((e) => e.message.includes("possible connection leak"))),
        (found) => found !== undefined
      )
      assert.include(leak!.message, "handle-order-request")
      assert.include(String(leak!.annotations.checkedOutAt), "connection checked out here")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(fiber)
      const before = entries.length
      yield* Effect.scoped(PgPool.connection)
      yield* TestClock.adjust("10 seconds")
      assert.isFalse(entries.slice(before).some((e) => e.message.includes("possible connection leak")))
    }).pipe(Effect.provide(poolLayer({ leakDetectionThreshold: "2 seconds" }, layer)))
  })

  it.effect("metrics: connection counts by state, wait, use and create times, timeouts", () =>
    Effect.gen(function*() {
      const pool = "metrics-pool"
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))))
      yield* eventually(PgPool.stats, (s) => s.inUse === 1)
      assert.strictEqual(yield* gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "used" }), 1)
      assert.strictEqual(yield* gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "idle" }), 1)
      assert.strictEqual(yield* gaugeValue("db.client.connection.max", pool), 2)
      const waiter = yield* Effect.fork(PgPool.query("select 1"))
      const other = yield* Effect.fork(PgPool.query("select 1"))
      yield* Fiber.join(waiter)
      yield* Fiber.join(other)
      const blocked = yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Effect.never)))
      yield* eventually(PgPool.stats, (s) => s.inUse === 2)
      const timedOut = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
      yield* eventually(PgPool.stats, (s) => s.waiting === 1)
      assert.strictEqual(yield* gaugeValue("db.client.connection.pending_requests", pool), 1)
      yield* TestClock.adjust("31 seconds")
      const error = yield* Fiber.join(timedOut)
      assert.strictEqual(error._tag, "PoolExhaustedError")
      assert.strictEqual(yield* counterValue("db.client.connection.timeouts", pool), 1)
      yield* Fiber.interrupt(blocked)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const stats = yield* PgPool.stats
      assert.strictEqual(yield* histogramCount("db.client.connection.create_time", pool), stats.created)
      assert.strictEqual(yield* histogramCount("db.client.connection.wait_time", pool), stats.acquired)
      assert.strictEqual(yield* histogramCount("db.client.connection.use_time", pool), stats.acquired)
      const names = HashSet.fromIterable((yield* Metric.snapshot).map((pair) => pair.metricKey.name))
      for (const name of ["count", "max", "idle.max", "idle.min", "pending_requests", "timeouts", "create_time", "wait_time", "use_time"]) {
        assert.isTrue(HashSet.has(names, `db.client.connection.${name}`), name)
      }
    }).pipe(Effect.provide(poolLayer({ name: "metrics-pool", maxConnections: 2, minConnections: 2 }))))

  it.effect("gauges follow every change of the pool, without a stats call", () =>
    Effect.gen(function*() {
      const pool = "gauges-pool"
      const used = gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "used" })
      const idle = gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "idle" })
      const pending = gaugeValue("db.client.connection.pending_requests", pool)
      assert.deepStrictEqual([yield* used, yield* idle, yield* pending], [0, 1, 0])
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))))
      yield* eventually(used, (n) => n === 1)
      assert.strictEqual(yield* idle, 0)
      const waiter = yield* Effect.fork(PgPool.query("select 1"))
      yield* eventually(pending, (n) => n === 1)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(waiter)
      assert.deepStrictEqual([yield* used, yield* idle, yield* pending], [0, 1, 0])
    }).pipe(Effect.provide(poolLayer({ name: "gauges-pool", maxConnections: 1 }))))

  it.effect("connections opened and closed are logged at Info level, seen by a default logger", () => {
    const entries: Array<{ readonly level: string; readonly message: string }> = []
    const logger = Logger.make<unknown, void>(({ logLevel, message }) => {
      entries.push({ level: logLevel.label, message: (Array.isArray(message) ? message : [message]).map(String).join(" ") })
    })
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.query("select 1")
      yield* eventually(Effect.sync(() => entries.filter((e) => e.message === "connection closed").length), (n) => n >= 1)
      assert.isTrue(entries.some((e) => e.level === "INFO" && e.message === "connection opened"))
      assert.isTrue(entries.some((e) => e.level === "INFO" && e.message === "connection closed"))
    }).pipe(Effect.provide(poolLayer({ maxUsage: 1 }, Logger.replace(Logger.defaultLogger, logger))))
  })

  it.effect("statementTimeout is the server's statement_timeout", () =>
    Effect.gen(function*() {
      const [row] = yield* PgPool.query("select current_setting('statement_timeout') as st")
      assert.deepStrictEqual(row, { st: "150ms" })
      const error = yield* Effect.flip(PgPool.query("select pg_sleep(5)"))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "57014")
      assert.strictEqual((yield* PgPool.stats).size, 1)
    }).pipe(Effect.provide(poolLayer({ statementTimeout: "150 millis" }))))

  it.live("queryTimeout cancels the statement on the server and keeps the connection", () =>
    Effect.gen(function*() {
      const pid = Number((yield* PgPool.query("select pg_backend_pid() as pid"))[0]!.pid)
      const started = Date.now()
      const error = yield* Effect.flip(PgPool.query("select pg_sleep(10)"))
      assert.isBelow(Date.now() - started, 2000)
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "57014")
      const rows = yield* backends()
      assert.isTrue(rows.every((row) => row.state !== "active"))
      assert.strictEqual(Number((yield* PgPool.query("select pg_backend_pid() as pid"))[0]!.pid), pid)
      const scoped = yield* Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => Effect.flip(conn.query("select pg_sleep(10)"))))
      assert.strictEqual(scoped._tag, "QueryError")
    }).pipe(Effect.provide(poolLayer({ queryTimeout: "200 millis" }))))
})
