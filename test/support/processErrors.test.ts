import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { EventEmitter } from "node:events"
import { watchProcessErrors, watchProcessErrorsOn } from "./processErrors.js"

describe("watchProcessErrors", () => {
  it.scopedLive("records uncaught exceptions and unhandled rejections until its scope closes", () =>
    Effect.gen(function*() {
      // a stand-in for the process: emitting real ones would also fail the run through vitest's own listeners
      const emitter = new EventEmitter()
      const scope = yield* Scope.make()
      const watcher = yield* Scope.extend(watchProcessErrorsOn(emitter), scope)
      assert.strictEqual(emitter.listenerCount("uncaughtException"), 1)
      assert.strictEqual(emitter.listenerCount("unhandledRejection"), 1)
      assert.deepStrictEqual(watcher.errors(), [])
      const boom = new Error("boom")
      emitter.emit("uncaughtException", boom, "uncaughtException")
      emitter.emit("unhandledRejection", "nope", Promise.resolve())
      assert.deepStrictEqual(watcher.errors(), [
        { kind: "uncaughtException", error: boom },
        { kind: "unhandledRejection", error: "nope" }
      ])
      assert.deepStrictEqual(watcher.describe(), ["uncaughtException: Error: boom", "unhandledRejection: nope"])
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(emitter.listenerCount("uncaughtException"), 0)
      assert.strictEqual(emitter.listenerCount("unhandledRejection"), 0)
    }))

  it.live("installs listeners on the process for the scope only", () =>
    Effect.gen(function*() {
      const uncaught = process.listenerCount("uncaughtException")
      const rejections = process.listenerCount("unhandledRejection")
      yield* Effect.scoped(Effect.gen(function*() {
        const watcher = yield* watchProcessErrors
        assert.strictEqual(process.listenerCount("uncaughtException"), uncaught + 1)
        assert.strictEqual(process.listenerCount("unhandledRejection"), rejections + 1)
        assert.deepStrictEqual(watcher.errors(), [])
      }))
      assert.strictEqual(process.listenerCount("uncaughtException"), uncaught)
      assert.strictEqual(process.listenerCount("unhandledRejection"), rejections)
    }))
})
