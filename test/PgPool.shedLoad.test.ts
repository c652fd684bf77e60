/**
 * Admission control (`shedLoad`, issue 17 point 4) on a real server: 32 fibers at once on 2 connections whose
 * checkouts hold them about 100 ms, with a 300 ms acquire timeout. With `shedLoad` the callers that could not
 * be served in time fail at once with `PoolExhaustedError` "overloaded", counted in `stats`, the timeouts
 * metric and the shed counter; without it (the default) they queue and time out.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import * as PgPool from "../src/PgPool.js"
import { testLayer } from "./support/db.js"
import { failureOf, timedExit } from "./support/exits.js"
import { counterValue } from "./support/metrics.js"

let names = 0
const app = (label: string) => `shed-${label}-${process.pid}-${++names}`

/** A checkout holding its connection about 100 ms. */
const slow = PgPool.query("select pg_sleep(0.1)")

/** 32 callers at once, after enough checkouts for the pool to know how long they hold a connection. */
const burst = Effect.gen(function*() {
  yield* Effect.forEach(Array.from({ length: 12 }, () => slow), (q) => q, { concurrency: 2, discard: true })
  return yield* Effect.forEach(Array.from({ length: 32 }, () => timedExit(slow)), (q) => q, {
    concurrency: "unbounded"
  })
})

const reasonOf = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "ok"
  const error = failureOf(exit) as { readonly _tag: string; readonly reason?: string }
  return error._tag === "PoolExhaustedError" ? error.reason! : error._tag
}

describe("shedLoad: a checkout sure to time out is refused at once", () => {
  it.live("on: the callers beyond what the acquire timeout allows fail at once with \"overloaded\"", () => {
    const name = app("on")
    return Effect.gen(function*() {
      const results = yield* burst
      const reasons = results.map(({ exit }) => reasonOf(exit))
      const shed = results.filter(({ exit }) => reasonOf(exit) === "overloaded")
      const context = JSON.stringify(reasons)
      // about 2 served at once and a few queued: the rest predicted to wait longer than 300 ms
      assert.isAtLeast(shed.length, 16, context)
      assert.isAtLeast(reasons.filter((r) => r === "ok").length, 4, context)
      assert.isTrue(shed.every(({ millis }) => millis < 50), JSON.stringify(shed.map((r) => r.millis)))
      const error = failureOf(shed[0]!.exit) as { readonly message: string }
      assert.include(error.message, "overloaded")
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.shed, shed.length)
      assert.strictEqual(stats.timeouts, reasons.filter((r) => r === "overloaded" || r === "acquireTimeout").length)
      assert.strictEqual(yield* counterValue("db.client.connection.shed", name), shed.length)
      assert.strictEqual(yield* counterValue("db.client.connection.timeouts", name), stats.timeouts)
    }).pipe(
      Effect.provide(testLayer({ name, maxConnections: 2, acquireTimeout: "300 millis", shedLoad: true }))
    )
  })

  it.live("off (the default): the same burst queues, and the callers not served time out after acquireTimeout", () => {
    const name = app("off")
    return Effect.gen(function*() {
      const results = yield* burst
      const reasons = results.map(({ exit }) => reasonOf(exit))
      assert.notInclude(reasons, "overloaded")
      const timedOut = results.filter(({ exit }) => reasonOf(exit) === "acquireTimeout")
      assert.isAtLeast(timedOut.length, 16, JSON.stringify(reasons))
      assert.isTrue(timedOut.every(({ millis }) => millis >= 290), JSON.stringify(timedOut.map((r) => r.millis)))
      assert.strictEqual((yield* PgPool.stats).shed, 0)
    }).pipe(Effect.provide(testLayer({ name, maxConnections: 2, acquireTimeout: "300 millis" })))
  })
})
