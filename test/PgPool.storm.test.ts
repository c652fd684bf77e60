import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as PgPool from "../src/PgPool.js"
import { adminQuery, eventually, testDatabase, testLayer } from "./support/db.js"

/** A small seeded PRNG (mulberry32), so a failing storm can be replayed from its seed. */
const prng = (seed: number) => () => {
  seed |= 0
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const MAX = 8

describe("PgPool under an interruption storm", () => {
  it.live("thousands of fibers with random timeouts, interrupts and failures leave nothing behind", () => {
    const seed = Date.now() % 100000
    const random = prng(seed)
    const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(random() * items.length)]!
    const sleepMs = () => Math.floor(random() * 20)
    const timeoutMs = () => 1 + Math.floor(random() * 60)

    const jobs: ReadonlyArray<() => Effect.Effect<unknown, unknown, PgPool.PgPool>> = [
      () => PgPool.query(`select pg_sleep(${sleepMs() / 1000})`),
      () => PgPool.query(`select pg_sleep(${sleepMs() / 1000})`).pipe(Effect.timeout(timeoutMs())),
      () => PgPool.query("select 1/0"),
      () =>
        Effect.scoped(
          Effect.flatMap(PgPool.connection, (conn) =>
            Effect.zipRight(conn.query(`select pg_sleep(${sleepMs() / 1000})`), Effect.fail("user failure")))
        ),
      () =>
        Effect.scoped(
          Effect.flatMap(PgPool.connection, (conn) => Effect.zipRight(conn.query("select 1"), Effect.die("defect")))
        ),
      () =>
        PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("begin")
          yield* PgPool.query("insert into storm_t values ($1)", [Math.floor(random() * 1000)])
          yield* PgPool.query(`select pg_sleep(${sleepMs() / 1000})`)
          if (random() < 0.5) yield* Effect.fail("abandon the transaction")
          yield* PgPool.query("commit")
        })).pipe(Effect.timeout(timeoutMs())),
      () =>
        PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("begin")
          yield* PgPool.query("select 1/0")
        })),
      () => Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => conn.invalidate))
    ]

    return Effect.gen(function*() {
      yield* PgPool.query("create table storm_t (x int)")
      const fibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
      for (let i = 0; i < 3000; i++) {
        fibers.push(yield* Effect.fork(Effect.exit(pick(jobs)())))
        if (i % 50 === 0) yield* Effect.yieldNow()
      }
      const doomed = fibers.filter(() => random() < 0.3)
      yield* Effect.forEach(
        doomed,
        (fiber) => Effect.zipRight(Effect.sleep(Math.floor(random() * 30)), Fiber.interrupt(fiber)),
        {
          concurrency: "unbounded",
          discard: true
        }
      )
      yield* Fiber.awaitAll(fibers)

      const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0 && s.waiting === 0 && s.pending === 0)
      assert.isAtMost(stats.size, MAX, `seed ${seed}`)
      // the work served: checkouts, and one-shot statements that rode a busy connection (pipelining) instead
      assert.isAbove(stats.acquired + stats.pipelined, 500, `seed ${seed}`)

      const server = yield* eventually(
        adminQuery(
          "select count(*)::int as n, count(*) filter (where state like 'idle in transaction%')::int as in_tx, count(*) filter (where state = 'active')::int as active from pg_stat_activity where datname = $1 and application_name = 'effect-pg-pool-test'",
          [testDatabase()]
        ),
        (rows) => Number(rows[0]!.n) <= MAX && Number(rows[0]!.active) === 0
      )
      assert.deepStrictEqual(server[0]!.in_tx, 0, `seed ${seed}`)
      assert.isAtMost(Number(server[0]!.n), MAX, `seed ${seed}`)
      const final = yield* PgPool.stats
      assert.strictEqual(Number(server[0]!.n), final.size, `seed ${seed}: the server agrees with stats`)

      const rows = yield* PgPool.query("select 1 as ok")
      assert.deepStrictEqual(rows, [{ ok: 1 }])
    }).pipe(Effect.provide(testLayer({ maxConnections: MAX, acquireTimeout: "3 seconds" })))
  }, 120_000)
})
