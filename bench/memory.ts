/**
 * Client CPU time per query and the process's resident set size at several worker counts, each candidate in
 * its own child process (`rss-child.ts`) per count, one after the other, in rotated order over the rounds.
 * pgbench runs in a process of its own anyway, so it is left out.
 */
import type { Role } from "./candidate.js"
import * as Child from "./child.js"
import type { Target } from "./database.js"
import { PGBENCH } from "./pgbench.js"
import type { ChildReport } from "./rss-child.js"
import type { MemorySettings } from "./settings.js"
import { select1 } from "./sql-candidates.js"

interface MemoryRow {
  readonly name: string
  readonly role: Role
  readonly note: string | undefined
  readonly reports: ReadonlyArray<ChildReport>
}

interface MemoryLevel {
  readonly workers: number
  readonly rows: ReadonlyArray<MemoryRow>
}

export interface MemoryResult {
  readonly settings: MemorySettings
  readonly levels: ReadonlyArray<MemoryLevel>
}

/** The candidates measured in a process of their own: all of SELECT 1's but pgbench. */
const inProcess = select1.filter((candidate) => candidate.name !== PGBENCH)

export const measureMemory = async (
  target: Target,
  settings: MemorySettings,
  names: ReadonlyArray<string> | undefined,
  log: (line: string) => void
): Promise<MemoryResult> => {
  const levels: Array<MemoryLevel> = []
  for (const workers of settings.workers) {
    levels.push(await measureLevel(target, settings, workers, names, log))
  }
  return { settings, levels }
}

const measureLevel = async (
  target: Target,
  settings: MemorySettings,
  workers: number,
  names: ReadonlyArray<string> | undefined,
  log: (line: string) => void
): Promise<MemoryLevel> => {
  log(`\n## CPU and RSS at ${workers} workers (one child process per candidate)`)
  const script = Child.script("rss-child.js")
  const args = [String(workers), String(settings.warmupMs), String(settings.durationMs)]
  const chosen = names === undefined ? inProcess : inProcess.filter((candidate) => names.includes(candidate.name))
  const runnable = chosen.filter((candidate) => candidate._tag === "Ready")
  const reports = new Map<string, Array<ChildReport>>(runnable.map((candidate) => [candidate.name, []]))
  const notes = new Map<string, string>()
  for (let round = 0; round < settings.repetitions; round++) {
    const order = runnable.map((_, i) => runnable[(i + round) % runnable.length]!)
    const line: Array<string> = []
    for (const candidate of order) {
      if (notes.has(candidate.name)) continue
      try {
        const report = await Child.run<ChildReport>({
          script,
          args: [candidate.name, ...args],
          nodeArgs: ["--expose-gc"],
          url: target.url,
          timeoutMs: 120_000
        })
        reports.get(candidate.name)!.push(report)
        line.push(`${candidate.name} ${(report.peakRssBytes / 2 ** 20).toFixed(0)} MiB`)
      } catch (error) {
        const note = `failed: ${error instanceof Error ? error.message : String(error)}`
        notes.set(candidate.name, note)
        log(`  ${candidate.name} ${note}`)
      }
    }
    log(`  [round ${round + 1}/${settings.repetitions}] ${line.join(" | ")}`)
  }
  return {
    workers,
    rows: chosen.map((candidate) => ({
      name: candidate.name,
      role: candidate.role,
      note: candidate._tag === "Pending" ? `not yet available (${candidate.reason})` : notes.get(candidate.name),
      reports: reports.get(candidate.name) ?? []
    }))
  }
}
