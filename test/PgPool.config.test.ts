import { assert, describe, it } from "@effect/vitest"
import { Config, ConfigError, ConfigProvider, Effect, Layer, Redacted, Schedule } from "effect"
import * as net from "node:net"
import * as PgPool from "../src/PgPool.js"
import { PgPoolLive } from "../src/index.js"
import { testConfig, testServer } from "./support/db.js"

const buildError = (config: PgPool.Config) =>
  Effect.flip(Effect.scoped(Layer.build(PgPool.layer(config))))

const assertConfigError = (error: unknown, field: string) => {
  assert.isTrue(ConfigError.isConfigError(error), `expected a ConfigError for ${field}, got ${String(error)}`)
  const config = error as ConfigError.ConfigError
  assert.strictEqual(config._op, "InvalidData")
  if (config._op === "InvalidData") assert.deepStrictEqual(config.path, [field])
  assert.include(String(config), field)
}

/** A TCP server that accepts connections and never answers: a connect to it hangs. */
const blackhole = Effect.acquireRelease(
  Effect.async<{ server: net.Server; port: number; sockets: Set<net.Socket> }>((resume) => {
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.on("error", () => {})
      socket.on("close", () => sockets.delete(socket))
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as net.AddressInfo
      resume(Effect.succeed({ server, port: address.port, sockets }))
    })
  }),
  ({ server, sockets }) =>
    Effect.async<void>((resume) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resume(Effect.void))
    })
)

describe("PgPool configuration", () => {
  const invalid: ReadonlyArray<readonly [string, PgPool.Config]> = [
    ["maxConnections", { maxConnections: 0 }],
    ["maxConnections", { maxConnections: 2.5 }],
    ["minConnections", { minConnections: -1 }],
    ["minConnections", { minConnections: 11, maxConnections: 10 }],
    ["maxIdle", { maxIdle: 1, minConnections: 2 }],
    ["maxWaiting", { maxWaiting: -3 }],
    ["maxUsage", { maxUsage: -1 }],
    ["acquireTimeout", { acquireTimeout: -5 }],
    ["acquireTimeout", { acquireTimeout: "soon" as never }],
    ["idleTimeout", { idleTimeout: 0 }],
    ["maxLifetime", { maxLifetime: "forever" as never }],
    ["maxLifetimeJitter", { maxLifetime: "1 minute", maxLifetimeJitter: "2 minutes" }],
    ["connectTimeout", { connectTimeout: 0 }],
    ["drainTimeout", { drainTimeout: -1 }],
    ["reset", { reset: "sometimes" as never }],
    ["setSession", { setSession: [""] }],
    ["setSession", { setSession: "set x = 1" as never }],
    ["blocking", { blocking: "yes" as never }],
    ["pooling", { pooling: 1 as never }],
    ["port", { port: 70000 }],
    ["host", { host: "" }],
    ["password", { password: "plain" as never }],
    ["url", { url: "mysql://localhost/db" }],
    ["url", { url: "postgres://localhost/db?sslmode=sometimes" }],
    ["url", { url: "postgres://localhost/db?bogus=1" }],
    ["statementTimeout", { statementTimeout: -1 }],
    ["queryTimeout", { queryTimeout: "later" as never }],
    ["reconnect", { reconnect: "exponential" as never }],
    ["healthCheck.interval", { healthCheck: { interval: 0 } }]
  ]
  for (const [field, config] of invalid) {
    it.effect(`an invalid ${field} fails the layer with a ConfigError naming it: ${JSON.stringify(config)}`, () =>
      Effect.map(buildError({ ...testConfig(), ...config }), (error) => assertConfigError(error, field)))
  }

  it.effect("a URL with a password is never copied into a ConfigError", () =>
    Effect.gen(function*() {
      const error = yield* buildError({ url: "postgres://u:hunter2@localhost/db?nonsense=1" })
      assertConfigError(error, "url")
      assert.notInclude(String(error), "hunter2")
    }))

  it.effect("the connection fields work on their own (host, port, database, user, password)", () =>
    Effect.gen(function*() {
      const server = testServer()
      const rows = yield* PgPool.query("select current_database() as db, current_user as who").pipe(
        Effect.provide(PgPool.layer({
          host: server.host,
          port: server.port,
          database: server.database,
          user: server.user,
          password: server.password!
        }))
      )
      assert.deepStrictEqual(rows, [{ db: server.database, who: server.user }])
    }))

  it.effect("fields override the URL", () =>
    Effect.gen(function*() {
      const rows = yield* PgPool.query("select current_setting('application_name') as app").pipe(
        Effect.provide(PgPool.layer({
          url: Redacted.make(Redacted.value(testConfig().url as Redacted.Redacted) + "?application_name=from-url"),
          applicationName: "from-field"
        }))
      )
      assert.deepStrictEqual(rows, [{ app: "from-field" }])
    }))

  it.effect("URL parameters are honoured (application_name)", () =>
    Effect.gen(function*() {
      const rows = yield* PgPool.query("select current_setting('application_name') as app").pipe(
        Effect.provide(PgPool.layer({
          url: Redacted.make(Redacted.value(testConfig().url as Redacted.Redacted) + "?application_name=from-url")
        }))
      )
      assert.deepStrictEqual(rows, [{ app: "from-url" }])
    }))

  it.effect("ssl: true against a server without TLS fails with a ConnectionError; ssl: false connects", () =>
    Effect.gen(function*() {
      const error = yield* buildError({ ...testConfig(), ssl: true })
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "SSL")
      const rows = yield* PgPool.query("select 1 as one").pipe(Effect.provide(PgPool.layer({ ...testConfig(), ssl: false })))
      assert.deepStrictEqual(rows, [{ one: 1 }])
    }))

  it.live("connectTimeout bounds the layer build against a server that never answers", () =>
    Effect.gen(function*() {
      const { port } = yield* blackhole
      const started = Date.now()
      const error = yield* buildError({ host: "127.0.0.1", port, connectTimeout: "300 millis" })
      const elapsed = Date.now() - started
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "connectTimeout")
      assert.isAtLeast(elapsed, 290)
      assert.isBelow(elapsed, 1500)
    }).pipe(Effect.scoped))

  it.live("an acquire timeout is honoured while a connect is in flight, and the waiter leaves the queue", () =>
    Effect.gen(function*() {
      const { port } = yield* blackhole
      const pool = yield* Layer.build(PgPool.layer({
        host: "127.0.0.1",
        port,
        lazy: true,
        connectTimeout: "10 seconds",
        acquireTimeout: "100 millis"
      })).pipe(Effect.map((context) => context.unsafeMap.get(PgPool.PgPool.key) as PgPool.PgPool))
      const started = Date.now()
      const error = yield* Effect.flip(pool.query("select 1"))
      const elapsed = Date.now() - started
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "in progress")
      assert.isAtLeast(elapsed, 95)
      assert.isBelow(elapsed, 300)
      const stats = yield* pool.stats
      assert.strictEqual(stats.waiting, 0)
      assert.strictEqual(stats.timeouts, 1)
    }).pipe(Effect.scoped))

  it.effect("layerConfig reads the configuration with Config", () =>
    Effect.gen(function*() {
      const rows = yield* PgPool.query("select current_setting('application_name') as app").pipe(
        Effect.provide(
          PgPool.layerConfig({
            url: Config.redacted("MY_DB_URL"),
            maxConnections: Config.integer("MY_POOL_SIZE"),
            applicationName: Config.string("MY_APP")
          }).pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([
              ["MY_DB_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
              ["MY_POOL_SIZE", "3"],
              ["MY_APP", "from-config"]
            ])
          ))))
        )
      )
      assert.deepStrictEqual(rows, [{ app: "from-config" }])
    }))

  const withEnv = (entries: ReadonlyArray<readonly [string, string]>) =>
    Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries))))

  it.effect("PgPoolLive reads DATABASE_URL and PGPOOL_* knobs", () =>
    Effect.gen(function*() {
      const stats = yield* PgPool.stats.pipe(Effect.provide(withEnv([
        ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
        ["PGPOOL_MAX_CONNECTIONS", "4"],
        ["PGPOOL_MIN_CONNECTIONS", "2"],
        ["PGPOOL_ACQUIRE_TIMEOUT", "5 seconds"]
      ])))
      assert.strictEqual(stats.maxConnections, 4)
      assert.strictEqual(stats.size, 2)
    }))

  it.effect("PgPoolLive falls back to libpq's PG* variables", () =>
    Effect.gen(function*() {
      const server = testServer()
      const rows = yield* PgPool.query(
        "select current_database() as db, current_setting('application_name') as app"
      ).pipe(Effect.provide(withEnv([
        ["PGHOST", server.host],
        ["PGPORT", String(server.port)],
        ["PGDATABASE", server.database],
        ["PGUSER", server.user],
        ["PGPASSWORD", Redacted.value(server.password!)],
        ["PGSSLMODE", "disable"],
        ["PGAPPNAME", "from-env"]
      ])))
      assert.deepStrictEqual(rows, [{ db: server.database, app: "from-env" }])
    }))

  it.effect("PgPoolLive: several hosts from comma-separated PGHOST/PGPORT, libpq's PGTARGETSESSIONATTRS, any PGPOOL_ knob", () =>
    Effect.gen(function*() {
      const server = testServer()
      const down = yield* Effect.async<number>((resume) => {
        const probe = net.createServer()
        probe.listen(0, "127.0.0.1", () => {
          const port = (probe.address() as net.AddressInfo).port
          probe.close(() => resume(Effect.succeed(port)))
        })
      })
      const stats = yield* Effect.gen(function*() {
        const rows = yield* PgPool.query("select current_setting('application_name') as app")
        assert.deepStrictEqual(rows, [{ app: "env-hosts" }])
        return yield* PgPool.stats
      }).pipe(Effect.provide(withEnv([
        ["PGHOST", `127.0.0.1,${server.host}`],
        ["PGPORT", `${down},${server.port}`],
        ["PGDATABASE", server.database],
        ["PGUSER", server.user],
        ["PGPASSWORD", Redacted.value(server.password!)],
        ["PGAPPNAME", "env-hosts"],
        ["PGTARGETSESSIONATTRS", "read-write"],
        ["PGPOOL_READ_BALANCING", "round-robin"],
        ["PGPOOL_MAX_LIFETIME_JITTER", "1 second"],
        ["PGPOOL_SET_SESSION", "set time zone 'UTC',set search_path to public"]
      ])))
      assert.deepStrictEqual(stats.hosts.map((h) => [h.port, h.up]), [[down, false], [server.port, true]])
    }))

  it.effect("PgPoolLive rejects a bad knob with a ConfigError naming the variable", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
        ["PGPOOL_MAX_CONNECTIONS", "lots"]
      ]))))
      assert.isTrue(ConfigError.isConfigError(error))
      assert.include(String(error), "PGPOOL_MAX_CONNECTIONS")
    }))

  it.effect("reconnect accepts any Schedule", () =>
    Effect.gen(function*() {
      const rows = yield* PgPool.query("select 1 as one").pipe(
        Effect.provide(PgPool.layer({ ...testConfig(), reconnect: Schedule.spaced("1 second") }))
      )
      assert.deepStrictEqual(rows, [{ one: 1 }])
    }))
})
