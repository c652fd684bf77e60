/**
 * `PgPool.drain` (issue 17, point 3) on a real server with a load of 32 fibers: a setting changed with
 * ALTER SYSTEM + pg_reload_conf() that only new sessions see is on every backend of the pool once the drain
 * completes; idle connections go at once, busy ones as they come back; the load sees no failure; a connection
 * held past `drainTimeout` makes the drain fail with DrainTimeoutError, and it is replaced when it comes back.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import * as PgPool from "../src/PgPool.js"
import { adminQuery, backends, eventually, testDatabase, testLayer } from "./support/db.js"
import { failureOf } from "./support/exits.js"
import { describeOutcomes, startLoad } from "./support/load.js"

let names = 0
const app = (label: string) => `drain-${label}-${process.pid}-${++names}`

/** `log_disconnections` (context superuser-backend): a reload changes it for new sessions only. */
const setting = "log_disconnections"
const setOnServer = (value: "on" | "off") =>
  Effect.zipRight(
    adminQuery(`alter system set ${setting} = ${value}`),
    adminQuery("select pg_reload_conf()")
  )

/** The setting as each backend of the pool sees it (pg_settings is per session: ask on each connection). */
const settingsOfBackends = (name: string) =>
  Effect.map(
    adminQuery(
      "select pid from pg_stat_activity where datname = $1 and application_name = $2 order by pid",
      [testDatabase(), name]
    ),
    (rows) => rows.map((row) => Number(row.pid))
  )

describe("PgPool.drain", () => {
  for (const pipelineDepth of [1, 16]) {
    it.scopedLive(`replaces every connection under a load of 32 fibers: all backends see a setting only new sessions get (pipelineDepth ${pipelineDepth})`, () => {
      const name = app(`load-${pipelineDepth}`)
      return Effect.gen(function*() {
        const pool = yield* PgPool.PgPool
        yield* Effect.addFinalizer(() => Effect.orDie(setOnServer("off")))
        const seen = (rows: ReadonlyArray<PgPool.Row>) => String(rows[0]!.value)
        const load = yield* startLoad(pool, 32, {
          statement: (index) => ({
            text: `select pg_sleep(0.005), $1::int as worker, current_setting('${setting}') as value`,
            params: [index]
          })
        })
        // the load keeps every connection busy: fibers wait for one (or, pipelining, ride busy ones)
        yield* eventually(
          PgPool.stats,
          (s) => s.size === 6 && s.pending === 0 && (pipelineDepth === 1 ? s.waiting > 0 : s.pipelined > 0),
          { interval: "10 millis" }
        )
        const old = yield* eventually(settingsOfBackends(name), (pids) => pids.length === 6)
        yield* setOnServer("on")
        // the sessions open before the change keep the old value
        assert.strictEqual(seen(yield* PgPool.query(`select current_setting('${setting}') as value`)), "off")
        const before = (yield* PgPool.stats).closedByReason.drained
        yield* PgPool.drain
        // no connection of before the call is left: the server has none of the old backends, and every
        // connection of the pool sees the new value
        const now = yield* settingsOfBackends(name)
        assert.isTrue(now.every((pid) => !old.includes(pid)), `${JSON.stringify(old)} -> ${JSON.stringify(now)}`)
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.closedByReason.drained - before, 6)
        const values = yield* PgPool.withConnection(Effect.all(
          Array.from({ length: 6 }, () => PgPool.query(`select current_setting('${setting}') as value`)),
          { concurrency: "unbounded" }
        ))
        assert.deepStrictEqual(values.map(seen), Array.from({ length: 6 }, () => "on"))
        // the load went on throughout, without a failure
        const count = (yield* load.outcomes).length
        yield* eventually(load.outcomes, (o) => o.length >= count + 50)
        const outcomes = yield* load.stop
        const failures = outcomes.filter((o) => o.error !== undefined)
        assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
        // every statement after the drain ran in a new session
        yield* eventually(backends(name), (rows) => rows.every((row) => !old.includes(Number(row.pid))))
      }).pipe(
        Effect.provide(
          testLayer({ name, applicationName: name, maxConnections: 6, acquireTimeout: "20 seconds", pipelineDepth })
        )
      )
    })
  }

  it.live("idle connections go at once; a busy one held past drainTimeout fails the drain, and is replaced when it comes back", () => {
    const name = app("held")
    return Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const taken = yield* Deferred.make<number>()
      const holder = yield* Effect.fork(PgPool.withConnection(Effect.gen(function*() {
        const rows = yield* PgPool.query("select pg_backend_pid() as pid")
        yield* Deferred.succeed(taken, Number(rows[0]!.pid))
        yield* Deferred.await(release)
      })))
      const heldPid = yield* Deferred.await(taken)
      yield* eventually(PgPool.stats, (s) => s.idle === 3 && s.inUse === 1)
      const old = yield* settingsOfBackends(name)
      const error = failureOf(yield* Effect.exit(PgPool.drain))
      assert.strictEqual(error._tag, "DrainTimeoutError")
      if (error._tag === "DrainTimeoutError") {
        assert.strictEqual(error.remaining, 1)
        assert.isAtLeast(error.waitedMillis, 290)
        assert.include(error.message, "drainTimeout")
      }
      // the idle ones were replaced (minConnections 4: three new ones), the held one is still there
      const during = yield* settingsOfBackends(name)
      assert.include(during, heldPid)
      assert.strictEqual(during.filter((pid) => old.includes(pid)).length, 1)
      // queries are served meanwhile
      assert.deepStrictEqual(yield* PgPool.query("select 1 as one"), [{ one: 1 }])
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* eventually(settingsOfBackends(name), (pids) => !pids.includes(heldPid) && pids.length === 4)
      assert.strictEqual((yield* PgPool.stats).closedByReason.drained, 4)
    }).pipe(
      Effect.provide(testLayer({ name, applicationName: name, minConnections: 4, drainTimeout: "300 millis" }))
    )
  })
})
