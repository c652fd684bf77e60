/** The two modes of the benchmark and the command-line options. */

export interface MemorySettings {
  /** The worker counts measured, each candidate in a process of its own per count. */
  readonly workers: ReadonlyArray<number>
  readonly warmupMs: number
  readonly durationMs: number
  readonly repetitions: number
}

export type Mode = "quick" | "full"

export interface Settings {
  readonly mode: Mode
  /** Measured rounds per suite (each candidate once per level per round). */
  readonly repetitions: number
  readonly dbDurationMs: number
  /** Warm-up per candidate and level; Effect code needs about a second of it before the JIT settles. */
  readonly dbWarmupMs: number
  readonly poolDurationMs: number
  readonly poolWarmupMs: number
  readonly memory: MemorySettings
}

export const SETTINGS: Readonly<Record<Mode, Settings>> = {
  quick: {
    mode: "quick",
    repetitions: 3,
    dbDurationMs: 200,
    dbWarmupMs: 150,
    poolDurationMs: 120,
    poolWarmupMs: 150,
    memory: { workers: [128], warmupMs: 150, durationMs: 300, repetitions: 1 }
  },
  full: {
    mode: "full",
    repetitions: 5,
    dbDurationMs: 2000,
    dbWarmupMs: 500,
    poolDurationMs: 1000,
    poolWarmupMs: 500,
    memory: { workers: [32, 128, 512, 2048], warmupMs: 1000, durationMs: 2000, repetitions: 3 }
  }
}

const SUITE_IDS = ["select1", "transaction", "txselect1", "checkout", "oneshot", "tracing", "memory"] as const
type SuiteId = typeof SUITE_IDS[number]

const isSuiteId = (name: string): name is SuiteId => (SUITE_IDS as ReadonlyArray<string>).includes(name)

export interface Options {
  readonly settings: Settings
  readonly only: ReadonlyArray<SuiteId>
  /** Run only the candidates with these names (all when undefined). */
  readonly candidates: ReadonlyArray<string> | undefined
  /** Write a V8 CPU profile of each suite's process to bench/results/. */
  readonly profile: boolean
  /** A git revision to measure next to the current code (see baseline.ts). */
  readonly baseline: string | undefined
}

const USAGE = `options:
  --quick                 short cells, 3 rounds (under a minute)
  --only=a,b              suites to run: ${SUITE_IDS.join(", ")}
  --candidates=a,b        only these candidates (exact names as in the report)
  --profile               node --cpu-prof of each suite's process, into bench/results/*.cpuprofile
  --baseline=<rev>        also measure the pool at git revision <rev>, as the alternative "(baseline)"`

export const parseArgs = (argv: ReadonlyArray<string>): Options => {
  let mode: Mode = "full"
  let only: ReadonlyArray<SuiteId> = SUITE_IDS
  let candidates: ReadonlyArray<string> | undefined
  let profile = false
  let baseline: string | undefined
  for (const arg of argv) {
    if (arg === "--quick") {
      mode = "quick"
    } else if (arg === "--profile") {
      profile = true
    } else if (arg.startsWith("--baseline=")) {
      baseline = arg.slice("--baseline=".length).trim()
      if (baseline === "") throw new Error(`--baseline needs a git revision\n${USAGE}`)
    } else if (arg.startsWith("--candidates=")) {
      candidates = arg.slice("--candidates=".length).split(",").map((name) => name.trim()).filter((name) => name !== "")
    } else if (arg.startsWith("--only=")) {
      const names = arg.slice("--only=".length).split(",").filter((name) => name !== "")
      const unknown = names.filter((name) => !isSuiteId(name))
      if (unknown.length > 0) throw new Error(`Unknown suite ${unknown.join(", ")}; known: ${SUITE_IDS.join(", ")}`)
      only = SUITE_IDS.filter((id) => names.includes(id))
    } else {
      throw new Error(`Unknown option ${arg}\n${USAGE}`)
    }
  }
  return { settings: SETTINGS[mode], only, candidates, profile, baseline }
}
