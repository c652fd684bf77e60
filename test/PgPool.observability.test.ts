import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import {
  type Context,
  Deferred,
  Effect,
  Exit,
  Fiber,
  HashSet,
  Layer,
  Logger,
  LogLevel,
  Metric,
  Option,
  Redacted,
  Schedule,
  TestClock,
  Tracer
} from "effect"
import * as net from "node:net"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import * as Transaction from "../src/Transaction.js"
import { backends, eventually, testConfig, testDatabase, testServer } from "./support/db.js"
import { hold } from "./support/fake.js"
import { counterValue, gaugeValue, histogramCount } from "./support/metrics.js"

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
      yield* eventually(
        Effect.sync(() => entries.filter((e) => e.message === "connection closed").length),
        (n) => n >= 1
      )
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
      assert.strictEqual(leak!.level, "WARN", "a possible leak is a problem: a Warning")
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
      assert.strictEqual(
        yield* gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "used" }),
        1
      )
      assert.strictEqual(
        yield* gaugeValue("db.client.connection.count", pool, { "db.client.connection.state": "idle" }),
        1
      )
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
      for (
        const name of [
          "count",
          "max",
          "idle.max",
          "idle.min",
          "pending_requests",
          "timeouts",
          "create_time",
          "wait_time",
          "use_time"
        ]
      ) {
        assert.isTrue(HashSet.has(names, `db.client.connection.${name}`), name)
      }
    }).pipe(Effect.provide(poolLayer({ name: "metrics-pool", maxConnections: 2, minConnections: 2 }))))

  it.effect("metrics: false records none of the pool's metrics, and the pool serves as before", () =>
    Effect.gen(function*() {
      const pool = "unmetered-pool"
      const held = yield* hold()
      const timedOut = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
      yield* eventually(PgPool.stats, (s) => s.waiting === 1)
      yield* TestClock.adjust("31 seconds")
      assert.strictEqual((yield* Fiber.join(timedOut))._tag, "PoolExhaustedError")
      yield* held.release
      assert.deepStrictEqual(yield* PgPool.query("select 1 as one"), [{ one: 1 }])
      const stats = yield* PgPool.stats
      assert.isAtLeast(stats.acquired, 2)
      assert.strictEqual(stats.timeouts, 1)
      // not one metric carries this pool's name: no gauge, counter or histogram was made for it
      const tagged = (yield* Metric.snapshot).filter((pair) =>
        pair.metricKey.tags.some((t) => t.key === "db.client.connection.pool.name" && t.value === pool)
      )
      assert.deepStrictEqual(tagged.map((pair) => pair.metricKey.name), [])
    }).pipe(Effect.provide(poolLayer({ name: "unmetered-pool", maxConnections: 1, metrics: false }))))

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

  it.effect("connections opened and closed in normal operation are Debug, with the pool, host, port and backend", () => {
    const { entries, layer } = capture()
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.query("select 1")
      yield* eventually(
        Effect.sync(() => entries.filter((e) => e.message === "connection closed").length),
        (n) => n >= 1
      )
      const loud = entries.filter((e) => e.level !== "DEBUG" && e.level !== "TRACE")
      assert.deepStrictEqual(loud, [], "nothing at Info or above in normal operation")
      const opened = entries.filter((e) => e.message === "connection opened")
      const closed = entries.filter((e) => e.message === "connection closed")
      assert.isAtLeast(opened.length, 1)
      for (const entry of [...opened, ...closed]) {
        assert.strictEqual(entry.level, "DEBUG", entry.message)
        assert.isString(entry.annotations.host, entry.message)
        assert.isNumber(entry.annotations.port, entry.message)
        assert.isNumber(entry.annotations.backendPid, entry.message)
        assert.strictEqual(entry.annotations.pool, "levels-pool", entry.message)
      }
    }).pipe(Effect.provide(poolLayer({ maxUsage: 1, name: "levels-pool" }, layer)))
  })

  it.live("a connect failure is a Warning that names the host and port", () => {
    const { entries, layer } = capture()
    return Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(poolLayer({
        host: "127.0.0.1",
        port: 1,
        url: undefined,
        connectTimeout: "300 millis",
        reconnect: Schedule.spaced("50 millis")
      }, layer)))
      assert.strictEqual(error._tag, "ConnectionError")
      const warning = entries.find((e) => e.level === "WARN" && e.message.includes("connect failed"))
      assert.isDefined(warning, JSON.stringify(entries.map((e) => e.message)))
      assert.strictEqual(warning!.annotations.host, "127.0.0.1")
      assert.strictEqual(warning!.annotations.port, 1)
      // with its attempt count
      assert.include(warning!.message, "(attempt 1)")
      assert.strictEqual(warning!.annotations.attempt, 1)
      // a refused connect has no SQLSTATE: no empty code annotation
      assert.notProperty(warning!.annotations, "code")
      // the probes of the host that failed again after it: Debug lines, counting on (no Warning each)
      const probes = entries.filter((e) => e.message.includes("still down"))
      assert.isAbove(probes.length, 0, JSON.stringify(entries.map((e) => e.message)))
      assert.isTrue(probes.every((e) => e.level === "DEBUG"))
      assert.deepStrictEqual(
        probes.map((e) => e.annotations.attempt),
        probes.map((_, i) => i + 2)
      )
      // one Warning per failed connect, not a second one from the start-up for the same failure
      const warnings = entries.filter((e) => e.level === "WARN").map((e) => e.message)
      assert.isFalse(
        warnings.some((message) => message.startsWith("connect failed at start")),
        JSON.stringify(warnings)
      )
    }).pipe(Effect.scoped)
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
      const scoped = yield* Effect.scoped(
        Effect.flatMap(PgPool.connection, (conn) => Effect.flip(conn.query("select pg_sleep(10)")))
      )
      assert.strictEqual(scoped._tag, "QueryError")
    }).pipe(Effect.provide(poolLayer({ queryTimeout: "200 millis" }))))
})

/** A span kept by the recording tracer: what the pool put on it, its parent, its events and its exit. */
class RecordedSpan implements Tracer.Span {
  readonly _tag = "Span"
  readonly traceId = "trace"
  readonly sampled = true
  status: Tracer.SpanStatus
  readonly attributes = new Map<string, unknown>()
  readonly events: Array<string> = []
  exit: Exit.Exit<unknown, unknown> | undefined = undefined
  constructor(
    readonly name: string,
    readonly spanId: string,
    readonly parent: Option.Option<Tracer.AnySpan>,
    readonly context: Context.Context<never>,
    readonly links: ReadonlyArray<Tracer.SpanLink>,
    startTime: bigint,
    readonly kind: Tracer.SpanKind
  ) {
    this.status = { _tag: "Started", startTime }
  }
  end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    this.status = { _tag: "Ended", startTime: this.status.startTime, endTime, exit }
    this.exit = exit
  }
  attribute(key: string, value: unknown): void {
    this.attributes.set(key, value)
  }
  event(name: string): void {
    this.events.push(name)
  }
  addLinks(): void {}
}

/** A tracer that keeps every span it makes (an installed tracer, as @effect/opentelemetry's would be). */
const recording = () => {
  const spans: Array<RecordedSpan> = []
  const tracer = Tracer.make({
    span: (name, parent, context, links, startTime, kind) => {
      const span = new RecordedSpan(name, `span-${spans.length + 1}`, parent, context, links, startTime, kind)
      spans.push(span)
      return span
    },
    context: (f) => f()
  })
  const named = (name: string) => spans.filter((span) => span.name === name)
  return { spans, tracer, named }
}

/** A port on which nothing listens (connects are refused at once). */
const closedPort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const parentOf = (span: RecordedSpan): string | undefined =>
  Option.getOrUndefined(Option.map(span.parent, (p) => p.spanId))

describe("spans", () => {
  const server = () => {
    const { host, port } = testServer()
    return { host, port }
  }

  it.effect("PgPool.query: a client span, child of the caller's, with OpenTelemetry's db attributes and no password", () => {
    const { named, spans, tracer } = recording()
    return Effect.gen(function*() {
      yield* PgPool.query("select $1::int as x", [1]).pipe(Effect.withSpan("request"), Effect.withTracer(tracer))
      const [request] = named("request")
      const [query] = named("PgPool.query")
      assert.isDefined(query)
      assert.strictEqual(parentOf(query!), request!.spanId)
      assert.strictEqual(query!.kind, "client")
      const a = query!.attributes
      assert.strictEqual(a.get("db.system.name"), "postgresql")
      assert.strictEqual(a.get("db.system"), "postgresql")
      assert.strictEqual(a.get("db.namespace"), testDatabase())
      assert.strictEqual(a.get("server.address"), server().host)
      assert.strictEqual(a.get("server.port"), server().port)
      assert.strictEqual(a.get("db.client.connection.pool.name"), "span-pool")
      assert.strictEqual(a.get("db.query.text"), "select $1::int as x")
      assert.strictEqual(a.get("db.operation.name"), "SELECT")
      assert.strictEqual(a.get("db.response.returned_rows"), 1)
      assert.strictEqual(a.get("db.client.connection.wait_time"), 0)
      assert.isTrue(query!.exit !== undefined && Exit.isSuccess(query!.exit))
      const secret = password()
      for (const span of spans) assert.notInclude(JSON.stringify([...span.attributes]), secret)
    }).pipe(Effect.provide(poolLayer({ name: "span-pool" })))
  })

  it.effect("a failed statement's span ends with the failure, its SQLSTATE and error type", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      const error = yield* Effect.flip(PgPool.query("select * from no_such_table")).pipe(Effect.withTracer(tracer))
      assert.strictEqual(error._tag, "QueryError")
      const [query] = named("PgPool.query")
      assert.isTrue(query!.exit !== undefined && Exit.isFailure(query!.exit))
      assert.strictEqual(query!.attributes.get("db.response.status_code"), "42P01")
      assert.strictEqual(query!.attributes.get("error.type"), "QueryError")
    }).pipe(Effect.provide(poolLayer({})))
  })

  it.effect("the wait for a connection is on the span (db.client.connection.wait_time, ms)", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))))
      yield* eventually(PgPool.stats, (s) => s.inUse === 1)
      const waiter = yield* Effect.fork(PgPool.query("select 1").pipe(Effect.withTracer(tracer)))
      const pinned = yield* Effect.fork(PgPool.withConnection(Effect.void).pipe(Effect.withTracer(tracer)))
      yield* eventually(PgPool.stats, (s) => s.waiting === 2)
      yield* TestClock.adjust("40 millis")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(waiter)
      yield* Fiber.join(pinned)
      assert.strictEqual(named("PgPool.query")[0]!.attributes.get("db.client.connection.wait_time"), 40)
      assert.isAtLeast(
        named("PgPool.withConnection")[0]!.attributes.get("db.client.connection.wait_time") as number,
        40
      )
    }).pipe(Effect.provide(poolLayer({ maxConnections: 1 })))
  })

  it.effect("statements that waited in the queue and then rode a busy connection report that wait too", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(PgPool.connection, Deferred.await(release))))
      yield* eventually(PgPool.stats, (s) => s.inUse === 1)
      const waiters = yield* Effect.forEach(
        [1, 2, 3],
        (i) => Effect.fork(PgPool.query("select $1::int as i", [i]).pipe(Effect.withTracer(tracer)))
      )
      yield* eventually(PgPool.stats, (s) => s.waiting === 3)
      yield* TestClock.adjust("40 millis")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      assert.deepStrictEqual(yield* Effect.forEach(waiters, Fiber.join), [[{ i: 1 }], [{ i: 2 }], [{ i: 3 }]])
      // the first took the connection, the two behind it rode it (pipelining): each waited 40 ms
      assert.strictEqual((yield* PgPool.stats).pipelined, 2)
      assert.deepStrictEqual(
        named("PgPool.query").map((span) => span.attributes.get("db.client.connection.wait_time")),
        [40, 40, 40]
      )
    }).pipe(Effect.provide(poolLayer({ maxConnections: 1 })))
  })

  it.effect("PgPool.withConnection: its span is the parent of the statements inside, which did not check out", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      const inside = yield* PgPool.withConnection(
        Effect.zipRight(
          Effect.zipRight(PgPool.query("select 1"), PgPool.query("select 2")),
          Effect.currentSpan
        )
      ).pipe(Effect.withSpan("request"), Effect.withTracer(tracer))
      const [request] = named("request")
      const [pinned] = named("PgPool.withConnection")
      assert.strictEqual(parentOf(pinned!), request!.spanId)
      assert.strictEqual(inside.spanId, pinned!.spanId)
      assert.strictEqual(pinned!.attributes.get("db.client.connection.wait_time"), 0)
      assert.strictEqual(pinned!.attributes.get("db.namespace"), testDatabase())
      const queries = named("PgPool.query")
      assert.strictEqual(queries.length, 2)
      for (const query of queries) {
        assert.strictEqual(parentOf(query), pinned!.spanId)
        assert.isFalse(query.attributes.has("db.client.connection.wait_time"))
      }
      // after the body, failed or interrupted, the caller's span is the current one again
      const after = yield* Effect.gen(function*() {
        yield* Effect.flip(PgPool.withConnection(Effect.fail("body failure")))
        yield* Effect.exit(PgPool.withConnection(Effect.interrupt))
        return [yield* Effect.currentSpan, named("after")[0]!] as const
      }).pipe(Effect.withSpan("after"), Effect.withTracer(tracer))
      assert.strictEqual(after[0].spanId, after[1].spanId)
      assert.isTrue(Exit.isFailure(named("PgPool.withConnection")[1]!.exit!))
    }).pipe(Effect.provide(poolLayer({})))
  })

  it.effect("Transaction.withTransaction: a span with commit, savepoint and rollback events, parent of the body's spans", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      yield* Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("select 1")
        yield* Transaction.withTransaction(PgPool.query("select 2"))
        yield* Effect.flip(Transaction.withTransaction(Effect.fail("inner failure")))
      })).pipe(Effect.withSpan("request"), Effect.withTracer(tracer))
      yield* Effect.flip(Transaction.withTransaction(Effect.fail("outer failure"))).pipe(Effect.withTracer(tracer))
      const [request] = named("request")
      const [outer, savepoint, failedSavepoint, failed] = named("Transaction.withTransaction")
      assert.strictEqual(parentOf(outer!), request!.spanId)
      assert.strictEqual(outer!.kind, "client")
      assert.deepStrictEqual(outer!.events, ["db.transaction.commit"])
      assert.strictEqual(outer!.attributes.get("db.system.name"), "postgresql")
      assert.strictEqual(outer!.attributes.get("db.client.connection.wait_time"), 0)
      assert.strictEqual(parentOf(savepoint!), outer!.spanId)
      assert.deepStrictEqual(savepoint!.events, ["db.transaction.savepoint"])
      assert.deepStrictEqual(failedSavepoint!.events, ["db.transaction.rollback"])
      assert.isTrue(Exit.isFailure(failedSavepoint!.exit!))
      assert.deepStrictEqual(failed!.events, ["db.transaction.rollback"])
      assert.isTrue(Exit.isFailure(failed!.exit!))
      const [first, second] = named("PgPool.query")
      assert.strictEqual(parentOf(first!), outer!.spanId)
      assert.strictEqual(parentOf(second!), savepoint!.spanId)
    }).pipe(Effect.provide(poolLayer({})))
  })

  it.effect("a failed transaction's span says why: a COMMIT answered with ROLLBACK, a server's error in the body", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      // the body swallows a failed statement: the server answers the COMMIT with ROLLBACK (40000)
      const refused = yield* Effect.flip(
        Transaction.withTransaction(Effect.ignore(PgPool.query("select 1/0"))).pipe(Effect.withTracer(tracer))
      )
      assert.strictEqual(refused._tag === "QueryError" ? refused.code : refused._tag, "40000")
      const failed = yield* Effect.flip(
        Transaction.withTransaction(PgPool.query("select 1/0")).pipe(Effect.withTracer(tracer))
      )
      assert.strictEqual(failed._tag === "QueryError" ? failed.code : failed._tag, "22012")
      const [commitRefused, bodyFailed] = named("Transaction.withTransaction")
      assert.deepStrictEqual(commitRefused!.events, ["db.transaction.commit", "db.transaction.rollback"])
      assert.strictEqual(commitRefused!.attributes.get("error.type"), "QueryError")
      assert.strictEqual(commitRefused!.attributes.get("db.response.status_code"), "40000")
      assert.deepStrictEqual(bodyFailed!.events, ["db.transaction.rollback"])
      assert.strictEqual(bodyFailed!.attributes.get("error.type"), "QueryError")
      assert.strictEqual(bodyFailed!.attributes.get("db.response.status_code"), "22012")
    }).pipe(Effect.provide(poolLayer({})))
  })

  it.effect("sql.withTransaction: a sql.transaction span as @effect/sql-pg's, with the client's spanAttributes", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql.withTransaction(sql`select 1`).pipe(Effect.withSpan("request"), Effect.withTracer(tracer))
      const [request] = named("request")
      const [transaction] = named("sql.transaction")
      assert.isDefined(transaction)
      assert.strictEqual(parentOf(transaction!), request!.spanId)
      assert.strictEqual(transaction!.kind, "client")
      assert.deepStrictEqual(transaction!.events, ["db.transaction.commit"])
      const a = transaction!.attributes
      assert.strictEqual(a.get("db.system.name"), "postgresql")
      assert.strictEqual(a.get("db.namespace"), testDatabase())
      assert.strictEqual(a.get("server.address"), server().host)
      assert.strictEqual(a.get("server.port"), server().port)
      assert.strictEqual(a.get("app.tier"), "test")
      const [execute] = named("sql.execute")
      assert.strictEqual(parentOf(execute!), transaction!.spanId)
      assert.strictEqual(execute!.attributes.get("app.tier"), "test")
      assert.lengthOf(named("Transaction.withTransaction"), 0)
    }).pipe(
      Effect.provide(Layer.provideMerge(PgPoolSql.layerWith({ spanAttributes: { "app.tier": "test" } }), poolLayer({})))
    )
  })

  it.effect("with several hosts, the server on the span is the one the statement ran on", () => {
    const { named, tracer } = recording()
    return Effect.gen(function*() {
      const { host, password, port, user } = testServer()
      const down = yield* closedPort
      yield* PgPool.query("select 1").pipe(
        Effect.withTracer(tracer),
        Effect.provide(PgPool.layer({
          hosts: [{ host: "127.0.0.1", port: down }, { host, port }],
          user,
          password: password!,
          database: testDatabase(),
          connectTimeout: "2 seconds"
        }))
      )
      const [query] = named("PgPool.query")
      assert.strictEqual(query!.attributes.get("server.address"), host)
      assert.strictEqual(query!.attributes.get("server.port"), port)
    })
  })

  it.effect("without a tracer no span is made: the body of withConnection and of a transaction sees the caller's span", () =>
    Effect.gen(function*() {
      const [pinned, inTransaction, request] = yield* Effect.all([
        PgPool.withConnection(Effect.currentSpan),
        Transaction.withTransaction(Effect.zipLeft(Effect.currentSpan, PgPool.query("select 1"))),
        Effect.currentSpan
      ]).pipe(Effect.withSpan("request"))
      assert.strictEqual(pinned.spanId, request.spanId)
      assert.strictEqual(inTransaction.spanId, request.spanId)
    }).pipe(Effect.provide(poolLayer({}))))

  it.effect("with tracing disabled (Effect.withTracerEnabled(false)) an installed tracer gets no span from the pool", () => {
    const { spans, tracer } = recording()
    return Effect.gen(function*() {
      yield* PgPool.query("select 1")
      yield* PgPool.withConnection(PgPool.query("select 1"))
      yield* Transaction.withTransaction(PgPool.query("select 1"))
      assert.lengthOf(spans, 0)
    }).pipe(Effect.withTracerEnabled(false), Effect.withTracer(tracer), Effect.provide(poolLayer({})))
  })
})
