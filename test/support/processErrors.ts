/**
 * Watches the process for uncaught exceptions and unhandled rejections while a test runs, so a fault test
 * can assert that none happened ("the process saw no uncaught exception or unhandled rejection").
 *
 * ```ts
 * it.scopedLive("restart", () =>
 *   Effect.gen(function*() {
 *     const watcher = yield* watchProcessErrors
 *     // ... faults ...
 *     assert.deepStrictEqual(watcher.errors(), [])
 *   }))
 * ```
 *
 * The listeners are process-wide: they also see errors of anything else running in the same worker at the
 * same time (tests of one file run one after the other unless a test opts into concurrency). Vitest's own
 * listeners stay installed, so an error seen here is also reported by vitest as an unhandled error.
 */
import { Effect } from "effect"
import type { Scope } from "effect"
import type { EventEmitter } from "node:events"

type ProcessErrorKind = "uncaughtException" | "unhandledRejection"

interface ProcessError {
  readonly kind: ProcessErrorKind
  /** The thrown value or the rejection reason. */
  readonly error: unknown
}

export interface ProcessErrors {
  /** What was seen so far, oldest first. */
  readonly errors: () => ReadonlyArray<ProcessError>
  /** The errors as one line each (`kind: message`), for assertion messages. */
  readonly describe: () => ReadonlyArray<string>
}

const describeError = (error: unknown): string =>
  error instanceof Error ? `${error.name}: ${error.message}` : typeof error === "string" ? error : String(error)

/**
 * Installs `uncaughtException` and `unhandledRejection` listeners on `emitter` (the process by default) for
 * the lifetime of the current Scope.
 */
export const watchProcessErrorsOn = (emitter: EventEmitter): Effect.Effect<ProcessErrors, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => {
        const seen: Array<ProcessError> = []
        const onUncaught = (error: unknown) => {
          seen.push({ kind: "uncaughtException", error })
        }
        const onRejection = (reason: unknown) => {
          seen.push({ kind: "unhandledRejection", error: reason })
        }
        emitter.on("uncaughtException", onUncaught)
        emitter.on("unhandledRejection", onRejection)
        return { seen, onUncaught, onRejection }
      }),
      ({ onRejection, onUncaught }) =>
        Effect.sync(() => {
          emitter.off("uncaughtException", onUncaught)
          emitter.off("unhandledRejection", onRejection)
        })
    ),
    ({ seen }): ProcessErrors => ({
      errors: () => seen.slice(),
      describe: () => seen.map((e) => `${e.kind}: ${describeError(e.error)}`)
    })
  )

/** Watches this process for uncaught exceptions and unhandled rejections while the current Scope is open. */
export const watchProcessErrors: Effect.Effect<ProcessErrors, never, Scope.Scope> = Effect.suspend(() =>
  watchProcessErrorsOn(process)
)
