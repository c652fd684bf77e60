/**
 * A load of worker fibers on a pool, for the fault tests: every outcome recorded with its real start and end
 * time, its failure's tag, message and, for a `ConnectionError`, its SQLSTATE, attempts and `retryable`. A
 * failure does not stop a worker and nothing is retried by the load; a worker pauses after a failure (as a real
 * client would) or after every statement (`pace`). Also a bounded poll in real time.
 */
import { assert } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Fiber, Option } from "effect"
import type * as PgPool from "../../src/PgPool.js"
import type { ConnectionError } from "../../src/PgPoolError.js"
import { now } from "./exits.js"

export interface Outcome {
  readonly worker: number
  readonly startedAt: number
  readonly endedAt: number
  /** Undefined on success, else the failure's tag (or "defect" / "interrupted" / "wrong result"). */
  readonly error: string | undefined
  readonly message: string | undefined
  readonly code: string | undefined
  readonly attempts: number | undefined
  readonly retryable: boolean | undefined
}

export interface LoadOptions {
  /** The `n`-th statement of worker `index`; default `select pg_sleep(0.005), $1::int as worker`. */
  readonly statement?: (index: number, n: number) => { readonly text: string; readonly params: ReadonlyArray<unknown> }
  /** Whether the rows answered to worker `index` are right; default: the default statement's check. */
  readonly check?: (rows: ReadonlyArray<PgPool.Row>, index: number) => boolean
  /** Pause after every statement (ms): a paced load; else the worker pauses only after a failure. */
  readonly pace?: number
  /** Pause after a failure (ms) when the load is not paced; default 5. */
  readonly pauseAfterFailure?: number
}

const defaultStatement = (index: number) => ({ text: "select pg_sleep(0.005), $1::int as worker", params: [index] })
const defaultCheck = (rows: ReadonlyArray<PgPool.Row>, index: number) => rows.length === 1 && rows[0]!.worker === index

/** Starts `workers` fibers on `pool` in the current Scope; `stop` ends them and returns every outcome. */
export const startLoad = (pool: PgPool.PgPool, workers: number, options: LoadOptions = {}) =>
  Effect.gen(function*() {
    const statement = options.statement ?? defaultStatement
    const check = options.check ?? (options.statement === undefined ? defaultCheck : () => true)
    const outcomes: Array<Outcome> = []
    let running = true
    let n = 0
    const worker = (index: number) =>
      Effect.gen(function*() {
        while (running) {
          const { params, text } = statement(index, n++)
          const startedAt = yield* now
          const exit = yield* Effect.exit(pool.query(text, params))
          const endedAt = yield* now
          if (Exit.isSuccess(exit)) {
            outcomes.push({
              worker: index,
              startedAt,
              endedAt,
              error: check(exit.value, index) ? undefined : "wrong result",
              message: undefined,
              code: undefined,
              attempts: undefined,
              retryable: undefined
            })
          } else {
            const failure = Cause.failureOption(exit.cause)
            const connectionError = Option.isSome(failure) && failure.value._tag === "ConnectionError"
              ? failure.value as ConnectionError
              : undefined
            outcomes.push({
              worker: index,
              startedAt,
              endedAt,
              error: Option.isSome(failure)
                ? failure.value._tag
                : Cause.isInterruptedOnly(exit.cause)
                ? "interrupted"
                : "defect",
              message: Option.isSome(failure) ? failure.value.message : Cause.pretty(exit.cause),
              code: connectionError?.code,
              attempts: connectionError?.attempts,
              retryable: connectionError?.retryable
            })
            if (options.pace === undefined) yield* Effect.sleep(`${options.pauseAfterFailure ?? 5} millis`)
          }
          if (options.pace !== undefined) yield* Effect.sleep(`${options.pace} millis`)
        }
      })
    const fiber = yield* Effect.forkScoped(
      Effect.forEach(Array.from({ length: workers }, (_, i) => i), worker, { concurrency: "unbounded", discard: true })
    )
    return {
      outcomes: Effect.sync(() => outcomes.slice()),
      stop: Effect.sync(() => void (running = false)).pipe(
        Effect.zipRight(Fiber.join(fiber)),
        Effect.zipRight(Effect.sync(() => outcomes.slice()))
      )
    }
  })

/** The workers that had a statement answered that they issued after `time`. */
export const workersWithSuccessAfter = (outcomes: ReadonlyArray<Outcome>, time: number): Set<number> =>
  new Set(outcomes.filter((o) => o.error === undefined && o.startedAt > time).map((o) => o.worker))

export const describeOutcomes = (outcomes: ReadonlyArray<Outcome>) =>
  JSON.stringify(outcomes.map((o) => ({ ...o, startedAt: Math.round(o.startedAt), endedAt: Math.round(o.endedAt) })))

/**
 * Runs `effect` every 25 ms until `done` holds (a failure counts as "not yet"), for at most `ms` of real time;
 * fails the test with the last value otherwise. Returns the value and how long it took.
 */
export const poll = <A, E, R>(label: string, effect: Effect.Effect<A, E, R>, done: (a: A) => boolean, ms: number) =>
  Effect.gen(function*() {
    const start = yield* now
    for (;;) {
      const result = yield* Effect.either(effect)
      if (Either.isRight(result) && done(result.right)) return { value: result.right, millis: (yield* now) - start }
      if ((yield* now) - start >= ms) {
        const last = Either.isRight(result) ? JSON.stringify(result.right) : String(result.left)
        return assert.fail(`${label}: not done after ${ms} ms; last: ${last}`)
      }
      yield* Effect.sleep("25 millis")
    }
  })
