/**
 * `PgPool.resize` (issue 17, point 2) on a real server, with a load running: growing serves the waiting fibers
 * at once, shrinking closes idle connections first and busy ones as they come back without interrupting a
 * statement, invalid sizes change nothing; `stats`, the limit gauges and `pg_stat_activity` follow.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import * as ConfigError from "effect/ConfigError"
import * as PgPool from "../src/PgPool.js"
import { backends, eventually, testLayer } from "./support/db.js"
import { failureOf } from "./support/exits.js"
import { describeOutcomes, startLoad } from "./support/load.js"
import { gaugeValue } from "./support/metrics.js"

let names = 0
const app = (label: string) => `resize-${label}-${process.pid}-${++names}`

const limits = (name: string) =>
  Effect.all({
    max: gaugeValue("db.client.connection.max", name),
    idleMax: gaugeValue("db.client.connection.idle.max", name),
    idleMin: gaugeValue("db.client.connection.idle.min", name)
  })

describe("PgPool.resize under a load of 32 fibers", () => {
  it.scopedLive("growing serves the waiting fibers at once; stats, gauges and the server follow", () => {
    const name = app("grow")
    return Effect.gen(function*() {
      const pool = yield* PgPool.PgPool
      const load = yield* startLoad(pool, 32, {
        statement: (index) => ({ text: "select pg_sleep(0.02), $1::int as worker", params: [index] })
      })
      // two connections, thirty fibers waiting
      yield* eventually(PgPool.stats, (s) => s.size === 2 && s.waiting >= 20, { interval: "10 millis" })
      yield* PgPool.resize({ maxConnections: 8 })
      const grown = yield* PgPool.stats
      assert.strictEqual(grown.maxConnections, 8)
      // the connects for the waiters started at once
      assert.strictEqual(grown.size, 8)
      assert.deepStrictEqual(yield* limits(name), { max: 8, idleMax: 8, idleMin: 0 })
      yield* eventually(backends(name), (rows) => rows.length === 8)
      yield* eventually(PgPool.stats, (s) => s.pending === 0 && s.inUse + s.idle === 8)
      // the load goes on, on eight connections
      const before = (yield* load.outcomes).length
      yield* eventually(load.outcomes, (o) => o.length >= before + 100)
      assert.strictEqual((yield* PgPool.stats).size, 8)
      const outcomes = yield* load.stop
      const failures = outcomes.filter((o) => o.error !== undefined)
      assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
    }).pipe(Effect.provide(testLayer({ name, applicationName: name, maxConnections: 2, acquireTimeout: "20 seconds" })))
  })

  it.scopedLive("shrinking closes the idle connections at once and the busy ones as they come back; no statement fails", () => {
    const name = app("shrink")
    return Effect.gen(function*() {
      const pool = yield* PgPool.PgPool
      const load = yield* startLoad(pool, 32, {
        statement: (index) => ({ text: "select pg_sleep(0.02), $1::int as worker", params: [index] })
      })
      yield* eventually(PgPool.stats, (s) => s.size === 8 && s.waiting > 0, { interval: "10 millis" })
      yield* eventually(backends(name), (rows) => rows.length === 8)
      yield* PgPool.resize({ minConnections: 1, maxConnections: 2 })
      assert.deepStrictEqual(yield* limits(name), { max: 2, idleMax: 2, idleMin: 1 })
      // every busy connection beyond the new size is closed when it comes back, between two statements
      const shrunk = yield* eventually(PgPool.stats, (s) => s.size === 2, { interval: "10 millis" })
      assert.strictEqual(shrunk.maxConnections, 2)
      assert.strictEqual(shrunk.closedByReason.resized, 6)
      yield* eventually(backends(name), (rows) => rows.length === 2)
      // the load goes on, on two connections
      const before = (yield* load.outcomes).length
      yield* eventually(load.outcomes, (o) => o.length >= before + 50)
      assert.strictEqual((yield* PgPool.stats).size, 2)
      const outcomes = yield* load.stop
      const failures = outcomes.filter((o) => o.error !== undefined)
      assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
    }).pipe(
      Effect.provide(
        testLayer({ name, applicationName: name, minConnections: 4, maxConnections: 8, acquireTimeout: "20 seconds" })
      )
    )
  })

  it.live("a busy connection is not interrupted: its statement completes, then the connection is closed", () => {
    const name = app("busy")
    return Effect.gen(function*() {
      const go = yield* Deferred.make<void>()
      const held = yield* Effect.fork(Effect.all(
        Array.from({ length: 4 }, () =>
          PgPool.withConnection(Effect.zipRight(
            Deferred.await(go),
            PgPool.query("select pg_sleep(0.2), pg_backend_pid() as pid")
          ))),
        { concurrency: "unbounded" }
      ))
      yield* eventually(PgPool.stats, (s) => s.inUse === 4)
      // four idle (minConnections) and four busy: the idle ones go at once
      yield* eventually(PgPool.stats, (s) => s.idle === 4)
      yield* Deferred.succeed(go, undefined)
      yield* PgPool.resize({ minConnections: 0, maxConnections: 2 })
      const now = yield* PgPool.stats
      assert.deepStrictEqual([now.size, now.idle, now.inUse, now.closedByReason.resized], [4, 0, 4, 4])
      const rows = yield* Fiber.join(held)
      assert.strictEqual(rows.length, 4)
      const after = yield* eventually(PgPool.stats, (s) => s.size === 2)
      assert.deepStrictEqual([after.inUse, after.closedByReason.resized], [0, 6])
      yield* eventually(backends(name), (list) => list.length === 2)
    }).pipe(
      Effect.provide(testLayer({ name, applicationName: name, minConnections: 8, maxConnections: 8 }))
    )
  })

  it.effect("invalid sizes fail with a ConfigError naming the field, and change nothing", () =>
    Effect.gen(function*() {
      yield* PgPool.query("select 1")
      const cases: ReadonlyArray<readonly [PgPool.ResizeOptions, string]> = [
        [{ maxConnections: 0 }, "maxConnections"],
        [{ maxConnections: 2.5 }, "maxConnections"],
        [{ maxConnections: Infinity }, "maxConnections"],
        [{ minConnections: -1 }, "minConnections"],
        [{ minConnections: 5, maxConnections: 3 }, "minConnections"],
        [{ minConnections: 6 }, "minConnections"],
        [{ maxConection: 3 } as PgPool.ResizeOptions, "maxConection"]
      ]
      for (const [options, field] of cases) {
        const error = failureOf(yield* Effect.exit(PgPool.resize(options)))
        assert.isTrue(ConfigError.isConfigError(error), `${JSON.stringify(options)}: ${String(error)}`)
        assert.include(String(error), field, JSON.stringify(options))
      }
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.maxConnections, 4)
      // minConnections unchanged too: growing max alone keeps it
      yield* PgPool.resize({ maxConnections: 5 })
      assert.strictEqual((yield* PgPool.stats).maxConnections, 5)
      const error = failureOf(yield* Effect.exit(PgPool.resize({ maxConnections: 1 })))
      assert.include(String(error), "minConnections (2) must not exceed maxConnections (1)")
    }).pipe(Effect.provide(testLayer({ minConnections: 2, maxConnections: 4 }))))
})
