/**
 * `npm run bench` (about 9 minutes) and `npm run bench -- --quick` (under a minute).
 *
 * The npm script compiles the project with tsc into `.bench-build/` and runs this file from there, so the
 * numbers are those of the JavaScript a library user would run (tsx/esbuild add helpers to every function
 * that distort hot paths). It uses `DATABASE_URL` when set (creating, and finally dropping, one table in
 * it), or else starts a throwaway embedded PostgreSQL. Each suite runs in its own child process
 * (`suite-child.ts`), so one suite's JIT state and garbage do not carry into the next. Options:
 *
 *   --quick            short cells and 3 rounds: a smoke test of the harness and a rough picture
 *   --only=a,b         run only some suites: select1, transaction, txselect1, checkout, oneshot, tracing, memory
 *   --candidates=a,b   run only the candidates with these names (as printed in the report)
 *   --profile          write a CPU profile of each suite's process to bench/results/*.cpuprofile
 *                      (e.g. `npm run bench -- --only=select1 --candidates=PgPool.query --profile`)
 *
 * The report goes to stdout, `bench/results/<date-time>.md` and `bench/results/latest.md`; a quick run
 * writes `<date-time>-quick.md` and `latest-quick.md` instead, so it never replaces the full table.
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import * as Child from "./child.js"
import * as Database from "./database.js"
import { describe } from "./machine.js"
import { measureMemory } from "./memory.js"
import type { MemoryResult } from "./memory.js"
import { render } from "./report.js"
import { parseArgs } from "./settings.js"
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

const main = async (): Promise<void> => {
  const options = parseArgs(process.argv.slice(2))
  const { only, settings } = options
  checkNames(options)
  const root = fileURLToPath(new URL("../../", import.meta.url))
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
    load: { start: loadAtStart, end: os.loadavg()[0]! }
  })
  const suffix = settings.mode === "quick" ? "-quick" : ""
  const file = path.join(dir, `${stamp}${suffix}.md`)
  writeFileSync(file, report)
  writeFileSync(path.join(dir, `latest${suffix}.md`), report)
  log(`\n${report}`)
  log(`written: ${path.relative(root, file)} and bench/results/latest${suffix}.md`)
}

Child.runMain(main)
