/**
 * Runs one suite in a fresh process and prints its `SuiteResult` as JSON (see `child.ts`).
 *
 *   BENCH_DATABASE_URL=... node suite-child.js <select1|transaction|txselect1|checkout|oneshot|tracing> <quick|full> [names as JSON]
 */
import * as Child from "./child.js"
import { SETTINGS } from "./settings.js"
import { runSuite, selectCandidates } from "./suite.js"
import { suite } from "./suites.js"
import type { MeasuredSuiteId } from "./suites.js"

const log = (line: string): void => {
  process.stderr.write(`${line}\n`)
}

Child.runMain(async () => {
  const [id, mode, names] = process.argv.slice(2)
  if (mode !== "quick" && mode !== "full") throw new Error(`mode must be quick or full, not ${mode}`)
  const settings = SETTINGS[mode]
  if (
    id !== "select1" && id !== "transaction" && id !== "txselect1" && id !== "checkout" && id !== "oneshot" &&
    id !== "tracing"
  ) {
    throw new Error(`unknown suite ${id}`)
  }
  const chosen = suite(id satisfies MeasuredSuiteId, settings)
  const only = names === undefined || names === "" ? undefined : JSON.parse(names) as ReadonlyArray<string>
  const result = chosen._tag === "Database"
    ? await runSuite(selectCandidates(chosen.spec, only), { url: Child.targetUrl() }, log)
    : await runSuite(selectCandidates(chosen.spec, only), undefined, log)
  Child.emit(result)
})
