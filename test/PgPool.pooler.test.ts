/**
 * Behind a transaction pooler (issue 18, point 1): a real PgBouncer 1.18 (Debian's package, which has no
 * prepared statement support) in transaction mode in front of the test server, `default_pool_size` 3, many
 * clients. What the pool does is watched on the wire by a proxy between the pool and the bouncer: the named
 * statements the pool sends, and the SQLSTATEs the bouncer's server connections answer with.
 *
 * - The default configuration (`pooler: "auto"`) survives: the first sign of the pooler (a statement name of
 *   the pool's own that already exists, or vanished, on the server connection the pooler picked) turns
 *   preparation off for the whole pool with a Warning, and the statement that saw it, which did not run, is
 *   sent again: no caller fails.
 * - `pooler: "transaction"` never prepares a statement under a name, never sees a prepared-statement error,
 *   refuses `listen`, refuses the configuration that would set session state, and warns once per text of work
 *   that sets session state.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Either, Exit, Layer, Logger, LogLevel, Redacted, Stream } from "effect"
import * as net from "node:net"
import { sessionState } from "../src/internal/connection/pooler.js"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import * as Transaction from "../src/Transaction.js"
import { adminQuery, testDatabase } from "./support/db.js"
import { failureOf } from "./support/exits.js"
import * as PgBouncer from "./support/pgbouncer.js"

/** What a proxy between the pool and the bouncer saw. */
interface Wire {
  readonly port: number
  /** Named statements the pool sent (Parse or Bind naming `effect_pg_pool_...`), counted by occurrence. */
  readonly named: () => number
  /** SQLSTATEs of the ErrorResponses the bouncer sent back. */
  readonly codes: () => ReadonlyMap<string, number>
}

/** Counts occurrences of `needle` in a stream of chunks (across chunk boundaries). */
const counter = (needles: ReadonlyArray<Buffer>) => {
  const counts = needles.map(() => 0)
  let tail = Buffer.alloc(0)
  const longest = Math.max(...needles.map((n) => n.length))
  return {
    counts,
    feed: (chunk: Buffer) => {
      const buffer = Buffer.concat([tail, chunk])
      needles.forEach((needle, i) => {
        for (let at = buffer.indexOf(needle); at !== -1; at = buffer.indexOf(needle, at + 1)) {
          // a match wholly inside the kept tail was counted with the previous chunk
          if (at + needle.length > tail.length) counts[i]!++
        }
      })
      tail = buffer.subarray(Math.max(0, buffer.length - longest + 1))
    }
  }
}

const watchedCodes = ["42P05", "26000", "08P01"] as const

/** A forwarding proxy on an OS-picked port in front of `port`, counting what crosses it. */
const wire = (port: number) =>
  Effect.acquireRelease(
    Effect.async<Wire & { readonly server: net.Server }>((resume) => {
      const named: Array<ReturnType<typeof counter>> = []
      const errors: Array<ReturnType<typeof counter>> = []
      const sockets = new Set<net.Socket>()
      const server = net.createServer((client) => {
        const upstream = net.connect({ host: "127.0.0.1", port })
        sockets.add(client).add(upstream)
        const out = counter([Buffer.from("effect_pg_pool_")])
        const back = counter(watchedCodes.map((code) => Buffer.from(`C${code}\0`)))
        named.push(out)
        errors.push(back)
        client.on("error", () => {})
        upstream.on("error", () => {})
        client.on("data", (chunk: Buffer) => out.feed(chunk))
        upstream.on("data", (chunk: Buffer) => back.feed(chunk))
        client.pipe(upstream)
        upstream.pipe(client)
        client.on("close", () => upstream.destroy())
        upstream.on("close", () => client.destroy())
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address() as net.AddressInfo
        resume(Effect.succeed({
          port: address.port,
          server,
          named: () => named.reduce((sum, c) => sum + c.counts[0]!, 0),
          codes: () =>
            new Map(watchedCodes.map((code, i) => [code, errors.reduce((sum, c) => sum + c.counts[i]!, 0)] as const))
        }))
      })
      return Effect.sync(() => server.close())
    }),
    ({ server }) =>
      Effect.sync(() => {
        server.close()
      })
  )

/** Log lines at Warning and above, captured. */
const warnings = () => {
  const lines: Array<{ readonly message: string; readonly annotations: Record<string, unknown> }> = []
  const layer = Layer.merge(
    Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ annotations, logLevel, message }) => {
        if (LogLevel.lessThan(logLevel, LogLevel.Warning)) return
        const messages = Array.isArray(message) ? message : [message]
        lines.push({ message: messages.map(String).join(" "), annotations: Object.fromEntries(annotations) })
      })
    ),
    Logger.minimumLogLevel(LogLevel.All)
  )
  return { lines, layer }
}

/** 2,000 `PgPool.query` calls of 7 statement texts over `fibers` fibers; the failures by tag and code. */
const load = (pool: PgPool.PgPool, fibers: number, total = 2_000) =>
  Effect.gen(function*() {
    let next = 0
    let ok = 0
    const failures = new Map<string, number>()
    const samples: Array<string> = []
    const worker = Effect.gen(function*() {
      while (next < total) {
        const i = next++
        const n = i % 7
        const result = yield* Effect.either(pool.query(`select $1::int + ${n} as v`, [i]))
        if (Either.isRight(result) && Number(result.right[0]!.v) === i + n) {
          ok++
          continue
        }
        const key = Either.isLeft(result)
          ? `${result.left._tag} ${"code" in result.left ? result.left.code : ""}`
          : "wrong"
        failures.set(key, (failures.get(key) ?? 0) + 1)
        if (samples.length < 3 && Either.isLeft(result)) samples.push(result.left.message)
      }
    })
    yield* Effect.forEach(Array.from({ length: fibers }), () => worker, { concurrency: "unbounded", discard: true })
    return { ok, failures: Object.fromEntries(failures), samples }
  })

/** Server backends the bouncer opened to this file's database. */
const bouncerBackends = Effect.map(
  adminQuery(
    "select count(*)::int as n from pg_stat_activity where datname = $1 and backend_type = 'client backend'",
    [testDatabase()]
  ),
  (rows) => Number(rows[0]!.n)
)

const poolOn = (config: PgPool.Config, logs?: Layer.Layer<never>) =>
  Effect.map(
    Layer.build(logs === undefined ? PgPool.layer(config) : PgPool.layer(config).pipe(Layer.provide(logs))),
    (context) => Context.get(context, PgPool.PgPool)
  )

describe("behind a transaction-mode PgBouncer", () => {
  it.scopedLive("default configuration: the pooler is detected, preparation stops, no caller fails", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 3 })
      const seen = yield* wire(bouncer.port)
      const logs = warnings()
      const pool = yield* poolOn(
        bouncer.config({ host: "127.0.0.1", port: seen.port, maxConnections: 10, minConnections: 10 }),
        logs.layer
      )
      const result = yield* load(pool, 32)
      assert.deepStrictEqual(result.failures, {}, JSON.stringify(result.samples))
      assert.strictEqual(result.ok, 2_000)
      // the fault happened: the pool did prepare, and a server connection answered with a sign of the pooler
      const codes = seen.codes()
      assert.isAbove(seen.named(), 0)
      assert.isAbove(codes.get("42P05")! + codes.get("26000")!, 0, JSON.stringify([...codes]))
      // ... behind 10 client connections, at most 3 server connections: a transaction pooler
      assert.isAtMost(yield* bouncerBackends, 3)
      // one Warning, saying what to configure
      const detected = logs.lines.filter((line) => line.message.includes("a transaction pooler sits between"))
      assert.strictEqual(detected.length, 1, JSON.stringify(logs.lines))
      assert.include(detected[0]!.message, "pooler: \"transaction\"")
      assert.include(detected[0]!.message, "PGPOOL_POOLER=transaction")
      // after the detection, nothing is prepared any more: a second load sends no name at all
      const namedBefore = seen.named()
      const again = yield* load(pool, 32, 1_000)
      assert.deepStrictEqual(again.failures, {})
      assert.strictEqual(seen.named(), namedBefore)
    }))

  it.scopedLive("pooler: \"transaction\": no named statement on the wire, no prepared-statement error, transactions too", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 3 })
      const seen = yield* wire(bouncer.port)
      const pool = yield* poolOn(
        bouncer.config({ host: "127.0.0.1", port: seen.port, maxConnections: 10, pooler: "transaction" })
      )
      const result = yield* load(pool, 32)
      assert.deepStrictEqual(result.failures, {}, JSON.stringify(result.samples))
      // transactions of several statements, concurrently
      yield* Effect.forEach(
        Array.from({ length: 200 }, (_, i) => i),
        (i) =>
          Transaction.withTransaction(
            Effect.zipRight(PgPool.query("select $1::int as a", [i]), PgPool.query("select $1::int + 1 as b", [i]))
          ).pipe(
            Effect.tap((rows) => assert.strictEqual(Number(rows[0]!.b), i + 1)),
            Effect.provideService(PgPool.PgPool, pool)
          ),
        { concurrency: 32, discard: true }
      )
      assert.strictEqual(seen.named(), 0)
      assert.deepStrictEqual([...seen.codes()].filter(([, n]) => n > 0), [])
    }))

  it.scopedLive("pooler: \"transaction\": a Warning once per text of work that sets session state", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 2 })
      const logs = warnings()
      const pool = yield* poolOn(bouncer.config({ maxConnections: 2, pooler: "transaction" }), logs.layer)
      const leaking = [
        "set search_path = public",
        "select pg_advisory_lock(42)",
        "select pg_advisory_unlock(42)",
        "create temp table if not exists scratch (id int)"
      ]
      for (const text of [...leaking, ...leaking]) yield* pool.query(text)
      yield* Transaction.withTransaction(
        Effect.all([
          PgPool.query("set local search_path = public"),
          PgPool.query("select pg_advisory_xact_lock(43)"),
          PgPool.query("set transaction isolation level repeatable read")
        ])
      ).pipe(Effect.provideService(PgPool.PgPool, pool), Effect.ignore)
      const warned = logs.lines.filter((line) => line.message.includes("behind a transaction pooler"))
      assert.deepStrictEqual(
        warned.map((line) => line.annotations.statement),
        ["set search_path = public", "select pg_advisory_lock(42)", "create temp table if not exists scratch (id int)"]
      )
      assert.include(warned[0]!.message, "SET without LOCAL")
    }))

  it.scopedLive("pooler: \"transaction\" refuses listen with a clear error; notify works", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 2 })
      const context = yield* Layer.build(
        PgPoolSql.layerClient({ url: bouncer.url(), maxConnections: 2, pooler: "transaction" })
      )
      const sql = Context.get(context, PgClient.PgClient)
      const exit = yield* Effect.exit(Stream.runHead(sql.listen("jobs")))
      const error = failureOf(exit)
      assert.strictEqual(error._tag, "SqlError")
      assert.include(error.message, "with pooler: \"transaction\"")
      yield* sql.notify("jobs", "hello")
    }))
})

describe("the pooler knob", () => {
  it.effect("pooler: \"transaction\" refuses what would set session state, naming the field", () =>
    Effect.gen(function*() {
      const refused = (config: PgPool.Config) =>
        Effect.map(
          Effect.exit(Layer.build(PgPool.layer({ host: "db", pooler: "transaction", lazy: true, ...config }))),
          (exit) => String(failureOf(exit))
        )
      assert.include(yield* refused({ setSession: ["set time zone 'UTC'"] }), "setSession cannot be used with pooler")
      assert.include(yield* refused({ reset: "full" }), "reset: \"full\" cannot be used with pooler")
      assert.include(yield* refused({ statementTimeout: "5 seconds" }), "statementTimeout cannot be used with pooler")
      assert.include(
        String(failureOf(yield* Effect.exit(Layer.build(PgPool.layer({ host: "db", pooler: "session" as never }))))),
        "pooler must be \"auto\" or \"transaction\", got \"session\""
      )
      assert.include(
        String(failureOf(
          yield* Effect.exit(
            Layer.build(PgPool.layer({ url: Redacted.make("postgres://u@db/x?pooler=statement"), lazy: true }))
          )
        )),
        "pooler must be"
      )
      // reset "always" (ROLLBACK on every return) is fine behind a pooler
      assert.isTrue(
        Exit.isSuccess(
          yield* Effect.exit(
            Layer.build(PgPool.layer({ host: "db", pooler: "transaction", reset: "always", lazy: true }))
          )
        )
      )
    }).pipe(Effect.scoped))

  it.scopedLive("?pooler=transaction in the URL and PGPOOL_POOLER take effect", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 2 })
      const seen = yield* wire(bouncer.port)
      const url = `${Redacted.value(bouncer.url())}?pooler=transaction`.replace(`:${bouncer.port}/`, `:${seen.port}/`)
      const fromUrl = yield* poolOn({ url: Redacted.make(url), maxConnections: 4 })
      assert.deepStrictEqual((yield* load(fromUrl, 8, 300)).failures, {})
      const env = ConfigProvider.fromMap(
        new Map([["DATABASE_URL", Redacted.value(bouncer.url()).replace(`:${bouncer.port}/`, `:${seen.port}/`)], [
          "PGPOOL_POOLER",
          "transaction"
        ], ["PGPOOL_MAX_CONNECTIONS", "4"]])
      )
      const fromEnv = Context.get(
        yield* Layer.build(Layer.provide(PgPool.PgPoolLive, Layer.setConfigProvider(env))),
        PgPool.PgPool
      )
      assert.deepStrictEqual((yield* load(fromEnv, 8, 300)).failures, {})
      assert.strictEqual(seen.named(), 0)
    }))

  it("sessionState names the work a transaction pooler leaks, and passes the rest", () => {
    const leaks: ReadonlyArray<readonly [string, string]> = [
      ["set search_path = app", "SET without LOCAL"],
      ["SET SESSION statement_timeout = 0", "SET without LOCAL"],
      ["/* app */ set time zone 'UTC'", "SET without LOCAL"],
      ["select 1; set role app", "SET without LOCAL"],
      ["select pg_advisory_lock(1)", "session advisory lock"],
      ["SELECT pg_try_advisory_lock_shared(1, 2)", "session advisory lock"],
      ["create temporary table t (id int)", "temporary table"],
      ["CREATE GLOBAL TEMP TABLE t (id int)", "temporary table"],
      ["prepare q as select 1", "PREPARE"],
      ["LISTEN jobs", "LISTEN"]
    ]
    for (const [text, what] of leaks) assert.include(sessionState(text) ?? "(none)", what, text)
    const fine = [
      "set local search_path = app",
      "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
      "set constraints all deferred",
      "select pg_advisory_xact_lock(1)",
      "select * from settings where name = 'set x'",
      "create table t (id int)",
      "select 'listen '",
      "update offsets set value = 1"
    ]
    for (const text of fine) assert.isUndefined(sessionState(text), text)
  })
})
