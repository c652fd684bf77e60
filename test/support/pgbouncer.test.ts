import { assert, describe, it, layer } from "@effect/vitest"
import { Duration, Effect, ExecutionStrategy, Exit, Scope } from "effect"
import * as fs from "node:fs"
import * as Connector from "../../src/Connector.js"
import * as PgPool from "../../src/PgPool.js"
import { testDatabase, testServer } from "./db.js"
import * as PgBouncer from "./pgbouncer.js"

const exists = (pid: number) => {
  try {
    process.kill(pid, 0) // signal 0: only asks whether the process exists
    return true
  } catch {
    return false
  }
}

/** One client connection to the bouncer (the bouncer's own, not a server backend), closed with the Scope. */
const client = (bouncer: PgBouncer.PgBouncer) =>
  Connector.make.connect({
    host: bouncer.host,
    port: bouncer.port,
    database: testDatabase(),
    user: bouncer.target.user,
    password: bouncer.target.password,
    ssl: undefined,
    applicationName: "pgbouncer-test-client",
    connectTimeout: Duration.seconds(5),
    parameters: {}
  }, () => {})

const run = (connection: Connector.Connection, sql: string) =>
  Effect.map(Connector.query(connection, sql), (result) => result.rows)

const backendPid = (connection: Connector.Connection) =>
  Effect.map(run(connection, "select pg_backend_pid() as pid"), (rows) => Number(rows[0]!.pid))

/** `begin`, the backend's pid, `commit`: a transaction of its own. */
const pidInTransaction = (connection: Connector.Connection) =>
  Effect.gen(function*() {
    yield* run(connection, "begin")
    const pid = yield* backendPid(connection)
    yield* run(connection, "commit")
    return pid
  })

/**
 * Client `a` runs a transaction, then client `b` opens one and keeps it open while `a` runs another: the
 * backends of `a`'s two transactions, and the one of `b`'s.
 */
const twoClients = (bouncer: PgBouncer.PgBouncer) =>
  Effect.scoped(Effect.gen(function*() {
    const a = yield* client(bouncer)
    const b = yield* client(bouncer)
    const first = yield* pidInTransaction(a)
    yield* run(b, "begin")
    const held = yield* backendPid(b)
    const second = yield* pidInTransaction(a)
    yield* run(b, "commit")
    return { first, held, second }
  }))

const shared = layer(PgBouncer.layer({ defaultPoolSize: 3 }), { excludeTestServices: true, timeout: "30 seconds" })

shared("PgBouncer (one shared bouncer, transaction mode)", (it) => {
  it.effect("a query goes through the bouncer to this file's database on the test server", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.Bouncer
      assert.notStrictEqual(bouncer.port, testServer().port)
      assert.match(bouncer.version, /^\d+\.\d+/)
      const rows = yield* PgPool.query(
        "select current_database() as db, inet_server_port() as port, $1::int + 1 as n",
        [41]
      ).pipe(Effect.provide(PgPool.layer(bouncer.config({ maxConnections: 2 }))))
      assert.deepStrictEqual(rows, [{ db: testDatabase(), port: testServer().port, n: 42 }])

      // the console shows the pool of this database, in transaction mode, with at most 3 server connections
      const pools = yield* bouncer.admin("SHOW POOLS")
      const pool = pools.find((row) => row.database === testDatabase())
      assert.strictEqual(pool?.pool_mode, "transaction")
      const databases = yield* bouncer.admin("SHOW DATABASES")
      assert.strictEqual(databases.find((row) => row.name === testDatabase())?.pool_size, 3)
    }))

  it.effect("transaction mode: a client's two transactions run on different backends", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.Bouncer
      const { first, held, second } = yield* twoClients(bouncer)
      // between a's transactions, b took the backend a had used (a is still connected), so a got another one
      assert.strictEqual(held, first)
      assert.notStrictEqual(second, first)
    }))

  it.effect("transaction mode: concurrent clients share at most default_pool_size backends", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.Bouncer
      const pids = yield* Effect.scoped(Effect.gen(function*() {
        const clients = yield* Effect.forEach(Array.from({ length: 12 }), () => client(bouncer), {
          concurrency: "unbounded"
        })
        return yield* Effect.forEach(
          clients,
          (connection) =>
            Effect.forEach(Array.from({ length: 5 }), () => pidInTransaction(connection), { concurrency: 1 }),
          { concurrency: "unbounded" }
        )
      }))
      const perClient = pids.map((list) => new Set(list).size)
      const all = new Set(pids.flat())
      assert.isAtMost(all.size, 3)
      // with 12 clients on at most 3 backends, some client's transactions moved between backends
      assert.isTrue(perClient.some((n) => n > 1), `backends per client: ${perClient.join(",")}`)
    }))
})

describe("PgBouncer", () => {
  it.live("session mode: a client keeps its backend across transactions", () =>
    Effect.gen(function*() {
      const bouncer = yield* PgBouncer.make({ poolMode: "session", defaultPoolSize: 2 })
      const { first, held, second } = yield* twoClients(bouncer)
      assert.strictEqual(second, first)
      assert.notStrictEqual(held, first)
    }).pipe(Effect.scoped))

  it.live("closing the Scope stops the bouncer (its pid is gone) and deletes its temp dir", () =>
    Effect.gen(function*() {
      // a Scope of its own, inside the test's (which closes it too if the test fails on the way)
      const scope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
      const bouncer = yield* Scope.extend(PgBouncer.make(), scope)
      assert.isTrue(exists(bouncer.pid))
      assert.isTrue(bouncer.isRunning())
      assert.isTrue(fs.existsSync(bouncer.dir))
      // a client with an open transaction does not hold up the stop
      const clientScope = yield* Scope.fork(yield* Effect.scope, ExecutionStrategy.sequential)
      const connection = yield* Scope.extend(client(bouncer), clientScope)
      yield* run(connection, "begin")
      yield* backendPid(connection)

      yield* Scope.close(scope, Exit.void)
      assert.isFalse(bouncer.isRunning())
      assert.isFalse(exists(bouncer.pid))
      assert.isFalse(fs.existsSync(bouncer.dir))
      yield* Scope.close(clientScope, Exit.void)
    }).pipe(Effect.scoped))

  it.live("without the binary, make fails and says that .ci/run installs it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(PgBouncer.make({ binary: "/nonexistent/pgbouncer" }))
      assert.strictEqual(error._tag, "PgBouncerError")
      assert.include(error.message, "not installed")
      assert.include(error.message, ".ci/run")
    }).pipe(Effect.scoped))
})
