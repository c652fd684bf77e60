/**
 * Measurements run in child processes, so each starts from a fresh heap and fresh JIT state (one suite's
 * shapes and garbage do not slow the next, and a process's RSS is one candidate's). A child prints its
 * progress to stderr (passed through) and its result as the last line of stdout, in JSON.
 */
import * as Redacted from "effect/Redacted"
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"

/** The environment variable a child reads the database URL from (never the command line, which `ps` shows). */
const URL_VARIABLE = "BENCH_DATABASE_URL"

/** Path of a compiled script next to this one. */
export const script = (name: string): string => fileURLToPath(new URL(`./${name}`, import.meta.url))

export interface RunOptions {
  readonly script: string
  readonly args: ReadonlyArray<string>
  /** Flags for node itself, e.g. `--expose-gc`. */
  readonly nodeArgs?: ReadonlyArray<string> | undefined
  readonly url: Redacted.Redacted | undefined
  readonly timeoutMs: number
}

/** Runs a compiled script in a new node process and resolves with the JSON value it emitted. */
export const run = <A>(options: RunOptions): Promise<A> =>
  new Promise((resolve, reject) => {
    const { url } = options
    const env = url === undefined ? process.env : { ...process.env, [URL_VARIABLE]: Redacted.value(url) }
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), options.script, ...options.args], {
      env,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let lastError = ""
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk
    })
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      process.stderr.write(chunk)
      lastError = (lastError + chunk).slice(-2000)
    })
    const timer = setTimeout(() => child.kill("SIGTERM"), options.timeoutMs)
    child.on("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      const line = stdout.trim().split("\n").pop() ?? ""
      if (code !== 0) {
        const reason = signal !== null ? `killed by ${signal}` : `exit code ${code}`
        reject(new Error(`${reason}: ${lastError.trim().split("\n").slice(-1)[0] ?? ""}`))
        return
      }
      try {
        resolve(JSON.parse(line) as A)
      } catch {
        reject(new Error(`unreadable result from the child process: ${line.slice(0, 200)}`))
      }
    })
  })

/** In a child: the database URL the parent passed. */
export const targetUrl = (): Redacted.Redacted => {
  const url = process.env[URL_VARIABLE]
  if (url === undefined || url === "") throw new Error(`${URL_VARIABLE} is not set`)
  return Redacted.make(url)
}

/** In a child: hands the result to the parent. */
export const emit = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value)}\n`)
}

/** In a child: runs `main`, reporting a failure on stderr with a non-zero exit code. */
export const runMain = (main: () => Promise<void>): void => {
  main().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`${error instanceof Error ? error.stack ?? error.message : String(error)}\n`)
      process.exit(1)
    }
  )
}
