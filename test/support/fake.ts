/**
 * Helpers of the fast tests of the pool mechanism (test/internal/pool/): the real pool on the fake server of
 * `PgPoolTest.layer`, under `TestClock`, through the public modules only. No database, no real time: background
 * work (closers, connects, deliveries) is waited for with bounded `Effect.yieldNow()` loops.
 */
import { assert } from "@effect/vitest"
import { Context, Deferred, type Duration, Effect, Exit, Fiber, Layer, Option, Scope } from "effect"
import * as PgPool from "../../src/PgPool.js"
import * as PgPoolTest from "../../src/PgPoolTest.js"

export { counterValue, gaugeValue, histogramCount } from "./metrics.js"

/**
 * The real pool on the fake server, for the tests of the mechanism: no health check pings in the statement log
 * unless a test asks for them, and `drainTimeout: 0`, so that a connection a failing test leaks does not hold
 * the layer's close (and the test) up on a clock nobody moves: the test fails with its assertion instead.
 */
export const fakeLayer = (config: PgPool.Config = {}, latency?: Duration.DurationInput) =>
  PgPoolTest.layer({ config: { healthCheck: false, drainTimeout: 0, ...config }, latency })

/**
 * Runs `effect` until `predicate` holds, yielding to the other fibers in between, at most `yields` times; dies
 * with the last value otherwise (a bounded wait: no real time, no clock).
 */
export const settle = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  predicate: (a: A) => boolean,
  yields = 500
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    let last: A | undefined
    for (let i = 0; i <= yields; i++) {
      last = yield* effect
      if (predicate(last)) return last
      yield* Effect.yieldNow()
    }
    return yield* Effect.dieMessage(`condition not met after ${yields} yields; last value: ${JSON.stringify(last)}`)
  })

/** Joins a fiber that must be done by now, or very soon (a bounded number of yields): no wait on a clock. */
export const joinNow = <A, E>(fiber: Fiber.Fiber<A, E>): Effect.Effect<A, E> =>
  Effect.zipRight(settle(Fiber.poll(fiber), Option.isSome), Fiber.join(fiber))

/** Lets the pool's background fibers run for a while (a fixed number of yields). */
export const yieldMany = (times = 50): Effect.Effect<void> => Effect.repeatN(Effect.yieldNow(), times - 1)

/** The counters of `stats` that the tests compare (every number of it but `maxConnections`). */
type Counts = Omit<PgPool.PoolStats, "hosts" | "maxConnections">

/** What the pool says and what the fake server has, in one reading. */
interface Reading {
  readonly stats: PgPool.PoolStats
  readonly backends: ReadonlyArray<PgPoolTest.Backend>
  readonly connects: number
}

const read: Effect.Effect<Reading, never, PgPool.PgPool | PgPoolTest.Controller> = Effect.gen(function*() {
  const server = yield* PgPoolTest.Controller
  return { stats: yield* PgPool.stats, backends: yield* server.backends, connects: yield* server.connects }
})

const sumOf = (reasons: Readonly<Record<string, number>>) => Object.values(reasons).reduce((a, b) => a + b, 0)

/**
 * The accounting holds and agrees with the fake server: the open connections the pool counts (size less those
 * being opened) are the server's open backends; size = idle + inUse + pending; created - closed = the open ones;
 * closed = the sum of closedByReason; no connection counted twice.
 */
const agrees = ({ backends, stats }: Reading): boolean =>
  stats.size - stats.pending === backends.length &&
  stats.size === stats.idle + stats.inUse + stats.pending &&
  stats.created - stats.closed === stats.size - stats.pending &&
  stats.closed === sumOf(stats.closedByReason) &&
  stats.hosts.reduce((n, h) => n + h.size, 0) === backends.length

/**
 * Waits (bounded) until the pool's accounting agrees with the fake server, then asserts the given counters.
 * Returns the reading.
 */
export const expectStats = (
  expected: Partial<Omit<Counts, "closedByReason">> & { readonly closedByReason?: Partial<Counts["closedByReason"]> },
  message?: string
): Effect.Effect<Reading, never, PgPool.PgPool | PgPoolTest.Controller> =>
  Effect.gen(function*() {
    let last: Reading | undefined
    const matches = (reading: Reading) => {
      if (!agrees(reading)) return false
      for (const [key, value] of Object.entries(expected)) {
        if (key === "closedByReason") {
          for (const [reason, n] of Object.entries(value as Record<string, number>)) {
            if (reading.stats.closedByReason[reason as PgPool.CloseReason] !== n) return false
          }
        } else if (reading.stats[key as keyof Counts] !== value) return false
      }
      return true
    }
    for (let i = 0; i <= 500; i++) {
      last = yield* read
      if (matches(last)) return last
      yield* Effect.yieldNow()
    }
    const stats = last!.stats
    const actual: Record<string, unknown> = {}
    for (const key of Object.keys(expected)) {
      actual[key] = key === "closedByReason"
        ? Object.fromEntries(
          Object.keys(expected.closedByReason!).map((r) => [r, stats.closedByReason[r as PgPool.CloseReason]])
        )
        : stats[key as keyof Counts]
    }
    assert.isTrue(
      agrees(last!),
      `${message ?? ""} stats disagree with the fake server: ${JSON.stringify({ stats, backends: last!.backends })}`
    )
    assert.deepStrictEqual(actual, expected as Record<string, unknown>, message)
    return last!
  })

/**
 * Checks `n` connections out in a fiber of their own and holds them until `release` (which waits for them to
 * be back). The connections must be obtainable without moving the clock.
 */
export const hold = (n = 1) =>
  Effect.gen(function*() {
    const done = yield* Deferred.make<void>()
    const held = yield* Deferred.make<ReadonlyArray<PgPool.PooledConnection>>()
    const fiber = yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
      const conns: Array<PgPool.PooledConnection> = []
      for (let i = 0; i < n; i++) conns.push(yield* PgPool.connection)
      yield* Deferred.succeed(held, conns)
      yield* Deferred.await(done)
    })))
    const conns = yield* Deferred.await(held)
    return {
      conns,
      pids: conns.map((c) => c.backendPid),
      fiber,
      release: Effect.zipRight(Deferred.succeed(done, undefined), Fiber.join(fiber))
    }
  })

/** The statement log as texts. */
export const texts: Effect.Effect<ReadonlyArray<string>, never, PgPoolTest.Controller> = Effect.flatMap(
  PgPoolTest.Controller,
  (server) => Effect.map(server.statements, (log) => log.map((s) => s.text))
)

/** The statement log as `[backendPid, text]` pairs. */
export const pidsAndTexts: Effect.Effect<ReadonlyArray<readonly [number, string]>, never, PgPoolTest.Controller> =
  Effect.flatMap(
    PgPoolTest.Controller,
    (server) => Effect.map(server.statements, (log) => log.map((s) => [s.backendPid, s.text] as const))
  )

/** A pool on the fake server built in a Scope of its own, to close it in the middle of a test. */
export const buildPool = (options: PgPoolTest.Options = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(PgPoolTest.layer(options), scope)
    return {
      pool: Context.get(context, PgPool.PgPool),
      server: Context.get(context, PgPoolTest.Controller),
      context,
      close: Scope.close(scope, Exit.void)
    }
  })

let poolNames = 0

/** A pool name no other test uses (the metrics are global, tagged by pool name). */
export const uniqueName = (label: string): string => `fake-${label}-${process.pid}-${++poolNames}`
