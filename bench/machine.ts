/** A description of where the benchmark ran, for the report's header. */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

export interface Machine {
  readonly cpu: string
  readonly cores: number
  readonly memoryGiB: number
  readonly os: string
  readonly node: string
  readonly packages: ReadonlyArray<readonly [name: string, version: string]>
  /** Short commit hash, with "+ local changes" when the work tree differs from it; "unknown" outside git. */
  readonly commit: string
}

const PACKAGES = ["effect", "pg", "postgres", "@effect/sql", "@effect/sql-pg", "tarn", "generic-pool"] as const

const packageVersion = (root: string, name: string): string => {
  try {
    const json = JSON.parse(readFileSync(path.join(root, "node_modules", name, "package.json"), "utf8")) as {
      version?: unknown
    }
    return typeof json.version === "string" ? json.version : "unknown"
  } catch {
    return "not installed"
  }
}

const git = (root: string, args: ReadonlyArray<string>): string =>
  execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()

const commit = (root: string): string => {
  try {
    const head = git(root, ["rev-parse", "--short", "HEAD"])
    const dirty = git(root, ["status", "--porcelain", "--untracked-files=no"]) !== ""
    return dirty ? `${head} + local changes` : head
  } catch {
    return "unknown"
  }
}

export const describe = (root: string): Machine => {
  const cpus = os.cpus()
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown",
    cores: os.availableParallelism(),
    memoryGiB: os.totalmem() / 2 ** 30,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    packages: PACKAGES.map((name) => [name, packageVersion(root, name)] as const),
    commit: commit(root)
  }
}
