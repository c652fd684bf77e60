/**
 * One run of the benchmark, once `main.ts` has read the options (and built the baseline, if any): the suites,
 * each in a child process, then the report. See `main.ts` for the options.
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Baseline from "./baseline.js"
import * as Child from "./child.js"
import * as Database from "./database.js"
import { describe } from "./machine.js"
import { measureMemory } from "./memory.js"
import type { MemoryResult } from "./memory.js"
import { render } from "./report.js"
import type { Options } from "./settings.js"
import { select1 } from "./sql-candidates.js"
import type { SuiteResult } from "./suite.js"
import { suite } from "./suites.js"

const log = (line: string): void => {
  process.stdout.write(`${line}\n`)
}

/** Fails early, before the database starts, when a `--candidates` name matches no candidate. */
const checkNames = (options: Options): void => {
  if (options.candidates === undefined) return
  const known = new Set(
    options.only.flatMap((id) =>
      id === "memory" ? select1.map((c) => c.name) : suite(id, options.settings).spec.candidates.map((c) => c.name)
    )
  )
  const unknown = options.candidates.filter((name) => !known.has(name))
  if (unknown.length > 0) {
    throw new Error(`No candidate named ${unknown.join(", ")} in the chosen suites; known: ${[...known].join(", ")}`)
  }
}

export const run = async (options: Options, root: string): Promise<void> => {
  const { only, settings } = options
  checkNames(options)
  const dir = path.join(root, "bench", "results")
  mkdirSync(dir, { recursive: true })
  const startedAt = new Date()
  const loadAtStart = os.loadavg()[0]!
  const stamp = `${startedAt.toISOString().slice(0, 19).replace(/:/g, "-")}Z`
  const started = performance.now()
  const machine = describe(root)
  log(`effect-pg-pool bench, ${settings.mode} mode: ${machine.cpu}, ${machine.cores} cores, node ${machine.node}`)
  const database = await Database.open()
  const stop = (signal: NodeJS.Signals) => {
    log(`\n${signal}: stopping the database and exiting`)
    void database.close().finally(() => process.exit(130))
  }
  process.once("SIGINT", stop)
  process.once("SIGTERM", stop)
  log(`PostgreSQL ${database.serverVersion} (${database.source})`)

  const suites: Array<SuiteResult> = []
  let memory: MemoryResult | undefined
  try {
    for (const id of only) {
      if (id === "memory") {
        memory = await measureMemory(database, settings.memory, options.candidates, log)
        continue
      }
      const profile = options.profile
        ? ["--cpu-prof", `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${stamp}-${id}.cpuprofile`]
        : []
      const result = await Child.run<SuiteResult>({
        script: Child.script("suite-child.js"),
        args: [id, settings.mode, options.candidates === undefined ? "" : JSON.stringify(options.candidates)],
        nodeArgs: profile,
        url: database.url,
        timeoutMs: 30 * 60_000
      })
      if (options.profile) log(`profile: bench/results/${stamp}-${id}.cpuprofile`)
      suites.push(result)
    }
  } finally {
    await database.close()
  }

  const report = render({
    startedAt,
    mode: settings.mode,
    machine,
    database,
    suites,
    memory,
    wallMs: performance.now() - started,
    baseline: Baseline.commit(),
    load: { start: loadAtStart, end: os.loadavg()[0]! }
  })
  const suffix = `${settings.mode === "quick" ? "-quick" : ""}${Baseline.commit() === undefined ? "" : "-baseline"}`
  const file = path.join(dir, `${stamp}${suffix}.md`)
  writeFileSync(file, report)
  writeFileSync(path.join(dir, `latest${suffix}.md`), report)
  log(`\n${report}`)
  log(`written: ${path.relative(root, file)} and bench/results/latest${suffix}.md`)
}
