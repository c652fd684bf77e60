/**
 * A candidate is one library (or one way of using ours) measured in a suite. Candidates that do not exist
 * yet stay in the lists as `pending`, so the report keeps their slot and adding one is a one-line change.
 */
import type * as Effect from "effect/Effect"
import type * as ManagedRuntime from "effect/ManagedRuntime"
import { effectWorkload, promiseWorkload } from "./runner.js"
import type { Workload } from "./runner.js"

/**
 * - `ours`: this package; ratios are computed for these rows;
 * - `alternative`: what users would pick instead; the denominators of the ratios;
 * - `reference`: a floor for orientation (e.g. no pool at all), left out of the ratios.
 */
export type Role = "ours" | "alternative" | "reference"

/** A candidate opened for a suite: its workload, and how to release what it holds. */
export interface Opened {
  readonly workload: Workload
  readonly close: () => Promise<void>
}

export type Candidate<Ctx> =
  | {
    readonly _tag: "Ready"
    readonly name: string
    readonly role: Role
    readonly open: (ctx: Ctx) => Promise<Opened>
  }
  | {
    readonly _tag: "Pending"
    readonly name: string
    readonly role: Role
    readonly reason: string
  }

export const ready = <Ctx>(name: string, role: Role, open: (ctx: Ctx) => Promise<Opened>): Candidate<Ctx> => ({
  _tag: "Ready",
  name,
  role,
  open
})

/**
 * A candidate not yet available, which keeps its slot in the report (none today: see the header).
 *
 * @public
 */
export const pending = <Ctx>(name: string, role: Role, reason: string): Candidate<Ctx> => ({
  _tag: "Pending",
  name,
  role,
  reason
})

/** A candidate run by a `ManagedRuntime` (built before the first cell, disposed at the end of the suite). */
export const fromRuntime = async <R, ER, E>(
  runtime: ManagedRuntime.ManagedRuntime<R, ER>,
  op: Effect.Effect<unknown, E, R>
): Promise<Opened> => {
  await runtime.runtime()
  return {
    workload: effectWorkload((effect: Effect.Effect<void, E, R>) => runtime.runPromise(effect), op),
    close: () => runtime.dispose()
  }
}

/** A candidate whose operation returns a Promise. */
export const fromPromise = (op: () => PromiseLike<unknown>, close: () => Promise<void>): Opened => ({
  workload: promiseWorkload(op),
  close
})
