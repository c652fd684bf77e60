import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { runDemo } from "../demo/program.js"

describe("the demo (npm start), short", () => {
  it.live(
    "runs a workload through a real server restart, counts what it did to the requests, keeps the balance invariant",
    () =>
      Effect.gen(function*() {
        const result = yield* runDemo({ seconds: 4, concurrency: 100, databaseUrl: undefined, tty: false })
        assert.isAbove(result.tally.requests, 1000)
        assert.strictEqual(result.total, 1000 * 1000)
        const restart = result.restart
        assert.isDefined(restart)
        if (restart === undefined) return
        // a new server process: the server's own start time changed
        assert.notStrictEqual(restart.startTimeAfter, restart.startTimeBefore)
        assert.isAbove(Date.parse(restart.startTimeAfter), Date.parse(restart.startTimeBefore))
        assert.isTrue(restart.startTimeChanged)
        assert.isTrue(restart.began <= restart.stopped && restart.stopped <= restart.back)
        // requests in flight were cut by the shutdown, nothing succeeded while the server was down, and the
        // requests succeeded again after it was back
        assert.isAbove(restart.failedDuringRestart, 0)
        assert.strictEqual(restart.succeededWhileDown, 0)
        assert.isDefined(restart.firstSuccessAfterBack)
        // the summary counts the failures by cause: those of the restart are among them
        const failed = [...result.tally.failures.values()].reduce((a, b) => a + b, 0)
        assert.isAtLeast(failed, restart.failedDuringRestart)
        assert.isTrue(result.ok)
        assert.strictEqual(result.stats.inUse, 0)
      }),
    120_000
  )
})
