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
 *   --baseline=<rev>   also measure the pool as it was at git revision <rev>, next to the current code, as the
 *                      alternative "(baseline)" (see baseline.ts); e.g. `npm run bench -- --baseline=HEAD~3
 *                      --only=select1,txselect1 --candidates="PgPool.query,PgPool.query (baseline)"`
 *
 * The report goes to stdout, `bench/results/<date-time>.md` and `bench/results/latest.md`; a quick run
 * writes `<date-time>-quick.md` and `latest-quick.md` instead, and a run with a baseline `-baseline.md` ones,
 * so that neither replaces the full table.
 */
import { fileURLToPath } from "node:url"
import * as Baseline from "./baseline.js"
import * as Child from "./child.js"
import { parseArgs } from "./settings.js"

Child.runMain(async () => {
  const options = parseArgs(process.argv.slice(2))
  const root = fileURLToPath(new URL("../../", import.meta.url))
  if (options.baseline !== undefined) {
    Baseline.build(root, options.baseline, (line) => process.stdout.write(`${line}\n`))
  }
  // imported once the baseline is built: the candidate lists hold its candidates only in a run that has one
  const { run } = await import("./run.js")
  await run(options, root)
})
