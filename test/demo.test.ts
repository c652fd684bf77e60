import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { runDemo } from "../demo/program.js"

describe("the demo (npm start), short", () => {
  it.live(
    "runs a workload through a server restart and recovers, keeping the balance invariant",
    () =>
      Effect.gen(function*() {
        const result = yield* runDemo({ seconds: 4, concurrency: 100, databaseUrl: undefined, tty: false })
        assert.isTrue(result.ok)
        assert.isAbove(result.tally.requests, 1000)
        assert.isDefined(result.tally.firstSuccessAfterRestart)
        assert.strictEqual(result.stats.inUse, 0)
      }),
    120_000
  )
})
