/**
 * A suite: a set of candidates measured at several concurrency levels, interleaved. Every candidate is
 * opened first (its pool stays open for the whole suite), warmed up at every level, and then measured in
 * rounds: each round visits every level and, within a level, every candidate once, in an order rotated
 * from round to round, so slow drifts of the machine (thermal, the server's caches, other tenants) fall on
 * every candidate alike.
 */
import type { Candidate, Opened, Role } from "./candidate.js"
import { runCell } from "./runner.js"
import type { CellResult } from "./runner.js"

/** What a suite measures (plain data: it travels from the child process to the report). */
interface SuiteInfo {
  readonly id: string
  readonly title: string
  readonly description: string
  /** Concurrent workers per cell. */
  readonly levels: ReadonlyArray<number>
  /** Time every operation (p50/p99), or only count them. */
  readonly latency: boolean
  readonly durationMs: number
  readonly warmupMs: number
  readonly repetitions: number
}

export interface SuiteSpec<Ctx> extends SuiteInfo {
  readonly candidates: ReadonlyArray<Candidate<Ctx>>
}

type RowStatus = "ok" | "pending" | "failed"

export interface Row {
  readonly name: string
  readonly role: Role
  readonly status: RowStatus
  readonly note: string | undefined
  /** Per level, the result of each round (null where the round did not run). */
  readonly cells: ReadonlyArray<readonly [level: number, rounds: ReadonlyArray<CellResult | null>]>
}

export interface SuiteResult {
  readonly info: SuiteInfo
  readonly rows: ReadonlyArray<Row>
  readonly wallMs: number
}

interface State<Ctx> {
  readonly candidate: Candidate<Ctx>
  opened: Opened | undefined
  status: RowStatus
  note: string | undefined
  readonly cells: Map<number, Array<CellResult | null>>
}

/** The suite with only the named candidates (all of them when `names` is undefined). */
export const selectCandidates = <Ctx>(
  spec: SuiteSpec<Ctx>,
  names: ReadonlyArray<string> | undefined
): SuiteSpec<Ctx> =>
  names === undefined ? spec : { ...spec, candidates: spec.candidates.filter((c) => names.includes(c.name)) }

const message = (error: unknown): string => (error instanceof Error ? error.message : String(error)).split("\n")[0]!

const formatRate = (perSecond: number): string =>
  perSecond >= 1e6 ? `${(perSecond / 1e6).toFixed(2)}M` : `${(perSecond / 1e3).toFixed(1)}k`

const rotate = <A>(items: ReadonlyArray<A>, by: number): ReadonlyArray<A> =>
  items.length === 0 ? items : items.map((_, i) => items[(i + by) % items.length]!)

export const runSuite = async <Ctx>(
  spec: SuiteSpec<Ctx>,
  ctx: Ctx,
  log: (line: string) => void
): Promise<SuiteResult> => {
  const started = performance.now()
  const states: Array<State<Ctx>> = spec.candidates.map((candidate) => ({
    candidate,
    opened: undefined,
    status: candidate._tag === "Pending" ? "pending" : "ok",
    note: candidate._tag === "Pending" ? candidate.reason : undefined,
    cells: new Map(spec.levels.map((level) => [level, Array.from({ length: spec.repetitions }, () => null)]))
  }))
  const fail = async (state: State<Ctx>, stage: string, error: unknown) => {
    state.status = "failed"
    state.note = `${stage}: ${message(error)}`
    log(`  ${state.candidate.name} failed (${state.note}); left out of the rest of the suite`)
    const opened = state.opened
    state.opened = undefined
    await opened?.close().catch(() => undefined)
  }
  const live = () => states.filter((state) => state.opened !== undefined)

  log(`\n## ${spec.title}`)
  for (const state of states) {
    if (state.candidate._tag !== "Ready") continue
    try {
      state.opened = await state.candidate.open(ctx)
    } catch (error) {
      await fail(state, "open", error)
    }
  }
  for (const state of live()) {
    for (const level of spec.levels) {
      try {
        await runCell(state.opened!.workload, level, spec.warmupMs, spec.latency)
      } catch (error) {
        await fail(state, "warm-up", error)
        break
      }
    }
  }
  try {
    for (let round = 0; round < spec.repetitions; round++) {
      for (const level of spec.levels) {
        const line: Array<string> = []
        for (const state of rotate(live(), round)) {
          try {
            const cell = await runCell(state.opened!.workload, level, spec.durationMs, spec.latency)
            state.cells.get(level)![round] = cell
            line.push(`${state.candidate.name} ${formatRate(cell.opsPerSecond)}`)
          } catch (error) {
            await fail(state, `${level} workers`, error)
          }
        }
        log(`  [round ${round + 1}/${spec.repetitions}, ${level} workers] ${line.join(" | ")}`)
      }
    }
  } finally {
    for (const state of live()) {
      const opened = state.opened!
      state.opened = undefined
      await opened.close().catch((error) => log(`  closing ${state.candidate.name} failed: ${message(error)}`))
    }
  }
  const { candidates: _, ...info } = spec
  return {
    info,
    rows: states.map((state) => ({
      name: state.candidate.name,
      role: state.candidate.role,
      status: state.status,
      note: state.note,
      cells: [...state.cells]
    })),
    wallMs: performance.now() - started
  }
}
