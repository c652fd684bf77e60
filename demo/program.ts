/**
 * The demo workload: a web-like load through the pool (reads, transfers in transactions, SqlClient
 * queries), with faults in the middle of the run (backends terminated, the server restarted), a live line
 * of pool stats and a summary at the end.
 */
import { SqlClient } from "@effect/sql"
import { Cause, Console, Effect, Fiber, Layer, Logger, Option, Redacted, Schedule } from "effect"
import { PgPool, PgPoolSql, PgPoolTest, Transaction } from "effect-pg-pool"

export interface DemoOptions {
  /** Length of the run in seconds. */
  readonly seconds: number
  /** Concurrent "requests". */
  readonly concurrency: number
  /** A server to use instead of an embedded one (it is not restarted). */
  readonly databaseUrl: string | undefined
  /** Print the live line with carriage returns (a terminal) or one line a second (a log). */
  readonly tty: boolean
}

/** One finished request: when it started and ended (ms since the epoch) and whether it succeeded. */
interface Outcome {
  readonly start: number
  readonly end: number
  readonly ok: boolean
}

interface Tally {
  requests: number
  failures: Map<string, number>
  latencies: Array<number>
  outcomes: Array<Outcome>
  terminated: number
  restart: RestartTimes | undefined
}

/** The server restart, as it happened (ms since the epoch), and the server's start time before and after. */
interface RestartTimes {
  readonly began: number
  readonly stopped: number
  readonly back: number
  readonly startTimeBefore: string
  readonly startTimeAfter: string
}

/** What the restart did to the requests, counted from their outcomes. */
interface RestartReport extends RestartTimes {
  /** The server's `pg_postmaster_start_time()` differs after the restart: a new server process. */
  readonly startTimeChanged: boolean
  /** Requests that failed from the moment the restart began until the first success after it. */
  readonly failedDuringRestart: number
  /** Requests that started after the server had stopped and succeeded before it was back: must be 0. */
  readonly succeededWhileDown: number
  /** The first request that succeeded after the server was back ended this long after (ms). */
  readonly firstSuccessAfterBack: number | undefined
}

const restartReport = (times: RestartTimes, outcomes: ReadonlyArray<Outcome>): RestartReport => {
  const firstSuccess = outcomes.filter((o) => o.ok && o.end >= times.back).reduce<number | undefined>(
    (first, o) => first === undefined || o.end < first ? o.end : first,
    undefined
  )
  const until = firstSuccess ?? Number.POSITIVE_INFINITY
  return {
    ...times,
    startTimeChanged: times.startTimeAfter !== times.startTimeBefore,
    failedDuringRestart: outcomes.filter((o) => !o.ok && o.end >= times.began && o.end <= until).length,
    succeededWhileDown: outcomes.filter((o) => o.ok && o.start >= times.stopped && o.end <= times.back).length,
    firstSuccessAfterBack: firstSuccess === undefined ? undefined : firstSuccess - times.back
  }
}

const ACCOUNTS = 1000
const INITIAL = 1000

const causeName = (cause: Cause.Cause<unknown>): string => {
  const failure = Cause.failureOption(cause)
  if (Option.isNone(failure)) return Cause.isInterruptedOnly(cause) ? "interrupted" : "defect"
  const error = failure.value as { _tag?: string; code?: string; reason?: string; cause?: unknown }
  if (error._tag === "SqlError") return `SqlError(${causeName(Cause.fail(error.cause))})`
  const detail = error.reason ?? error.code
  return detail === undefined ? String(error._tag) : `${error._tag} ${detail}`
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!

/** What a request does: a read, a transfer between two accounts, or a report through the SqlClient. */
const request = (i: number) =>
  Effect.gen(function*() {
    const kind = i % 10
    const a = Math.floor(Math.random() * ACCOUNTS)
    if (kind < 6) {
      return yield* PgPool.query("select id, balance from demo_accounts where id = $1", [a])
    }
    if (kind < 9) {
      const b = (a + 1 + Math.floor(Math.random() * (ACCOUNTS - 1))) % ACCOUNTS
      const amount = 1 + Math.floor(Math.random() * 10)
      return yield* Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("update demo_accounts set balance = balance - $2 where id = $1", [a, amount])
        yield* PgPool.query("update demo_accounts set balance = balance + $2 where id = $1", [b, amount])
      }))
    }
    const sql = yield* SqlClient.SqlClient
    return yield* sql`select count(*)::int as n, sum(balance)::bigint as total from demo_accounts where id < ${a}`
  })

export const runDemo = (options: DemoOptions) =>
  Effect.gen(function*() {
    const embedded = options.databaseUrl === undefined
    if (embedded) yield* Console.log("Starting an embedded PostgreSQL (set DATABASE_URL to use your own server) ...")
    const poolConfig: PgPool.Config = {
      maxConnections: 10,
      acquireTimeout: "2 seconds",
      applicationName: "effect-pg-pool-demo"
    }
    const database = embedded
      ? PgPoolTest.layerEmbedded(poolConfig)
      : Layer.merge(
        PgPool.layer({ ...poolConfig, url: Redacted.make(options.databaseUrl!) }),
        Layer.succeed(PgPoolTest.EmbeddedDatabase, {
          url: Redacted.make(options.databaseUrl!),
          database: "",
          port: 0,
          query: () => Effect.succeed([]),
          stop: Effect.void,
          start: Effect.void,
          restart: Effect.void,
          isRunning: Effect.succeed(true)
        })
      )
    const poolLog = new Map<string, number>()
    const logger = Logger.make<unknown, void>(({ logLevel, message }) => {
      if (logLevel._tag === "Debug" || logLevel._tag === "Trace") return
      const text = (Array.isArray(message) ? message : [message]).map(String).join(" ")
      const key = `${logLevel.label} ${text.replace(/\(attempt \d+\)/, "(attempt n)")}`
      poolLog.set(key, (poolLog.get(key) ?? 0) + 1)
    })
    const result = yield* workload(options, embedded).pipe(
      Effect.provide(
        Layer.provideMerge(PgPoolSql.layer, database).pipe(
          Layer.provide(Logger.replace(Logger.defaultLogger, logger))
        )
      )
    )
    if (poolLog.size > 0) {
      yield* Console.log("\nwhat the pool logged:")
      for (const [line, count] of poolLog) yield* Console.log(`  ${String(count).padStart(4)} x ${line}`)
    }
    return result
  })

const workload = (options: DemoOptions, embedded: boolean) =>
  Effect.gen(function*() {
    const server = yield* PgPoolTest.EmbeddedDatabase
    yield* PgPool.query("drop table if exists demo_accounts")
    yield* PgPool.query("create table demo_accounts (id int primary key, balance int not null)")
    yield* PgPool.query("insert into demo_accounts select g, $1 from generate_series(0, $2) g", [INITIAL, ACCOUNTS - 1])

    const tally: Tally = {
      requests: 0,
      failures: new Map(),
      latencies: [],
      outcomes: [],
      terminated: 0,
      restart: undefined
    }
    const started = Date.now()
    const deadline = started + options.seconds * 1000
    const worker = (w: number) =>
      Effect.gen(function*() {
        for (let i = w; Date.now() < deadline; i += options.concurrency) {
          const start = Date.now()
          const t0 = performance.now()
          const exit = yield* Effect.exit(request(i))
          tally.requests++
          tally.outcomes.push({ start, end: Date.now(), ok: exit._tag === "Success" })
          if (exit._tag === "Success") {
            tally.latencies.push(performance.now() - t0)
          } else {
            const name = causeName(exit.cause)
            tally.failures.set(name, (tally.failures.get(name) ?? 0) + 1)
            // a client that got an error waits a moment before its next request (while the server is down the
            // pool fails fast, and 200 clients retrying at once would only measure how fast it says no)
            yield* Effect.sleep("10 millis")
          }
        }
      })

    const line = Effect.gen(function*() {
      const s = yield* PgPool.stats
      const elapsed = (Date.now() - started) / 1000
      const failed = [...tally.failures.values()].reduce((a, b) => a + b, 0)
      const text = `t=${elapsed.toFixed(1).padStart(5)}s  size ${String(s.size).padStart(2)}  idle ${
        String(s.idle).padStart(2)
      }  in use ${String(s.inUse).padStart(2)}  waiting ${String(s.waiting).padStart(3)}  requests ${
        String(tally.requests).padStart(7)
      }  failed ${String(failed).padStart(4)}  ${Math.round(tally.requests / Math.max(elapsed, 0.001))} req/s`
      yield* Effect.sync(() => {
        if (options.tty) process.stdout.write(`\r${text}   `)
        else process.stdout.write(`${text}\n`)
      })
    })
    const reporter = yield* Effect.fork(
      Effect.repeat(line, Schedule.spaced(options.tty ? "200 millis" : "1 second"))
    )

    const faults = Effect.gen(function*() {
      yield* Effect.sleep(options.seconds * 1000 / 3)
      const victims = yield* PgPool.query(
        "select pg_terminate_backend(pid) as done from pg_stat_activity where application_name = 'effect-pg-pool-demo' and pid <> pg_backend_pid() limit 3"
      )
      tally.terminated = victims.filter((row) => row.done === true).length
      yield* event(options, `terminated ${tally.terminated} backends of the pool`)
      if (!embedded) return
      yield* Effect.sleep(options.seconds * 1000 / 6)
      // the server's own word for which server process is answering: its start time, on an admin connection
      const startTime = server.query("select pg_postmaster_start_time()::text as started").pipe(
        Effect.map((rows) => String(rows[0]!.started))
      )
      const startTimeBefore = yield* startTime
      const began = Date.now()
      yield* event(options, `restarting the server (started at ${startTimeBefore}): stopping it ...`)
      yield* server.stop
      const stopped = Date.now()
      if (yield* server.isRunning) return yield* Effect.dieMessage("the server is still running after stop")
      yield* event(options, `server stopped in ${stopped - began} ms; starting it ...`)
      yield* server.start
      const back = Date.now()
      const startTimeAfter = yield* startTime
      tally.restart = { began, stopped, back, startTimeBefore, startTimeAfter }
      yield* event(options, `server is back after ${back - stopped} ms (started at ${startTimeAfter})`)
    })
    const faultFiber = yield* Effect.fork(faults)

    yield* Effect.forEach(Array.from({ length: options.concurrency }, (_, w) => w), worker, {
      concurrency: "unbounded",
      discard: true
    })
    yield* Fiber.join(faultFiber)
    yield* Fiber.interrupt(reporter)
    yield* line
    if (options.tty) yield* Console.log("")

    // the balance check waits (bounded) for the pool to serve again, and says so if it does not
    const check = yield* PgPool.query("select sum(balance)::int as total from demo_accounts").pipe(
      Effect.retry({ schedule: Schedule.spaced("100 millis").pipe(Schedule.upTo("15 seconds")) }),
      Effect.either
    )
    const total = check._tag === "Right" ? Number(check.right[0]!.total) : undefined
    const stats = yield* PgPool.stats
    const sorted = tally.latencies.slice().sort((a, b) => a - b)
    const seconds = (Date.now() - started) / 1000
    const failures = [...tally.failures.entries()].sort((a, b) => b[1] - a[1])
    const restart = tally.restart === undefined ? undefined : restartReport(tally.restart, tally.outcomes)
    const restartRows: Array<readonly [string, string]> = restart === undefined
      ? [["server restart", embedded ? "did not happen" : "not done (DATABASE_URL: not our server)"]]
      : [
        [
          "server start time",
          `${restart.startTimeBefore} -> ${restart.startTimeAfter} (${
            restart.startTimeChanged ? "a new server process" : "UNCHANGED: no restart happened"
          })`
        ],
        [
          "server down",
          `stopped in ${restart.stopped - restart.began} ms, back ${restart.back - restart.stopped} ms later`
        ],
        ["failed during the restart", String(restart.failedDuringRestart)],
        ["succeeded while it was down", String(restart.succeededWhileDown)],
        [
          "first success after restart",
          restart.firstSuccessAfterBack === undefined
            ? "none before the end of the run"
            : `${restart.firstSuccessAfterBack} ms after the server was back`
        ]
      ]
    const expected = ACCOUNTS * INITIAL
    const rows: Array<readonly [string, string]> = [
      ["requests", `${tally.requests} in ${seconds.toFixed(1)} s (${Math.round(tally.requests / seconds)} req/s)`],
      ["succeeded", String(sorted.length)],
      ...failures.map(([name, n]) => [`failed: ${name}`, String(n)] as const),
      ["latency p50 / p99", `${percentile(sorted, 50).toFixed(2)} ms / ${percentile(sorted, 99).toFixed(2)} ms`],
      ["backends terminated", String(tally.terminated)],
      ...restartRows,
      ["connections opened / closed", `${stats.created} / ${stats.closed}`],
      ["closed as broken (replaced)", String(stats.closedByReason.broken)],
      [
        "total balance",
        total === undefined
          ? `not checked: the pool did not serve within 15 s (${check._tag === "Left" ? check.left.message : ""})`
          : `${total} (expected ${expected}: ${total === expected ? "OK" : "WRONG"})`
      ]
    ]
    const width = Math.max(...rows.map(([k]) => k.length))
    yield* Console.log("")
    yield* Console.log(`${"".padEnd(width, " ")}  summary`)
    for (const [key, value] of rows) yield* Console.log(`${key.padEnd(width)}  ${value}`)
    const restarted = !embedded ||
      (restart !== undefined && restart.startTimeChanged && restart.succeededWhileDown === 0 &&
        restart.firstSuccessAfterBack !== undefined)
    return { ok: total === expected && restarted && sorted.length > 0, tally, restart, total, stats }
  })

const event = (options: DemoOptions, message: string) =>
  Effect.sync(() => process.stdout.write(`${options.tty ? "\n" : ""}>> ${message}\n`))
