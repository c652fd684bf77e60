/**
 * One candidate alone in a fresh Node process, at a given number of workers, so its resident set size is
 * its own (in a shared process every library's pools and garbage share one heap). Started by `memory.ts`;
 * prints one JSON line: {@link ChildReport}.
 *
 * The workers only count their operations here, they do not time each one: a recorder of every latency grows
 * with the candidate's throughput (8 bytes per operation, and a sorted copy at the end), which would charge the
 * harness's memory to the faster candidate. Latencies come from the interleaved cells of the SELECT 1 suite.
 *
 *   BENCH_DATABASE_URL=... node --expose-gc rss-child.js <candidate> <workers> <warmupMs> <durationMs>
 */
import * as Child from "./child.js"
import { runCell } from "./runner.js"
import type { CellResult } from "./runner.js"
import { select1 } from "./sql-candidates.js"

export interface ChildReport {
  /** RSS with every module loaded and no pool open, after a full GC. */
  readonly idleRssBytes: number
  /** Highest RSS seen while the workers ran (sampled every 10 ms). */
  readonly peakRssBytes: number
  readonly cell: CellResult
}

Child.runMain(async () => {
  const [name, workers, warmupMs, durationMs] = process.argv.slice(2)
  const candidate = select1.find((c) => c.name === name)
  if (candidate === undefined || candidate._tag !== "Ready") throw new Error(`No runnable candidate named ${name}`)
  ;(globalThis as { gc?: () => void }).gc?.()
  const idleRssBytes = process.memoryUsage.rss()
  const opened = await candidate.open({ url: Child.targetUrl() })
  try {
    await runCell(opened.workload, Number(workers), Number(warmupMs), false)
    let peakRssBytes = process.memoryUsage.rss()
    const sampler = setInterval(() => {
      peakRssBytes = Math.max(peakRssBytes, process.memoryUsage.rss())
    }, 10)
    const cell = await runCell(opened.workload, Number(workers), Number(durationMs), false)
    clearInterval(sampler)
    peakRssBytes = Math.max(peakRssBytes, process.memoryUsage.rss())
    const report: ChildReport = { idleRssBytes, peakRssBytes, cell }
    Child.emit(report)
  } finally {
    await opened.close()
  }
})
