/**
 * Runs one measurement cell: `workers` concurrent loops of one operation until a deadline, counting
 * operations, optionally timing each one, and taking the client CPU time the process spent.
 *
 * Promise-based libraries run as plain `async` loops; Effect-based ones as fibers of one `runPromise`, each
 * looping with `Effect.whileLoop` (no generator, no extra step per operation), so each candidate is driven
 * the way its users would drive it and the harness adds the same small cost to every one.
 */
import * as Effect from "effect/Effect"
import { quantile, Recorder } from "./stats.js"

interface RunPlan {
  readonly workers: number
  /** `performance.now()` value after which workers stop starting new operations. */
  readonly deadline: number
  /** Time every operation (database workloads) or only count them (sub-microsecond pool workloads). */
  readonly latency: boolean
  readonly recorder: Recorder
}

/**
 * What a workload run in another process measured itself (pgbench): how long it ran and the CPU time it used,
 * in place of this process's clock and CPU.
 */
interface Measured {
  readonly elapsedMs: number
  readonly cpuMicros: number
}

/** Something that can run the workers of a plan to completion. */
export interface Workload {
  readonly run: (plan: RunPlan) => Promise<void | Measured>
}

/** How often a loop that does not time its operations looks at the clock. */
const CLOCK_EVERY = 16

/** A workload of a Promise-returning operation, driven by `async` loops. */
export const promiseWorkload = (op: () => PromiseLike<unknown>): Workload => ({
  run: async ({ deadline, latency, recorder, workers }) => {
    const timed = async (): Promise<void> => {
      let now = performance.now()
      while (now < deadline) {
        await op()
        const end = performance.now()
        recorder.record(end - now)
        now = end
      }
    }
    const counted = async (): Promise<void> => {
      let i = 0
      while ((++i % CLOCK_EVERY) !== 0 || performance.now() < deadline) {
        await op()
        recorder.ops++
      }
    }
    const worker = latency ? timed : counted
    await Promise.all(Array.from({ length: workers }, worker))
  }
})

/**
 * A workload of an Effect, driven by fibers. `runPromise` runs the whole fleet of workers once per cell,
 * typically `ManagedRuntime.runPromise` of the runtime that provides the candidate's services.
 */
export const effectWorkload = <E, R>(
  runPromise: (effect: Effect.Effect<void, E, R>) => Promise<void>,
  op: Effect.Effect<unknown, E, R>
): Workload => ({
  run: ({ deadline, latency, recorder, workers }) => {
    const timed = Effect.suspend(() => {
      let now = performance.now()
      return Effect.whileLoop({
        while: () => now < deadline,
        body: () => op,
        step: () => {
          const end = performance.now()
          recorder.record(end - now)
          now = end
        }
      })
    })
    const counted = Effect.suspend(() => {
      let i = 0
      return Effect.whileLoop({
        while: () => (++i % CLOCK_EVERY) !== 0 || performance.now() < deadline,
        body: () => op,
        step: () => {
          recorder.ops++
        }
      })
    })
    const worker = latency ? timed : counted
    return runPromise(
      Effect.all(Array.from({ length: workers }, () => worker), { concurrency: "unbounded", discard: true })
    )
  }
})

/** What one cell measured. Latencies are in microseconds (NaN when not timed). */
export interface CellResult {
  readonly ops: number
  readonly elapsedMs: number
  readonly opsPerSecond: number
  readonly p50Us: number
  readonly p99Us: number
  /** Client CPU time (user + system, whole process) per operation, in microseconds. */
  readonly cpuPerOpUs: number
}

/**
 * Measures one cell. (No forced `gc()` between cells: measured on this project, a full collection forced
 * before each cell made Effect code 30-60% slower in the cell that followed, far more than the garbage
 * carried over from the previous candidate costs.)
 */
export const runCell = async (
  workload: Workload,
  workers: number,
  durationMs: number,
  latency: boolean
): Promise<CellResult> => {
  const recorder = new Recorder(latency ? 1 << 14 : 1)
  const cpu = process.cpuUsage()
  const start = performance.now()
  const measured = await workload.run({ workers, deadline: start + durationMs, latency, recorder })
  const used = process.cpuUsage(cpu)
  const elapsedMs = measured === undefined ? performance.now() - start : measured.elapsedMs
  const cpuMicros = measured === undefined ? used.user + used.system : measured.cpuMicros
  const sorted = latency ? recorder.sorted() : new Float64Array(0)
  return {
    ops: recorder.ops,
    elapsedMs,
    opsPerSecond: recorder.ops / (elapsedMs / 1000),
    p50Us: quantile(sorted, 0.5) * 1000,
    p99Us: quantile(sorted, 0.99) * 1000,
    cpuPerOpUs: recorder.ops === 0 ? NaN : cpuMicros / recorder.ops
  }
}
