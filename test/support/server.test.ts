import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Either } from "effect"
import { eventually } from "./db.js"
import { watchProcessErrors } from "./processErrors.js"
import * as PrivateServer from "./server.js"

const fast = { connectTimeout: "1 second", acquireTimeout: "1 second" } as const

describe("PrivateServer", () => {
  it.scopedLive("serves a pool; backends() sees its connections; terminate() ends one", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const server = yield* PrivateServer.make()
      assert.isTrue(server.isRunning())
      const config = server.config({ minConnections: 2 })
      assert.strictEqual(config.applicationName, "fault-test")
      const pool = yield* PrivateServer.makePool(config)
      assert.deepStrictEqual(yield* pool.query("select current_setting('application_name') as app"), [{
        app: "fault-test"
      }])
      const before = yield* eventually(server.backends(), (rows) => rows.length === 2)
      assert.isTrue(before.every((b) => b.state === "idle"))
      // admin connections (and other application names) are not listed
      assert.deepStrictEqual(yield* server.backends("nobody"), [])

      const victim = before[0]!.pid
      assert.isTrue(yield* server.terminate(victim))
      const after = yield* server.backends()
      assert.deepStrictEqual(after.map((b) => b.pid), [before[1]!.pid])
      assert.isFalse(yield* server.terminate(victim))
      // the pool notices the lost idle connection and keeps working
      yield* eventually(pool.stats, (s) => s.closedByReason.broken === 1)
      assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])

      const terminated = yield* server.terminateAll()
      assert.isAtLeast(terminated.length, 1)
      yield* eventually(server.backends(), (rows) => rows.every((b) => !terminated.includes(b.pid)))
      assert.deepStrictEqual(errors.describe(), [])
    }))

  it.scopedLive("stops and starts on the same port; the pool recovers", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const server = yield* PrivateServer.make()
      const pool = yield* PrivateServer.makePool(server.config(fast))
      assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])

      yield* server.stop
      assert.isFalse(server.isRunning())
      yield* server.stop // stopping a stopped server does nothing
      const down = yield* server.backends().pipe(Effect.either)
      assert.isTrue(Either.isLeft(down))
      const failed = yield* pool.query("select 1 as one").pipe(Effect.flip)
      assert.strictEqual(failed._tag, "ConnectionError")

      yield* server.start
      assert.isTrue(server.isRunning())
      yield* server.start // starting a running server does nothing
      yield* eventually(
        pool.query("select 1 as one").pipe(Effect.orElseSucceed(() => [])),
        (rows) => rows.length === 1,
        { interval: Duration.millis(50), attempts: 100 }
      )

      const pidsBefore = (yield* server.backends()).map((b) => b.pid)
      assert.isAtLeast(pidsBefore.length, 1)
      yield* server.restart
      assert.isTrue(server.isRunning())
      yield* eventually(
        pool.query("select 1 as one").pipe(Effect.orElseSucceed(() => [])),
        (rows) => rows.length === 1,
        { interval: Duration.millis(50), attempts: 100 }
      )
      const pidsAfter = (yield* server.backends()).map((b) => b.pid)
      assert.isTrue(pidsAfter.every((pid) => !pidsBefore.includes(pid)))
      assert.deepStrictEqual(errors.describe(), [])
    }))

  it.scopedLive("servers run side by side; running: false makes a stopped one that a lazy pool waits for", () =>
    Effect.gen(function*() {
      const [a, b] = yield* Effect.all([PrivateServer.make(), PrivateServer.make({ running: false })], {
        concurrency: 2
      })
      assert.notStrictEqual(a.port, b.port)
      assert.notStrictEqual(a.embedded.dataDir, b.embedded.dataDir)
      assert.isTrue(a.isRunning())
      assert.isFalse(b.isRunning())
      assert.deepStrictEqual(yield* a.query("select 1 as one"), [{ one: 1 }])

      const eager = yield* PrivateServer.makePool(b.config(fast)).pipe(Effect.scoped, Effect.flip)
      assert.strictEqual(eager._tag, "ConnectionError")
      const pool = yield* PrivateServer.makePool(b.config({ ...fast, lazy: true }))
      yield* b.start
      yield* eventually(
        pool.query("select 1 as one").pipe(Effect.orElseSucceed(() => [])),
        (rows) => rows.length === 1,
        { interval: Duration.millis(50), attempts: 100 }
      )
      yield* a.stop
      assert.deepStrictEqual(yield* b.query("select 1 as one"), [{ one: 1 }])
    }))
})
