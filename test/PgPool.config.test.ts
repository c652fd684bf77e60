import { assert, describe, it } from "@effect/vitest"
import {
  Chunk,
  Clock,
  Config,
  ConfigError,
  ConfigProvider,
  Duration,
  Effect,
  Fiber,
  Layer,
  Option,
  Redacted,
  Schedule,
  TestClock
} from "effect"
import * as net from "node:net"
import pg from "pg"
import * as Connector from "../src/Connector.js"
import { PgPoolLive } from "../src/index.js"
import { splitStatements } from "../src/internal/config/env.js"
import { defaultReconnect, resolve } from "../src/internal/config/resolve.js"
import * as PgPool from "../src/PgPool.js"
import { ConnectionError } from "../src/PgPoolError.js"
import { eventually, testConfig, testServer } from "./support/db.js"

const buildError = (config: PgPool.Config) => Effect.flip(Effect.scoped(Layer.build(PgPool.layer(config))))

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
  it.effect("the default reconnect schedule: exponential from 100 ms, doubling, jittered, capped at 5 seconds", () =>
    Effect.gen(function*() {
      const delays = Chunk.toReadonlyArray(
        yield* Schedule.run(Schedule.delays(defaultReconnect), 0, Array.from({ length: 12 }, () => undefined))
      ).map(Duration.toMillis)
      assert.strictEqual(delays.length, 12)
      // jitter keeps each delay within 80%-120% of 100 ms * 2^n
      delays.slice(0, 5).forEach((delay, n) => {
        assert.isAtLeast(delay, 0.8 * 100 * 2 ** n, `attempt ${n + 1}: ${delays}`)
        assert.isAtMost(delay, 1.2 * 100 * 2 ** n, `attempt ${n + 1}: ${delays}`)
      })
      // never more than 5 s apart, and there from the 7th attempt on
      for (const delay of delays) assert.isAtMost(delay, 5_000, String(delays))
      for (const delay of delays.slice(6)) assert.strictEqual(delay, 5_000, String(delays))
    }))

  const invalid: ReadonlyArray<readonly [string, PgPool.Config]> = [
    ["maxConnections", { maxConnections: 0 }],
    ["maxConnections", { maxConnections: 2.5 }],
    ["minConnections", { minConnections: -1 }],
    ["minConnections", { minConnections: 11, maxConnections: 10 }],
    ["maxIdle", { maxIdle: 1, minConnections: 2 }],
    ["maxWaiting", { maxWaiting: -3 }],
    ["maxUsage", { maxUsage: -1 }],
    ["prepareThreshold", { prepareThreshold: 0 }],
    ["prepareThreshold", { prepareThreshold: 1.5 }],
    ["statementCacheSize", { statementCacheSize: -1 }],
    ["statementCacheSize", { statementCacheSize: Infinity }],
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
    ["healthCheck.interval", { healthCheck: { interval: 0 } }],
    // a NUL ends a string on the wire: the server would read the rest as the next fields of the message
    ["user", { user: "post\0gres" }],
    ["database", { database: "post\0gres" }],
    ["applicationName", { applicationName: "app\0" }],
    ["options", { options: "-c a=\0" }],
    ["setSession", { setSession: ["SET TIME ZONE 'UTC'\0"] }],
    ["password", { password: Redacted.make("secret\0anything") }],
    // Effect's Duration reads a negative one as zero
    ["acquireTimeout", { acquireTimeout: "-5 seconds" }],
    ["drainTimeout", { drainTimeout: " -1 seconds" }],
    ["statementTimeout", { statementTimeout: 1e12 }],
    ["healthCheck", { healthCheck: { idleTreshold: 5 } as never }],
    ["healthCheck", { healthCheck: [] as never }],
    ["ssl", { ssl: { rejectUnauthorised: false } as never }],
    ["ssl", { ssl: { rejectUnauthorized: "false" } as never }],
    ["ssl", { ssl: { ca: 123 } as never }],
    ["url", { url: "postgres://user:pa%zz@localhost/db" }],
    ["url", { url: "postgres://localhost/db?connect_timeout=0.5" }]
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
      const rows = yield* PgPool.query("select 1 as one").pipe(
        Effect.provide(PgPool.layer({ ...testConfig(), ssl: false }))
      )
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

  it.effect("layerConfig takes plain values next to Configs, in nested options too", () =>
    Effect.gen(function*() {
      const stats = yield* PgPool.stats.pipe(
        Effect.provide(
          PgPool.layerConfig({
            url: Config.redacted("MY_DB_URL"),
            applicationName: "plain-value",
            maxConnections: 3,
            setSession: ["SET TIME ZONE 'UTC'"],
            reconnect: Schedule.spaced("10 millis"),
            healthCheck: { interval: Config.duration("MY_INTERVAL"), timeout: "2 seconds" }
          }).pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([
              ["MY_DB_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
              ["MY_INTERVAL", "1 minute"]
            ])
          ))))
        )
      )
      assert.strictEqual(stats.maxConnections, 3)
      // a plain value that is wrong is the same ConfigError as in PgPool.layer
      const error = yield* Effect.flip(
        Layer.build(
          PgPool.layerConfig({ url: Config.redacted("MY_DB_URL"), pooler: "sometimes" as never }).pipe(
            Layer.provide(
              Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["MY_DB_URL", "postgres://localhost/db"]])))
            )
          )
        )
      )
      assertConfigError(error, "pooler")
    }).pipe(Effect.scoped))

  const withEnv = (entries: ReadonlyArray<readonly [string, string]>) =>
    Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries))))

  /** The configuration `PgPoolLive` reads from `entries`, resolved (defaults filled in). */
  const fromEnv = (entries: ReadonlyArray<readonly [string, string]>) =>
    PgPool.configFromEnv.pipe(
      Effect.flatMap(resolve),
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(entries)))
    )

  it.effect("PgPoolLive reads DATABASE_URL and PGPOOL_* knobs", () =>
    Effect.gen(function*() {
      const entries: ReadonlyArray<readonly [string, string]> = [
        ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
        ["PGPOOL_MAX_CONNECTIONS", "4"],
        ["PGPOOL_MIN_CONNECTIONS", "2"],
        ["PGPOOL_ACQUIRE_TIMEOUT", "5 seconds"]
      ]
      const resolved = yield* fromEnv(entries)
      assert.deepStrictEqual([resolved.maxConnections, resolved.minConnections, resolved.acquireTimeout], [4, 2, 5000])
      yield* Effect.gen(function*() {
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.maxConnections, 4)
        assert.strictEqual(stats.size, 2)
        // PGPOOL_ACQUIRE_TIMEOUT: with the 4 connections busy, a checkout gives up after 5 seconds (TestClock)
        const error = yield* Effect.scoped(Effect.gen(function*() {
          yield* Effect.all([PgPool.connection, PgPool.connection, PgPool.connection, PgPool.connection])
          const waiter = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
          yield* eventually(PgPool.stats, (s) => s.waiting === 1)
          yield* TestClock.adjust("4999 millis")
          yield* Effect.repeatN(Effect.yieldNow(), 50)
          assert.isTrue(Option.isNone(yield* Fiber.poll(waiter)), "gave up before PGPOOL_ACQUIRE_TIMEOUT")
          yield* TestClock.adjust("1 milli")
          return yield* Fiber.join(waiter)
        }))
        assert.strictEqual(error._tag === "PoolExhaustedError" ? error.reason : error._tag, "acquireTimeout")
        assert.strictEqual(error._tag === "PoolExhaustedError" ? error.waitedMillis : 0, 5000)
      }).pipe(Effect.provide(withEnv(entries)))
    }))

  it.effect("PgPoolLive: PGPOOL_PREPARE_THRESHOLD and PGPOOL_STATEMENT_CACHE_SIZE", () =>
    Effect.gen(function*() {
      const prepared = (env: ReadonlyArray<readonly [string, string]>) =>
        Effect.gen(function*() {
          for (let i = 0; i < 3; i++) yield* PgPool.query("select $1::int as n", [i])
          const rows = yield* PgPool.query("select count(*)::int as n from pg_prepared_statements where name like $1", [
            "effect_pg_pool_%"
          ])
          return rows[0]!.n
        }).pipe(Effect.provide(withEnv([
          ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
          ["PGPOOL_MAX_CONNECTIONS", "1"],
          ["PGPOOL_STATEMENT_CACHE_SIZE", "100"],
          ...env
        ])))
      assert.strictEqual(yield* prepared([["PGPOOL_PREPARE_THRESHOLD", "2"]]), 1)
      assert.strictEqual(yield* prepared([["PGPOOL_PREPARE_THRESHOLD", "20"]]), 0)
      assert.strictEqual(yield* prepared([["PGPOOL_PREPARE_THRESHOLD", "1"], ["PGPOOL_STATEMENT_CACHE_SIZE", "0"]]), 0)
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
      const entries: ReadonlyArray<readonly [string, string]> = [
        ["PGHOST", `127.0.0.1,${server.host}`],
        ["PGPORT", `${down},${server.port}`],
        ["PGDATABASE", server.database],
        ["PGUSER", server.user],
        ["PGPASSWORD", Redacted.value(server.password!)],
        ["PGAPPNAME", "env-hosts"],
        ["PGTARGETSESSIONATTRS", "read-write"],
        ["PGPOOL_READ_BALANCING", "round-robin"],
        ["PGPOOL_MAX_LIFETIME_JITTER", "1 second"],
        ["PGPOOL_SET_SESSION", "set time zone 'Asia/Tokyo'; set search_path to public"]
      ]
      const stats = yield* Effect.gen(function*() {
        const rows = yield* PgPool.query(
          "select current_setting('application_name') as app, current_setting('TimeZone') as tz, current_setting('search_path') as path"
        )
        // PGPOOL_SET_SESSION ran on the connection
        assert.deepStrictEqual(rows, [{ app: "env-hosts", tz: "Asia/Tokyo", path: "public" }])
        return yield* PgPool.stats
      }).pipe(Effect.provide(withEnv(entries)))
      assert.deepStrictEqual(stats.hosts.map((h) => [h.port, h.up]), [[down, false], [server.port, true]])
      // every variable took effect in the resolved configuration
      const resolved = yield* fromEnv(entries)
      assert.deepStrictEqual(resolved.hosts, [{ host: "127.0.0.1", port: down }, {
        host: server.host,
        port: server.port
      }])
      assert.strictEqual(resolved.targetSessionAttrs, "read-write")
      assert.strictEqual(resolved.readBalancing, "round-robin")
      assert.strictEqual(resolved.maxLifetimeJitter, 1000)
      assert.deepStrictEqual(resolved.setSession, ["set time zone 'Asia/Tokyo'", "set search_path to public"])
      assert.strictEqual(resolved.applicationName, "env-hosts")
    }))

  it.effect("PgPoolLive rejects a bad knob with a ConfigError naming the variable", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
        ["PGPOOL_MAX_CONNECTIONS", "lots"]
      ]))))
      assert.isTrue(ConfigError.isConfigError(error))
      assert.include(String(error), "PGPOOL_MAX_CONNECTIONS")
      assert.include(String(error), "maxConnections")
      // a negative duration (Effect's Duration reads "-5 seconds" as zero: every wait would time out at once)
      for (
        const [name, field] of [["PGPOOL_ACQUIRE_TIMEOUT", "acquireTimeout"], ["PGPOOL_DRAIN_TIMEOUT", "drainTimeout"]]
      ) {
        for (const value of ["-5 seconds", " -5 seconds", "-5000"]) {
          const negative = yield* Effect.flip(fromEnv([["DATABASE_URL", "postgres://localhost/db"], [name!, value]]))
          assert.isTrue(ConfigError.isConfigError(negative), String(negative))
          assert.include(String(negative), name!)
          assert.include(String(negative), field!)
        }
      }
      // an empty value is no value (Effect's Config.integer reads it as 0, which would mean "no limit" here)
      for (const name of ["PGPOOL_MAX_USAGE", "PGPOOL_MAX_WAITING", "PGCONNECT_TIMEOUT"]) {
        const empty = yield* Effect.flip(fromEnv([["DATABASE_URL", "postgres://localhost/db"], [name, " "]]))
        assert.include(String(empty), name)
      }
    }))

  /** This file's database as a URL, with the password only when `password` is given. */
  const urlWith = (password: string | undefined, query = "") => {
    const server = testServer()
    const auth = password === undefined ? server.user : `${server.user}:${encodeURIComponent(password)}`
    return `postgres://${auth}@${server.host}:${server.port}/${server.database}${query}`
  }

  it.effect("PgPoolLive: PG* variables fill in what DATABASE_URL lacks; the URL's own values win (libpq)", () =>
    Effect.gen(function*() {
      const filled = yield* fromEnv([
        ["DATABASE_URL", "postgres://u@db.example:6000"],
        ["PGHOST", "ignored.example"],
        ["PGPORT", "7000"],
        ["PGDATABASE", "envdb"],
        ["PGUSER", "ignored-user"],
        ["PGPASSWORD", "from-env"],
        ["PGSSLMODE", "require"],
        ["PGAPPNAME", "env-app"],
        ["PGCONNECT_TIMEOUT", "3"],
        ["PGTARGETSESSIONATTRS", "primary"],
        ["PGLOADBALANCEHOSTS", "random"]
      ])
      assert.deepStrictEqual(filled.hosts, [{ host: "db.example", port: 6000 }])
      assert.strictEqual(filled.user, "u")
      assert.strictEqual(filled.database, "envdb")
      assert.strictEqual(Redacted.value(filled.password!), "from-env")
      assert.strictEqual(filled.ssl?.mode, "require")
      assert.strictEqual(filled.applicationName, "env-app")
      assert.strictEqual(Duration.toMillis(filled.connectTimeout), 3000)
      assert.strictEqual(filled.targetSessionAttrs, "primary")
      assert.strictEqual(filled.loadBalanceHosts, "random")

      const kept = yield* fromEnv([
        [
          "DATABASE_URL",
          "postgres://u:from-url@db.example/urldb?sslmode=disable&application_name=url-app&connect_timeout=4" +
          "&target_session_attrs=any&load_balance_hosts=disable"
        ],
        ["PGPORT", "7000"],
        ["PGDATABASE", "envdb"],
        ["PGPASSWORD", "from-env"],
        ["PGSSLMODE", "require"],
        ["PGAPPNAME", "env-app"],
        ["PGCONNECT_TIMEOUT", "3"],
        ["PGTARGETSESSIONATTRS", "primary"],
        ["PGLOADBALANCEHOSTS", "random"]
      ])
      assert.deepStrictEqual(kept.hosts, [{ host: "db.example", port: 7000 }], "PGPORT fills in the URL's missing port")
      assert.strictEqual(kept.database, "urldb")
      assert.strictEqual(Redacted.value(kept.password!), "from-url")
      assert.strictEqual(kept.ssl, undefined, "the URL's sslmode=disable wins")
      assert.strictEqual(kept.applicationName, "url-app")
      assert.strictEqual(Duration.toMillis(kept.connectTimeout), 4000)
      assert.strictEqual(kept.targetSessionAttrs, "any")
      assert.strictEqual(kept.loadBalanceHosts, "disable")

      // a URL without a host takes PGHOST and PGPORT (several hosts too)
      const hostless = yield* fromEnv([
        ["DATABASE_URL", "postgresql:///appdb"],
        ["PGHOST", "h1,h2"],
        ["PGPORT", "5433,5434"]
      ])
      assert.deepStrictEqual(hostless.hosts, [{ host: "h1", port: 5433 }, { host: "h2", port: 5434 }])
      assert.strictEqual(hostless.database, "appdb")
      // the password stays Redacted in the configuration
      const config = yield* PgPool.configFromEnv.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(
        new Map([
          ["DATABASE_URL", "postgres://u@db.example/db"],
          ["PGPASSWORD", "from-env"]
        ])
      )))
      assert.isTrue(Redacted.isRedacted(config.password))
      assert.notInclude(JSON.stringify(config), "from-env")
    }))

  it.effect("PgPoolLive: a DATABASE_URL without a password authenticates with PGPASSWORD; a URL with one keeps its own", () =>
    Effect.gen(function*() {
      const password = Redacted.value(testServer().password!)
      const who = "select current_user as who, current_setting('application_name') as app"
      const withoutPassword = yield* PgPool.query(who).pipe(Effect.provide(withEnv([
        ["DATABASE_URL", urlWith(undefined)],
        ["PGPASSWORD", password],
        ["PGSSLMODE", "disable"],
        ["PGAPPNAME", "env-fills-in"]
      ])))
      assert.deepStrictEqual(withoutPassword, [{ who: testServer().user, app: "env-fills-in" }])
      const withPassword = yield* PgPool.query(who).pipe(Effect.provide(withEnv([
        ["DATABASE_URL", urlWith(password, "?application_name=url-wins")],
        ["PGPASSWORD", "not-the-password"],
        ["PGAPPNAME", "env-app"]
      ])))
      assert.deepStrictEqual(withPassword, [{ who: testServer().user, app: "url-wins" }])
      // and the variable really is what authenticates: a wrong PGPASSWORD is refused
      const refused = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", urlWith(undefined)],
        ["PGPASSWORD", "not-the-password"]
      ]))))
      assert.strictEqual(refused._tag, "ConnectionError")
      assert.strictEqual((refused as { code?: string }).code, "28P01")
      assert.notInclude(String(refused), "not-the-password")
      // PGSSLMODE fills in too: require against a server without TLS fails
      const tls = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", urlWith(password)],
        ["PGSSLMODE", "require"]
      ]))))
      assert.strictEqual(tls._tag, "ConnectionError")
      assert.include(tls.message, "SSL")
    }))

  it.effect("PGPOOL_SET_SESSION is split at ; and line breaks, not at commas", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(
        splitStatements("set search_path to a, b; set application_name = 'x'"),
        ["set search_path to a, b", "set application_name = 'x'"]
      )
      assert.deepStrictEqual(splitStatements("  set a.b = 1 ;\n\n set a.c = 2;;\r\n"), ["set a.b = 1", "set a.c = 2"])
      assert.deepStrictEqual(splitStatements(";\n ; "), [])
      assert.deepStrictEqual(
        splitStatements(`set application_name = 'a;b'; set "my;var.x" = 'it''s;'`),
        [`set application_name = 'a;b'`, `set "my;var.x" = 'it''s;'`]
      )
      assert.deepStrictEqual(
        splitStatements("do $body$ begin perform 1;\n end $body$; do $$ begin null; end $$"),
        ["do $body$ begin perform 1;\n end $body$", "do $$ begin null; end $$"]
      )
      const resolved = yield* fromEnv([["PGPOOL_SET_SESSION", "set search_path to a, b;\nset application_name = 'x'"]])
      assert.deepStrictEqual(resolved.setSession, ["set search_path to a, b", "set application_name = 'x'"])
      const rows = yield* PgPool.query(
        "select current_setting('search_path') as path, current_setting('application_name') as app"
      ).pipe(Effect.provide(withEnv([
        ["DATABASE_URL", Redacted.value(testConfig().url as Redacted.Redacted)],
        ["PGPOOL_SET_SESSION", "set search_path to a, b; set application_name = 'x'"]
      ])))
      assert.deepStrictEqual(rows, [{ path: "a, b", app: "x" }])
    }))

  it.effect("PgPoolLive: a value that parses but is invalid fails with a ConfigError naming the field and the variable", () =>
    Effect.gen(function*() {
      const url = Redacted.value(testConfig().url as Redacted.Redacted)
      const cases: ReadonlyArray<
        readonly [field: string, variable: string, entries: ReadonlyArray<readonly [string, string]>]
      > = [
        ["maxConnections", "PGPOOL_MAX_CONNECTIONS", [["PGPOOL_MAX_CONNECTIONS", "0"]]],
        ["minConnections", "PGPOOL_MIN_CONNECTIONS", [["PGPOOL_MIN_CONNECTIONS", "5"], [
          "PGPOOL_MAX_CONNECTIONS",
          "2"
        ]]],
        ["idleTimeout", "PGPOOL_IDLE_TIMEOUT", [["PGPOOL_IDLE_TIMEOUT", "0 seconds"]]],
        ["readRouting", "PGPOOL_READ_ROUTING", [["PGPOOL_READ_ROUTING", "primary"]]],
        ["targetSessionAttrs", "PGTARGETSESSIONATTRS", [["PGTARGETSESSIONATTRS", "writable"]]],
        ["maintenanceInterval", "PGPOOL_MAINTENANCE_INTERVAL", [["PGPOOL_MAINTENANCE_INTERVAL", "0"]]]
      ]
      for (const [field, variable, entries] of cases) {
        const error = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([["DATABASE_URL", url], ...entries]))))
        assertConfigError(error, field)
        assert.include(String(error), variable, String(error))
      }
      // an invalid URL names DATABASE_URL, and never shows the URL
      const bad = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", "postgres://u:hunter2@localhost/db?nonsense=1"]
      ]))))
      assertConfigError(bad, "url")
      assert.include(String(bad), "DATABASE_URL")
      assert.notInclude(String(bad), "hunter2")
    }))

  it.effect("targetSessionAttrs defaults to read-write with several hosts and read routing, else to any", () =>
    Effect.gen(function*() {
      const two = [{ host: "h1", port: 5432 }, { host: "h2", port: 5432 }]
      const attrs = (config: PgPool.Config) => Effect.map(resolve(config), (resolved) => resolved.targetSessionAttrs)
      assert.strictEqual(yield* attrs({ hosts: two }), "read-write", "several hosts")
      assert.strictEqual(yield* attrs({ hosts: two, readRouting: "standby" }), "read-write", "several hosts, standby")
      assert.strictEqual(yield* attrs({ url: "postgres://u@h1,h2/db" }), "read-write", "a multi-host URL")
      assert.strictEqual(yield* attrs({ host: "h1" }), "any", "one host")
      assert.strictEqual(yield* attrs({ hosts: [two[0]!] }), "any", "a one-host list")
      assert.strictEqual(yield* attrs({ hosts: two, readRouting: "off" }), "any", "readRouting off")
      assert.strictEqual(yield* attrs({ hosts: two, targetSessionAttrs: "any" }), "any", "given")
      assert.strictEqual(yield* attrs({ hosts: two, targetSessionAttrs: "prefer-standby" }), "prefer-standby")
      assert.strictEqual(
        yield* attrs({ url: "postgres://u@h1,h2/db?target_session_attrs=any" }),
        "any",
        "given in the URL"
      )
      const env = (entries: ReadonlyArray<readonly [string, string]>) =>
        Effect.map(fromEnv(entries), (resolved) => resolved.targetSessionAttrs)
      assert.strictEqual(yield* env([["PGHOST", "h1,h2"]]), "read-write", "PGHOST with several hosts")
      assert.strictEqual(
        yield* env([["PGHOST", "h1,h2"], ["PGTARGETSESSIONATTRS", "any"]]),
        "any",
        "PGTARGETSESSIONATTRS"
      )
      assert.strictEqual(
        yield* env([["PGHOST", "h1,h2"], ["PGPOOL_READ_ROUTING", "off"]]),
        "any",
        "PGPOOL_READ_ROUTING"
      )
      assert.strictEqual(yield* env([["DATABASE_URL", "postgres://u@h1,h2/db"]]), "read-write", "DATABASE_URL")
      assert.strictEqual(
        yield* env([["DATABASE_URL", "postgres://u@h1,h2/db"], ["PGTARGETSESSIONATTRS", "any"]]),
        "any",
        "DATABASE_URL without the parameter, PGTARGETSESSIONATTRS"
      )
      assert.strictEqual(yield* env([["PGHOST", "h1"]]), "any", "PGHOST with one host")
    }))

  it.effect("reconnect accepts any Schedule", () =>
    Effect.gen(function*() {
      /** The live connector, its first `failures` connects refused as a server starting up does (transient). */
      const flaky = (failures: number) => {
        const attempts: Array<number> = [] // the Clock time of each connect
        const connector: Connector.Connector = {
          connect: (options, onLost) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              attempts.push(now)
              return attempts.length <= failures
                ? Effect.fail(
                  new ConnectionError({
                    message: "the database system is starting up (SQLSTATE 57P03)",
                    code: "57P03",
                    host: options.host,
                    port: options.port,
                    database: options.database
                  })
                )
                : Connector.make.connect(options, onLost)
            })
        }
        const layer = (reconnect: Schedule.Schedule<unknown, unknown>) =>
          Layer.scoped(PgPool.PgPool, PgPool.make(testConfig({ reconnect }))).pipe(
            Layer.provide(Layer.succeed(Connector.Connector, connector))
          )
        return { attempts, layer }
      }
      const one = PgPool.query("select 1 as one")

      // Schedule.recurs(2): three attempts, then the layer fails with the last error
      const never = flaky(Infinity)
      const error = yield* Effect.flip(Effect.scoped(Layer.build(never.layer(Schedule.recurs(2)))))
      assert.strictEqual(error._tag, "ConnectionError")
      assert.strictEqual(error._tag === "ConnectionError" ? error.code : "", "57P03")
      assert.strictEqual(never.attempts.length, 3)
      // the same schedule, with two failures: the third attempt (the probe's) gets in, then the pool connects
      const third = flaky(2)
      assert.deepStrictEqual(yield* one.pipe(Effect.provide(third.layer(Schedule.recurs(2)))), [{ one: 1 }])
      assert.strictEqual(third.attempts.length, 4)

      // Schedule.spaced("1 second") under TestClock: one attempt a second, until one (the probe's) gets in, then
      // the pool's connection at once
      const spaced = flaky(3)
      const attempts = Effect.sync(() => spaced.attempts.length)
      const building = yield* Effect.fork(one.pipe(Effect.provide(spaced.layer(Schedule.spaced("1 second")))))
      yield* eventually(attempts, (n) => n === 1)
      yield* TestClock.adjust("999 millis")
      yield* Effect.repeatN(Effect.yieldNow(), 50)
      assert.strictEqual(yield* attempts, 1)
      for (const n of [2, 3, 4]) {
        yield* TestClock.adjust(n === 2 ? "1 milli" : "1 second")
        yield* eventually(attempts, (a) => a === n)
      }
      assert.deepStrictEqual(yield* Fiber.join(building), [{ one: 1 }])
      assert.deepStrictEqual(spaced.attempts, [0, 1000, 2000, 3000, 3000])
    }))
})

describe("configuration that means what it says", () => {
  const url = () => Redacted.value(testConfig().url as Redacted.Redacted)
  const withEnv = (entries: ReadonlyArray<readonly [string, string]>) =>
    Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromMap(new Map(entries))))
  /** The URL with extra query parameters. */
  const withParams = (params: Record<string, string>) => {
    const base = url()
    const query = Object.entries(params).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    return `${base}${base.includes("?") ? "&" : "?"}${query.join("&")}`
  }
  /** The settings a session sees. */
  const settings = Effect.map(
    PgPool.query(
      "select current_setting('search_path') as path, current_setting('work_mem') as mem, current_setting('application_name') as app, (select ssl from pg_stat_ssl where pid = pg_backend_pid()) as ssl"
    ),
    (rows) => rows[0] as { path: string; mem: string; app: string; ssl: boolean }
  )

  it.effect("an unknown field of PgPool.Config is a ConfigError naming it and the field meant", () =>
    Effect.gen(function*() {
      const typo = yield* buildError({ ...testConfig(), maxConection: 5 } as PgPool.Config)
      assertConfigError(typo, "maxConection")
      assert.include(String(typo), "maxConnections")
      // a PgClient.layer-style object: username must not quietly connect as another user
      const username = yield* buildError({ ...testConfig(), username: "someone_else" } as PgPool.Config)
      assertConfigError(username, "username")
      assert.include(String(username), "\"user\"")
      assert.notInclude(String(username), Redacted.value(testConfig().url as Redacted.Redacted))
      // an unset field is fine
      const rows = yield* PgPool.query("select 1 as one").pipe(
        Effect.provide(PgPool.layer({ ...testConfig(), maxIdle: undefined }))
      )
      assert.deepStrictEqual(rows, [{ one: 1 }])
    }))

  it.effect("a URL parameter the pool does not support is a ConfigError naming it, without the password", () =>
    Effect.gen(function*() {
      const error = yield* buildError({ url: withParams({ keepalives_idle: "30" }) })
      assertConfigError(error, "url")
      assert.include(String(error), "keepalives_idle")
      assert.notInclude(String(error), new URL(url()).password)
    }))

  it.effect("libpq's options reach the server as startup parameters: from the URL, the field and PGOPTIONS", () =>
    Effect.gen(function*() {
      const fromUrl = yield* settings.pipe(Effect.provide(PgPool.layer({
        url: withParams({ options: "-c search_path=from_url -c work_mem=7MB" })
      })))
      assert.strictEqual(fromUrl.path, "from_url")
      assert.strictEqual(fromUrl.mem, "7MB")
      const fromField = yield* settings.pipe(Effect.provide(PgPool.layer({
        ...testConfig(),
        options: "--search_path=from_field -c work_mem=3MB",
        statementTimeout: "5 seconds"
      })))
      assert.strictEqual(fromField.path, "from_field")
      assert.strictEqual(fromField.mem, "3MB")
      const fromEnv = yield* settings.pipe(Effect.provide(withEnv([
        ["DATABASE_URL", url()],
        ["PGOPTIONS", "-c search_path=from_env"]
      ])))
      assert.strictEqual(fromEnv.path, "from_env")
      const fallback = yield* settings.pipe(Effect.provide(PgPool.layer({
        url: withParams({ fallback_application_name: "fallback-app" })
      })))
      assert.strictEqual(fallback.app, "fallback-app")
    }))

  it.effect("PgPoolLive: an unknown PGPOOL_ variable is a ConfigError naming it and the variable meant", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(withEnv([
        ["DATABASE_URL", url()],
        ["PGPOOL_MAX_CONECTIONS", "5"]
      ]))))
      assertConfigError(error, "PGPOOL_MAX_CONECTIONS")
      assert.include(String(error), "PGPOOL_MAX_CONNECTIONS")
      // the process environment, split at "_" by effect's env provider, is walked the same way
      const fromProcess = yield* Effect.acquireUseRelease(
        Effect.sync(() => {
          process.env.PGPOOL_IDLE_TIMOUT = "5 seconds"
        }),
        () =>
          Effect.flip(Effect.scoped(Layer.build(Layer.provide(
            PgPoolLive,
            Layer.setConfigProvider(
              ConfigProvider.fromMap(new Map([["DATABASE_URL", url()]])).pipe(
                ConfigProvider.orElse(() => ConfigProvider.fromEnv())
              )
            )
          )))),
        () =>
          Effect.sync(() => {
            delete process.env.PGPOOL_IDLE_TIMOUT
          })
      )
      assertConfigError(fromProcess, "PGPOOL_IDLE_TIMOUT")
      assert.include(String(fromProcess), "PGPOOL_IDLE_TIMEOUT")
      // the known ones pass
      const stats = yield* PgPool.stats.pipe(Effect.provide(withEnv([
        ["DATABASE_URL", url()],
        ["PGPOOL_MAX_CONNECTIONS", "3"],
        ["PGPOOL_MAX_LIFETIME", "10 minutes"],
        ["PGPOOL_MAX_LIFETIME_JITTER", "1 minute"]
      ])))
      assert.strictEqual(stats.maxConnections, 3)
    }))

  it.live("PGPOOL_ durations: a number of milliseconds or a duration such as \"5 seconds\"", () =>
    Effect.gen(function*() {
      const resolved = (entries: ReadonlyArray<readonly [string, string]>) =>
        PgPool.configFromEnv.pipe(
          Effect.flatMap(resolve),
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map(entries)))
        )
      const ms = yield* resolved([["PGPOOL_ACQUIRE_TIMEOUT", "250"], ["PGPOOL_IDLE_TIMEOUT", "1500.5"]])
      assert.strictEqual(ms.acquireTimeout, 250)
      assert.strictEqual(ms.idleTimeout, 1500.5)
      const text = yield* resolved([["PGPOOL_ACQUIRE_TIMEOUT", "5 seconds"], ["PGPOOL_QUERY_TIMEOUT", "300 millis"]])
      assert.strictEqual(text.acquireTimeout, 5000)
      assert.strictEqual(text.queryTimeout, 300)
      const bad = yield* Effect.flip(resolved([["PGPOOL_ACQUIRE_TIMEOUT", "soon"]]))
      assert.isTrue(ConfigError.isConfigError(bad))
      assert.include(String(bad), "PGPOOL_ACQUIRE_TIMEOUT")
      // and the value takes effect: a checkout waits 250 ms, not the default 30 s
      const exhausted = yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* PgPool.connection
        yield* first.query("select 1")
        return yield* Effect.flip(PgPool.query("select 1"))
      })).pipe(
        Effect.provide(
          withEnv([["DATABASE_URL", url()], ["PGPOOL_MAX_CONNECTIONS", "1"], ["PGPOOL_ACQUIRE_TIMEOUT", "250"]])
        )
      )
      assert.strictEqual(exhausted._tag, "PoolExhaustedError")
      if (exhausted._tag === "PoolExhaustedError") {
        assert.strictEqual(exhausted.reason, "acquireTimeout")
        assert.isAtLeast(exhausted.waitedMillis ?? 0, 200)
        assert.isBelow(exhausted.waitedMillis ?? Infinity, 5000)
      }
    }))

  it.effect("libpq's host and port parameters take comma-separated lists", () =>
    Effect.gen(function*() {
      const each = yield* resolve({ url: "postgresql:///app?host=h1,h2&port=5433,5434" })
      assert.deepStrictEqual(each.hosts, [{ host: "h1", port: 5433 }, { host: "h2", port: 5434 }])
      const one = yield* resolve({ url: "postgresql:///app?host=h1,h2&port=6000" })
      assert.deepStrictEqual(one.hosts, [{ host: "h1", port: 6000 }, { host: "h2", port: 6000 }])
      const single = yield* resolve({ url: "postgresql:///app?host=db.example&port=7000" })
      assert.deepStrictEqual(single.hosts, [{ host: "db.example", port: 7000 }])
      const mismatch = yield* Effect.flip(resolve({ url: "postgresql:///app?host=h1,h2,h3&port=1,2" }))
      assertConfigError(mismatch, "url")
      const bad = yield* Effect.flip(resolve({ url: "postgresql:///app?host=h1&port=fifty" }))
      assertConfigError(bad, "url")
    }))

  it.effect("libpq's connect_timeout: zero means no limit (URL and PGCONNECT_TIMEOUT)", () =>
    Effect.gen(function*() {
      const fromUrl = yield* resolve({ url: withParams({ connect_timeout: "0" }) })
      assert.isFalse(Duration.isFinite(fromUrl.connectTimeout))
      const fromEnv = yield* PgPool.configFromEnv.pipe(
        Effect.flatMap(resolve),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["PGCONNECT_TIMEOUT", "0"]])))
      )
      assert.isFalse(Duration.isFinite(fromEnv.connectTimeout))
      const five = yield* resolve({ url: withParams({ connect_timeout: "5" }) })
      assert.strictEqual(Duration.toMillis(five.connectTimeout), 5000)
      const bad = yield* Effect.flip(resolve({ url: withParams({ connect_timeout: "soon" }) }))
      assertConfigError(bad, "url")
      // whole seconds, at least two (libpq's clock ticks in seconds)
      const one = yield* resolve({ url: withParams({ connect_timeout: "1" }) })
      assert.strictEqual(Duration.toMillis(one.connectTimeout), 2000)
      const fractional = yield* Effect.flip(PgPool.configFromEnv.pipe(
        Effect.flatMap(resolve),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["PGCONNECT_TIMEOUT", "0.5"]])))
      ))
      assert.include(String(fractional), "PGCONNECT_TIMEOUT")
    }))

  it.effect("a statementTimeout under a millisecond still bounds statements (PostgreSQL's 0 would mean no limit)", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(PgPool.query("select pg_sleep(0.2)"))
      assert.strictEqual((error as { code?: string }).code, "57014")
    }).pipe(Effect.provide(PgPool.layer({ ...testConfig(), statementTimeout: Duration.micros(400n) }))))

  it.effect("the options of healthCheck and ssl are checked by name: a misspelt one is a ConfigError naming the one meant", () =>
    Effect.gen(function*() {
      const health = yield* Effect.flip(resolve({ healthCheck: { idleTreshold: "1 second" } as never }))
      assert.include(String(health), "did you mean idleThreshold?")
      const ssl = yield* Effect.flip(resolve({ ssl: { rejectUnauthorised: false } as never }))
      assert.include(String(ssl), "did you mean rejectUnauthorized?")
    }))

  it.live("pg reads nothing from the process environment behind the configuration", () => {
    const saved = new Map<string, string | undefined>()
    const parsed = new URL(url())
    const env: Record<string, string> = {
      PGPASSWORD: decodeURIComponent(parsed.password),
      PGAPPNAME: "from-the-shell",
      PGOPTIONS: "-c search_path=from_the_shell",
      PGSSLMODE: "require",
      PGCLIENTENCODING: "LATIN1",
      PGSSLNEGOTIATION: "direct"
    }
    return Effect.acquireUseRelease(
      Effect.sync(() => {
        for (const [k, v] of Object.entries(env)) {
          saved.set(k, process.env[k])
          process.env[k] = v
        }
      }),
      () =>
        Effect.gen(function*() {
          // the variables are in force: node-postgres, told only where to connect (no TLS, which PGSSLMODE and
          // PGSSLNEGOTIATION would ask for), takes the password, application name and options from them
          const raw = yield* Effect.promise(async () => {
            const client = new pg.Client({
              host: parsed.hostname,
              port: Number(parsed.port),
              user: decodeURIComponent(parsed.username),
              database: parsed.pathname.slice(1),
              ssl: false,
              sslnegotiation: "postgres"
            } as pg.ClientConfig)
            await client.connect()
            try {
              const { rows } = await client.query(
                "select current_setting('application_name') as app, current_setting('search_path') as path"
              )
              return rows[0] as unknown
            } finally {
              await client.end()
            }
          })
          assert.deepStrictEqual(raw, { app: "from-the-shell", path: "from_the_shell" })
          const seen = yield* settings.pipe(Effect.provide(PgPool.layer({ url: url() })))
          assert.strictEqual(seen.app, "", "PGAPPNAME is not read behind the configuration")
          assert.notStrictEqual(seen.path, "from_the_shell", "PGOPTIONS is not read behind the configuration")
          assert.isFalse(seen.ssl, "PGSSLMODE is not read behind the configuration")
          const [text] = yield* PgPool.query("select 'é' as e").pipe(Effect.provide(PgPool.layer({ url: url() })))
          assert.deepStrictEqual(text, { e: "é" })
          // no password configured: PGPASSWORD in the shell is not used, and the error says what is missing
          const noPassword = new URL(url())
          noPassword.password = ""
          const error = yield* buildError({ url: noPassword.toString(), connectTimeout: "20 seconds" })
          assert.strictEqual(error._tag, "ConnectionError")
          assert.include(String(error), "the server asked for a password and none was configured")
          assert.notInclude(JSON.stringify(error), env.PGPASSWORD!)
        }),
      () =>
        Effect.sync(() => {
          for (const [k, v] of saved) {
            if (v === undefined) delete process.env[k]
            else process.env[k] = v
          }
        })
    )
  })

  it.live("connect failures that retrying cannot mend fail the layer at once, in plain words", () =>
    Effect.gen(function*() {
      const parsed = new URL(url())
      const base = {
        host: parsed.hostname,
        port: Number(parsed.port),
        user: decodeURIComponent(parsed.username),
        database: parsed.pathname.slice(1),
        connectTimeout: "30 seconds" as const
      }
      const cases: ReadonlyArray<readonly [string, PgPool.Config, string, string | undefined]> = [
        ["wrong password", { ...base, password: Redacted.make("not-the-password") }, "rejected the password", "28P01"],
        [
          "no such database",
          { ...base, password: Redacted.make(decodeURIComponent(parsed.password)), database: "no_such_db" },
          "no such database",
          "3D000"
        ],
        ["no password", base, "the server asked for a password and none was configured", undefined]
      ]
      for (const [name, config, words, code] of cases) {
        let connects = 0
        const counting = Layer.succeed(Connector.Connector, {
          connect: (options, onLost) => {
            connects++
            return Connector.make.connect(options, onLost)
          }
        })
        const error = yield* Effect.flip(Effect.scoped(Layer.build(
          Layer.scoped(PgPool.PgPool, PgPool.make({ ...config, reconnect: Schedule.spaced("10 millis") })).pipe(
            Layer.provide(counting)
          )
        )))
        assert.strictEqual(error._tag, "ConnectionError", name)
        if (error._tag !== "ConnectionError") continue
        assert.include(error.message, words, name)
        assert.strictEqual(error.code, code, name)
        assert.strictEqual(error.retryable, false, name)
        assert.strictEqual(connects, 1, `${name}: not retried`)
      }
    }))
})
