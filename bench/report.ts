/**
 * The Markdown report: machine, method, the issue's targets with the measured ratios, then one table per
 * suite (medians with min–max over the rounds) and its ratio table (ours ÷ each alternative).
 */
import type { Machine } from "./machine.js"
import type { MemoryResult } from "./memory.js"
import type { CellResult } from "./runner.js"
import { spread } from "./stats.js"
import type { Spread } from "./stats.js"
import type { Row, SuiteResult } from "./suite.js"

export interface ReportInput {
  readonly startedAt: Date
  readonly mode: "quick" | "full"
  readonly machine: Machine
  readonly database: { readonly source: string; readonly serverVersion: string }
  readonly suites: ReadonlyArray<SuiteResult>
  readonly memory: MemoryResult | undefined
  readonly wallMs: number
  /** The commit measured as "(baseline)" (`--baseline`), if any. */
  readonly baseline: string | undefined
  /** 1-minute load averages when the run started and ended: other work on the machine shows up here. */
  readonly load: { readonly start: number; readonly end: number }
}

/** A target (issues 6 and 19): `ours` at least `factor` times `alternative` on operations per second. */
interface Target {
  readonly suite: string
  readonly ours: string
  readonly alternative: string
  readonly level: number
  readonly factor: number
  readonly label: string
}

const TARGETS: ReadonlyArray<Target> = [
  ...[32, 128].map((level) => ({
    suite: "select1",
    ours: "PgPool.query",
    alternative: "pg.Pool",
    level,
    factor: 1.3,
    label: `SELECT 1, ${level} workers`
  })),
  ...[512, 2048].map((level) => ({
    suite: "select1",
    ours: "PgPool.query",
    alternative: "postgres.js",
    level,
    factor: 1,
    label: `SELECT 1, ${level.toLocaleString("en-US")} workers`
  })),
  ...[1, 8].map((level) => ({
    suite: "select1",
    ours: "PgPool.query",
    alternative: "pg.Pool",
    level,
    factor: 1,
    label: `SELECT 1, ${level} worker${level === 1 ? "" : "s"}`
  })),
  ...(["transaction", "txselect1"] as const).map((suite) => ({
    suite,
    ours: "Transaction.withTransaction",
    alternative: "pg.Pool",
    level: 32,
    factor: 1.5,
    label: `${suite === "transaction" ? "BEGIN/SELECT row/UPDATE/COMMIT" : "BEGIN/SELECT 1/COMMIT"}, 32 workers`
  })),
  {
    suite: "select1",
    ours: "PgPoolSql (SqlClient)",
    alternative: "@effect/sql-pg PgClient",
    level: 32,
    factor: 1.5,
    label: "SELECT 1, 32 workers"
  },
  {
    suite: "transaction",
    ours: "PgPoolSql withTransaction",
    alternative: "@effect/sql-pg withTransaction",
    level: 32,
    factor: 1.5,
    label: "transaction, 32 workers"
  },
  ...[1, 64].flatMap((level) =>
    ["tarn", "generic-pool"].map((alternative) => ({
      suite: "checkout",
      ours: "PgPool.withConnection",
      alternative,
      level,
      factor: 1,
      label: `pool alone, checkout + return, ${level} borrower${level === 1 ? "" : "s"}`
    }))
  )
]

// ---------------------------------------------------------------------------------------------------------
// numbers
// ---------------------------------------------------------------------------------------------------------

const cellsOf = (row: Row, level: number): ReadonlyArray<CellResult | null> =>
  row.cells.find(([l]) => l === level)?.[1] ?? []

const metric = (row: Row, level: number, f: (cell: CellResult) => number): Spread =>
  spread(cellsOf(row, level).flatMap((cell) => (cell === null ? [] : [f(cell)])))

const rate = (cell: CellResult) => cell.opsPerSecond

interface Ratio {
  readonly ofMedians: number
  /** The ratio within each round (the two cells ran next to each other in time). */
  readonly paired: Spread
}

const ratio = (ours: Row, alternative: Row, level: number): Ratio | undefined => {
  const a = metric(ours, level, rate)
  const b = metric(alternative, level, rate)
  if (a.n === 0 || b.n === 0) return undefined
  const oursCells = cellsOf(ours, level)
  const altCells = cellsOf(alternative, level)
  const paired = oursCells.flatMap((cell, i) => {
    const other = altCells[i]
    return cell === null || other === undefined || other === null ? [] : [cell.opsPerSecond / other.opsPerSecond]
  })
  return { ofMedians: a.median / b.median, paired: spread(paired) }
}

// ---------------------------------------------------------------------------------------------------------
// formatting
// ---------------------------------------------------------------------------------------------------------

const integer = (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–"

const micros = (n: number): string =>
  !Number.isFinite(n) ? "–" : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : n.toFixed(0)

const mebibytes = (bytes: number): string => Number.isFinite(bytes) ? (bytes / 2 ** 20).toFixed(0) : "–"

const times = (n: number): string => Number.isFinite(n) ? `${n.toFixed(2)}×` : "–"

const formatRatio = (r: Ratio | undefined): string =>
  r === undefined
    ? "–"
    : r.paired.n > 1
    ? `${times(r.ofMedians)} (${r.paired.min.toFixed(2)}–${r.paired.max.toFixed(2)})`
    : times(r.ofMedians)

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>, align?: string): string => {
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map((cell) => cell.replace(/\|/g, "\\|")).join(" | ")} |`
  const rule = align ?? header.map((_, i) => (i < 2 ? "---" : "---:")).join(" | ")
  return [line(header), `| ${rule} |`, ...rows.map(line)].join("\n")
}

const statusNote = (row: Row): string | undefined =>
  row.status === "pending"
    ? `not yet available (${row.note})`
    : row.status === "failed"
    ? `failed: ${row.note}`
    : undefined

// ---------------------------------------------------------------------------------------------------------
// sections
// ---------------------------------------------------------------------------------------------------------

const findRow = (suites: ReadonlyArray<SuiteResult>, suite: string, name: string): Row | undefined =>
  suites.find((s) => s.info.id === suite)?.rows.find((row) => row.name === name)

const targetsSection = (suites: ReadonlyArray<SuiteResult>): string | undefined => {
  const measured = TARGETS.filter((target) => suites.some((suite) => suite.info.id === target.suite))
  if (measured.length === 0) return undefined
  const rows = measured.map((target) => {
    const ours = findRow(suites, target.suite, target.ours)
    const alternative = findRow(suites, target.suite, target.alternative)
    const goal = `${target.ours} ≥ ${target.factor.toFixed(1)}× ${target.alternative}, ${target.label}`
    if (ours === undefined || alternative === undefined) return [goal, "–", "not measured"]
    const unavailable = statusNote(ours) ?? statusNote(alternative)
    if (unavailable !== undefined) return [goal, "–", unavailable]
    const r = ratio(ours, alternative, target.level)
    if (r === undefined) return [goal, "–", "no data"]
    return [goal, formatRatio(r), r.ofMedians >= target.factor ? "**met**" : "**missed**"]
  })
  return `## Targets (issue 6)\n\n${
    table(["target", "measured (per-round range)", "status"], rows, "--- | ---: | ---")
  }`
}

const suiteSection = (index: number, suite: SuiteResult): string => {
  const spec = suite.info
  const unit = spec.latency ? "queries/s" : "ops/s"
  const header = spec.latency
    ? ["workers", "candidate", `${unit} (median)`, "min–max", "p50 µs", "p99 µs", "CPU µs/op"]
    : ["workers", "candidate", `${unit} (median)`, "min–max", "CPU µs/op"]
  const rows: Array<Array<string>> = []
  for (const level of spec.levels) {
    for (const row of suite.rows) {
      const note = statusNote(row)
      if (note !== undefined) {
        if (level === spec.levels[0]) {
          rows.push([
            String(level),
            `${row.name} (${row.role})`,
            note,
            ...header.slice(3).map(() => "")
          ])
        }
        continue
      }
      const qps = metric(row, level, rate)
      const name = row.role === "ours"
        ? `**${row.name}**`
        : row.role === "reference"
        ? `${row.name} (reference)`
        : row.name
      const cells = [String(level), name, integer(qps.median), `${integer(qps.min)}–${integer(qps.max)}`]
      if (spec.latency) {
        cells.push(micros(metric(row, level, (c) => c.p50Us).median), micros(metric(row, level, (c) => c.p99Us).median))
      }
      cells.push(micros(metric(row, level, (c) => c.cpuPerOpUs).median))
      rows.push(cells)
    }
  }
  const ours = suite.rows.filter((row) => row.role === "ours" && row.status === "ok")
  const alternatives = suite.rows.filter((row) => row.role === "alternative" && row.status === "ok")
  const ratioRows = ours.flatMap((o) =>
    spec.levels.map((level) => [o.name, String(level), ...alternatives.map((a) => formatRatio(ratio(o, a, level)))])
  )
  const ratios = ours.length === 0 || alternatives.length === 0
    ? ""
    : `\n\nRatios, ours ÷ alternative (${unit}, ratio of medians; in brackets the range of the per-round ratios):\n\n${
      table(["ours", "workers", ...alternatives.map((a) => `÷ ${a.name}`)], ratioRows)
    }`
  const timing =
    `${spec.repetitions} rounds of ${spec.durationMs} ms per cell after a ${spec.warmupMs} ms warm-up; suite took ${
      (suite.wallMs / 1000).toFixed(0)
    } s.`
  return `## ${index}. ${spec.title}\n\n${spec.description} ${timing}\n\n${table(header, rows)}${ratios}`
}

const memorySection = (index: number, memory: MemoryResult, select1: SuiteResult | undefined): string => {
  const spec = memory.settings
  const rows = memory.levels.flatMap((level) =>
    level.rows.map((row) => {
      if (row.reports.length === 0) return [row.name, String(level.workers), row.note ?? "no data", "", "", "", "", ""]
      const inRun = select1?.rows.find((r) => r.name === row.name)
      const cpuInRun = inRun === undefined ? NaN : metric(inRun, level.workers, (c) => c.cpuPerOpUs).median
      const idle = spread(row.reports.map((r) => r.idleRssBytes)).median
      const peak = spread(row.reports.map((r) => r.peakRssBytes)).median
      return [
        row.role === "ours" ? `**${row.name}**` : row.name,
        String(level.workers),
        micros(cpuInRun),
        micros(spread(row.reports.map((r) => r.cell.cpuPerOpUs)).median),
        integer(spread(row.reports.map((r) => r.cell.opsPerSecond)).median),
        mebibytes(idle),
        mebibytes(peak),
        mebibytes(peak - idle)
      ]
    })
  )
  return `## ${index}. Client CPU per query and RSS, SELECT 1 at ${spec.workers.join(", ")} workers\n\n` +
    `CPU is user + system time of the whole client process divided by the queries run. "In the run" is the median of ` +
    `the interleaved cells of section 1; "alone" and RSS come from a fresh Node process per candidate and worker count ` +
    `(${spec.repetitions} run(s) of ${spec.durationMs} ms after ${spec.warmupMs} ms warm-up, medians), so each process ` +
    `holds only that candidate's pool (plus the harness and every library's code, loaded but unused: the idle RSS). ` +
    `Those processes count operations without timing each one, so the harness keeps no latency per operation (which ` +
    `would grow with the candidate's throughput). pgbench is a process of its own, left out here.\n\n` +
    table(
      [
        "candidate",
        "workers",
        "CPU µs/query (in the run)",
        "CPU µs/query (alone)",
        "queries/s (alone)",
        "RSS idle MiB",
        "RSS peak MiB",
        "peak − idle MiB"
      ],
      rows,
      "--- | ---: | ---: | ---: | ---: | ---: | ---: | ---:"
    )
}

export const render = (input: ReportInput): string => {
  const { machine } = input
  const header = [
    `# effect-pg-pool benchmark, ${
      input.startedAt.toISOString().replace("T", " ").slice(0, 16)
    } UTC (${input.mode} mode)`,
    "",
    `- Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB.toFixed(1)} GiB RAM, ${machine.os}`,
    `- Node ${machine.node}; PostgreSQL ${input.database.serverVersion} (${input.database.source}), on the same machine as the client`,
    `- Packages: ${machine.packages.map(([name, version]) => `${name} ${version}`).join(", ")}`,
    `- Commit: ${machine.commit}; whole run ${(input.wallMs / 1000).toFixed(0)} s; load average ${
      input.load.start.toFixed(2)
    } at the start, ${input.load.end.toFixed(2)} at the end`,
    ...(input.baseline === undefined ? [] : [
      `- Baseline: the candidates marked "(baseline)" are the pool at commit ${input.baseline} (\`--baseline\`), ` +
      "measured as alternatives: ours ÷ baseline above 1 means the current code is faster"
    ]),
    "",
    "Method: the project is compiled with tsc and run as plain JavaScript. Each cell runs N concurrent workers " +
    "in a loop for a fixed time; every pool has 10 connections. Candidates stay open for the whole suite, are " +
    "warmed up at every level, and are measured in rounds, interleaved, in an order rotated each round. Tables " +
    "show medians over the rounds with min–max; ratios are ours ÷ alternative from the same run. Server and " +
    "client share the CPU, so client CPU per query decides throughput: compare ratios, not absolute numbers " +
    "across machines."
  ].join("\n")
  const targets = targetsSection(input.suites)
  const sections: Array<string> = targets === undefined ? [header] : [header, targets]
  input.suites.forEach((suite, i) => sections.push(suiteSection(i + 1, suite)))
  if (input.memory !== undefined) {
    sections.push(
      memorySection(input.suites.length + 1, input.memory, input.suites.find((suite) => suite.info.id === "select1"))
    )
  }
  return `${sections.join("\n\n")}\n`
}
