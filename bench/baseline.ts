/**
 * `--baseline=<git revision>`: the pool as it was at another commit, measured in the same run as the current
 * code, so that a change's cost shows as a ratio of two cells run side by side (absolute figures drift between
 * runs on a shared machine; a regression of 20 µs per transaction once went unnoticed for that reason).
 *
 * The revision is checked out in a temporary git worktree and compiled with this checkout's TypeScript and
 * node_modules into `.bench-build/baseline/`, where its imports resolve to the same packages as the current
 * code's. The child processes find it through `BENCH_BASELINE_DIR` and load its `PgPool` and `Transaction`
 * modules; its candidates are "alternatives", so the report gives ours ÷ baseline.
 */
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, symlinkSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import type * as PgPool from "../src/PgPool.js"
import type * as Transaction from "../src/Transaction.js"

/** The environment variable naming the compiled baseline's directory, for the child processes. */
const BASELINE_DIR = "BENCH_BASELINE_DIR"

/** The environment variable holding the baseline's commit (short hash), for the report. */
const BASELINE_COMMIT = "BENCH_BASELINE_COMMIT"

/**
 * Checks out `revision` in a temporary worktree, compiles it into `<root>/.bench-build/baseline/` and sets the
 * two variables above. Fails with git's or tsc's message when the revision is unknown or does not compile.
 */
export const build = (root: string, revision: string, log: (line: string) => void): void => {
  const git = (...args: ReadonlyArray<string>): string =>
    execFileSync("git", ["-C", root, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim()
  let commit: string
  try {
    commit = git("rev-parse", "--short", `${revision}^{commit}`)
  } catch (error) {
    const detail = String((error as { readonly stderr?: unknown }).stderr ?? error).trim()
    throw new Error(`--baseline=${revision} names no commit of this repository (git: ${detail})`)
  }
  const tree = mkdtempSync(path.join(os.tmpdir(), "effect-pg-pool-baseline-"))
  const dir = path.join(root, ".bench-build", "baseline")
  const modules = path.join(tree, "node_modules")
  log(`baseline: compiling ${revision} (${commit}) into .bench-build/baseline`)
  rmSync(dir, { recursive: true, force: true })
  git("worktree", "add", "--detach", "--force", tree, commit)
  try {
    symlinkSync(path.join(root, "node_modules"), modules, "dir")
    const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
    execFileSync(process.execPath, [tsc, "-p", path.join(tree, "bench", "tsconfig.json"), "--outDir", dir], {
      stdio: "inherit"
    })
  } finally {
    // the link first, so that removing the worktree cannot reach this checkout's node_modules
    rmSync(modules, { force: true })
    git("worktree", "remove", "--force", tree)
  }
  process.env[BASELINE_DIR] = dir
  process.env[BASELINE_COMMIT] = commit
}

/** The baseline's commit when this run has one (see `build`). */
export const commit = (): string | undefined => process.env[BASELINE_COMMIT]

/** The baseline's public modules, in a process of a run that has one. */
export interface Modules {
  readonly PgPool: typeof PgPool
  readonly Transaction: typeof Transaction
}

/** Loads the baseline's modules (a candidate's `open`, in a run that has a baseline). */
export const load = async (): Promise<Modules> => {
  const dir = process.env[BASELINE_DIR]
  if (dir === undefined) throw new Error(`${BASELINE_DIR} is not set: the run has no --baseline`)
  const url = (name: string) => pathToFileURL(path.join(dir, "src", name)).href
  const [pool, transaction] = await Promise.all([import(url("PgPool.js")), import(url("Transaction.js"))])
  return { PgPool: pool as typeof PgPool, Transaction: transaction as typeof Transaction }
}
