/**
 * Small helpers of the fault tests: real time, and the value or failure of an Exit as an assertion.
 */
import { assert } from "@effect/vitest"
import { Cause, Effect, Exit, Option } from "effect"

/** Real time in milliseconds (monotonic). */
export const now = Effect.sync(() => performance.now())

/** Runs `effect`, returns its exit and how long it took in real milliseconds. */
export const timedExit = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const start = yield* now
    const exit = yield* Effect.exit(effect)
    return { millis: (yield* now) - start, exit }
  })

/** The failure of an exit (asserting that there is one, and that it is a failure rather than a defect). */
export const failureOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  if (Exit.isSuccess(exit)) return assert.fail(`expected a failure, got a success: ${JSON.stringify(exit.value)}`)
  const failure = Cause.failureOption(exit.cause)
  if (Option.isNone(failure)) return assert.fail(`expected a failure, got ${Cause.pretty(exit.cause)}`)
  return failure.value
}

/** The value of an exit (asserting that it is a success). */
export const valueOf = <A, E>(exit: Exit.Exit<A, E>): A =>
  Exit.isSuccess(exit) ? exit.value : assert.fail(`expected a success, got ${Cause.pretty(exit.cause)}`)
