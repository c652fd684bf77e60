/**
 * pgbench `-M prepared` (PostgreSQL's own C client, libpq) as the ceiling: the same statements through no pool
 * at all, one connection per client, each client sending its next statement the moment the last is answered.
 * It runs as a child process for the length of a cell; its throughput comes from its own summary
 * (transactions processed, tps), its CPU from the shell's `times` (user + system of its children). Its
 * latencies are left out: pgbench reads the clock lazily, once per batch of answers, so at 8 clients and more
 * about half of its logged latencies are 0 µs, which would make its p50 meaningless.
 *
 * pgbench opens one connection per client, so it runs `min(workers, POOL_SIZE)` clients: the pools' 10
 * connections, which is what the pools' workers share. It is not installed with the package: Debian's
 * `postgresql-client` has it. Where it is missing the candidate fails at open and the report says so.
 */
import * as Redacted from "effect/Redacted"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ready } from "./candidate.js"
import type { Candidate } from "./candidate.js"
import type { Target } from "./database.js"
import type { Workload } from "./runner.js"

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs `pgbench args` under bash, whose `times` then prints the CPU time of its children (pgbench). */
const runPgbench = (args: ReadonlyArray<string>): Promise<Run> =>
  new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", "pgbench \"$@\" && times", "pgbench", ...args], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
    })
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString()
    })
    child.on("error", reject)
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

/** Seconds of a `times` field such as `0m1.234s`. */
const seconds = (field: string): number => {
  const match = /^(\d+)m([\d.]+)s$/.exec(field)
  if (match === null) throw new Error(`unexpected output of times: ${field}`)
  return Number(match[1]) * 60 + Number(match[2])
}

const fail = (what: string, run: Run): Error =>
  new Error(
    `pgbench ${what} (exit ${run.code}): ${(run.stderr || run.stdout).trim().split("\n").slice(-3).join(" / ")}`
  )

/** The name of the pgbench candidates. */
export const PGBENCH = "pgbench -M prepared"

/**
 * A pgbench candidate running `script` (pgbench's script language) with `maxClients` connections at most.
 */
export const pgbench = (script: string, maxClients: number): Candidate<Target> =>
  ready(PGBENCH, "alternative", async (db) => {
    const version = await runPgbench(["--version"])
    if (version.code !== 0) throw fail("is not available", version)
    const dir = mkdtempSync(join(tmpdir(), "effect-pg-pool-pgbench-"))
    const file = join(dir, "script.sql")
    writeFileSync(file, script)
    const workload: Workload = {
      run: async ({ deadline, recorder, workers }) => {
        const clients = Math.min(workers, maxClients)
        const duration = Math.max(1, Math.round((deadline - performance.now()) / 1000))
        const run = await runPgbench([
          "--no-vacuum",
          "--protocol=prepared",
          `--client=${clients}`,
          `--jobs=${Math.min(clients, 2)}`,
          `--time=${duration}`,
          `--file=${file}`,
          Redacted.value(db.url)
        ])
        if (run.code !== 0) throw fail("failed", run)
        const processed = /number of transactions actually processed: (\d+)/.exec(run.stdout)
        const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(run.stdout)
        const times = run.stdout.trim().split("\n").slice(-1)[0]!.trim().split(/\s+/)
        if (processed === null || tps === null || times.length !== 2) throw fail("printed no tps", run)
        recorder.ops = Number(processed[1])
        return {
          elapsedMs: recorder.ops / Number(tps[1]) * 1000,
          cpuMicros: (seconds(times[0]!) + seconds(times[1]!)) * 1e6
        }
      }
    }
    return { workload, close: async () => rmSync(dir, { recursive: true, force: true }) }
  })
