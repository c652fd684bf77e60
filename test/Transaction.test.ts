import { SqlClient } from "@effect/sql"
import { assert, describe, it } from "@effect/vitest"
import { Cause, Chunk, Deferred, Effect, Exit, Fiber, Layer, Option, Stream } from "effect"
import * as Connector from "../src/Connector.js"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import * as PgPoolTest from "../src/PgPoolTest.js"
import * as Transaction from "../src/Transaction.js"
import { adminQuery, backends, eventually, testConfig, testDatabase, testLayer } from "./support/db.js"

const PoolLive = testLayer({ maxConnections: 6 })
const Live = Layer.provideMerge(PgPoolSql.layer, PoolLive)

const count = (table: string) =>
  PgPool.query(`select count(*)::int as n from ${table}`).pipe(Effect.map((rows) => Number(rows[0]!.n)))

const backendPid = PgPool.query("select pg_backend_pid() as pid").pipe(Effect.map((rows) => Number(rows[0]!.pid)))

/** Terminates the backend of the fiber's connection and waits until the server no longer lists it. */
const terminateOwnBackend = Effect.gen(function*() {
  const pid = yield* backendPid
  yield* adminQuery("select pg_terminate_backend($1, 5000)", [pid])
  yield* eventually(
    adminQuery("select count(*)::int as n from pg_stat_activity where pid = $1", [pid]),
    (rows) => Number(rows[0]!.n) === 0
  )
})

const idleInTransaction = adminQuery(
  "select count(*)::int as n from pg_stat_activity where datname = $1 and state like 'idle in transaction%'",
  [testDatabase()]
).pipe(Effect.map((rows) => Number(rows[0]!.n)))

const fresh = (table: string) =>
  Effect.zipRight(
    PgPool.query(`drop table if exists ${table}`),
    PgPool.query(`create table ${table} (id int primary key, v int not null default 0)`)
  )

describe("Transaction", () => {
  it.effect("commits: the rows are visible afterwards", () =>
    Effect.gen(function*() {
      yield* fresh("tx_commit")
      const inside = yield* Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_commit (id) values (1), (2)")
        return yield* Transaction.isActive
      }))
      assert.isTrue(inside)
      assert.isFalse(yield* Transaction.isActive)
      assert.strictEqual(yield* count("tx_commit"), 2)
    }).pipe(Effect.provide(Live)))

  for (
    const [name, end] of [
      ["a failure", Effect.fail("boom")],
      ["a defect", Effect.die("defect")]
    ] as const
  ) {
    it.effect(`rolls back on ${name}`, () =>
      Effect.gen(function*() {
        yield* fresh("tx_rb")
        // on a pinned connection, looked at right after the transaction and before the connection goes back to
        // the pool (whose return reset would roll an open transaction back by itself): the transaction's own
        // ROLLBACK must have ended it
        const [exit, seen, open] = yield* PgPool.withConnection(Effect.gen(function*() {
          const exit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
            yield* PgPool.query("insert into tx_rb (id) values (1)")
            return yield* end
          })))
          // the connection's own view: an open transaction would still see its insert
          return [exit, yield* count("tx_rb"), yield* idleInTransaction] as const
        }))
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(seen, 0, "the insert is still visible on the transaction's connection")
        assert.strictEqual(open, 0, "the connection is still idle in transaction after the transaction ended")
        assert.strictEqual(yield* count("tx_rb"), 0)
        assert.strictEqual(yield* idleInTransaction, 0)
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(Live)))
  }

  // the pool's return reset would roll an open transaction back anyway: only work on the same pinned connection
  // after the transaction shows that the transaction itself sent ROLLBACK when it ended
  for (
    const [name, end] of [
      ["a failure", (_: Deferred.Deferred<void>) => Effect.fail("boom")],
      ["a defect", (_: Deferred.Deferred<void>) => Effect.die("defect")],
      [
        "an interruption",
        (inserted: Deferred.Deferred<void>) => Effect.zipRight(Deferred.succeed(inserted, undefined), Effect.never)
      ]
    ] as const
  ) {
    it.effect(`ROLLBACK is sent when it ends on ${name}: a statement after it on the same connection commits`, () =>
      Effect.gen(function*() {
        yield* fresh("tx_after")
        const inserted = yield* Deferred.make<void>()
        const fiber = yield* Effect.fork(PgPool.withConnection(
          Transaction.withTransaction(Effect.gen(function*() {
            yield* PgPool.query("insert into tx_after (id) values (1)")
            return yield* end(inserted)
          })).pipe(
            Effect.onExit(() => Effect.orDie(PgPool.query("insert into tx_after (id) values (2)")))
          )
        ))
        if (name === "an interruption") {
          yield* Deferred.await(inserted)
          yield* Fiber.interrupt(fiber)
        } else {
          yield* Fiber.await(fiber)
        }
        const rows = yield* PgPool.query("select id from tx_after order by id")
        assert.deepStrictEqual(rows, [{ id: 2 }])
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(Live)))
  }

  it.effect("rolls back on interruption", () =>
    Effect.gen(function*() {
      yield* fresh("tx_int")
      const inserted = yield* Deferred.make<void>()
      // what the transaction's connection sees once the interrupted transaction has ended, before the connection
      // goes back to the pool (whose return reset would roll an open transaction back by itself)
      const seen = yield* Deferred.make<readonly [visible: number, idleInTransaction: number]>()
      const fiber = yield* Effect.fork(PgPool.withConnection(
        Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into tx_int (id) values (1)")
          yield* Deferred.succeed(inserted, undefined)
          yield* Effect.never
        })).pipe(
          Effect.onInterrupt(() =>
            Effect.all([count("tx_int"), idleInTransaction]).pipe(
              Effect.flatMap((values) => Deferred.succeed(seen, values)),
              Effect.orDie
            )
          )
        )
      ))
      yield* Deferred.await(inserted)
      yield* Fiber.interrupt(fiber)
      const [visible, open] = yield* Deferred.await(seen)
      assert.strictEqual(visible, 0, "the insert is still visible on the transaction's connection")
      assert.strictEqual(open, 0, "the connection is still idle in transaction after the transaction ended")
      assert.strictEqual(yield* count("tx_int"), 0)
      assert.strictEqual(yield* idleInTransaction, 0)
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("interrupting a statement inside a transaction cancels it and rolls back", () =>
    Effect.gen(function*() {
      yield* fresh("tx_sleep")
      const fiber = yield* Effect.fork(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_sleep (id) values (1)")
        yield* PgPool.query("select pg_sleep(30)")
      })))
      yield* eventually(backends(), (rows) =>
        rows.some((row) => row.query === "select pg_sleep(30)" && row.state === "active"))
      yield* Fiber.interrupt(fiber)
      const rows = yield* backends()
      assert.isTrue(
        rows.every((row) =>
          row.state === "idle"
        ),
        JSON.stringify(rows)
      )
      assert.strictEqual(yield* count("tx_sleep"), 0)
    }).pipe(Effect.provide(Live)))

  it.effect("PgPool.query and PgPool.connection inside use the transaction's connection", () =>
    Effect.gen(function*() {
      const [a, b, c, txPid] = yield* Transaction.withTransaction(Effect.gen(function*() {
        const a = yield* backendPid
        const b = yield* Effect.scoped(Effect.map(PgPool.connection, (conn) => conn.backendPid))
        const c = yield* PgPool.withConnection(backendPid)
        const tx = yield* Transaction.Transaction
        return [a, b, c, tx.connection.backendPid] as const
      }))
      assert.deepStrictEqual([a, b, c], [txPid, txPid, txPid])
    }).pipe(Effect.provide(Live)))

  it.effect("a nested call is a savepoint: rolled back alone on failure, released on success", () =>
    Effect.gen(function*() {
      yield* fresh("tx_nested")
      const depths = yield* Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_nested (id) values (1)")
        const inner = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into tx_nested (id) values (2)")
          return yield* Effect.fail("inner fails")
        })))
        assert.isTrue(Exit.isFailure(inner))
        const kept = yield* Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into tx_nested (id) values (3)")
          const tx = yield* Transaction.Transaction
          return tx.depth
        }))
        const outer = yield* Transaction.Transaction
        return [outer.depth, kept]
      }))
      assert.deepStrictEqual(depths, [0, 1])
      const rows = yield* PgPool.query("select id from tx_nested order by id")
      assert.deepStrictEqual(rows, [{ id: 1 }, { id: 3 }])
    }).pipe(Effect.provide(Live)))

  it.effect("a nested call whose statement failed silently: RELEASE fails, ROLLBACK TO runs, the outer goes on", () =>
    Effect.gen(function*() {
      yield* fresh("tx_release")
      const [inner, tail] = yield* Transaction.withTransaction(Effect.gen(function*() {
        const inner = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into tx_release (id) values (1)")
          yield* Effect.ignore(PgPool.query("select bad syntax"))
          return "looks fine"
        })))
        yield* PgPool.query("insert into tx_release (id) values (2)")
        return [inner, yield* PgPool.query("select count(*)::int as n from tx_release")] as const
      }))
      assert.isTrue(Exit.isFailure(inner))
      if (Exit.isFailure(inner)) {
        assert.isFalse(Cause.isDie(inner.cause))
        const error = Option.getOrThrow(Cause.failureOption(inner.cause))
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag === "QueryError") assert.strictEqual(error.code, "25P02")
      }
      assert.deepStrictEqual(tail, [{ n: 1 }])
      const rows = yield* PgPool.query("select id from tx_release order by id")
      assert.deepStrictEqual(rows, [{ id: 2 }])
      assert.strictEqual(yield* idleInTransaction, 0)
      assert.strictEqual((yield* PgPool.stats).inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("a RELEASE that fails and a ROLLBACK TO that fails too: the cause keeps both failures", () =>
    Effect.gen(function*() {
      let inner: Exit.Exit<unknown, unknown> = Exit.void
      const outer = yield* Effect.flip(Transaction.withTransaction(Effect.gen(function*() {
        inner = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("release savepoint effect_sql_1")
          yield* Effect.ignore(PgPool.query("select bad syntax"))
        })))
      })))
      assert.isTrue(Exit.isFailure(inner))
      if (Exit.isFailure(inner)) {
        assert.isFalse(Cause.isDie(inner.cause))
        const codes = [...Cause.failures(inner.cause)].map((error) =>
          typeof error === "object" && error !== null && "code" in error ? error.code : error
        )
        assert.deepStrictEqual(codes, ["25P02", "3B001"], Cause.pretty(inner.cause))
      }
      assert.strictEqual(outer._tag === "QueryError" ? outer.code : outer._tag, "40000")
      assert.strictEqual(yield* idleInTransaction, 0)
      assert.strictEqual((yield* PgPool.stats).inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("a ROLLBACK that fails after a failed body: the cause keeps both failures", () =>
    Effect.gen(function*() {
      yield* fresh("tx_rb_lost")
      const exit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_rb_lost (id) values (1)")
        yield* terminateOwnBackend
        return yield* Effect.fail("body fails")
      })))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        assert.isFalse(Cause.isDie(exit.cause))
        const failures = [...Cause.failures(exit.cause)]
        assert.strictEqual(failures.length, 2, Cause.pretty(exit.cause))
        assert.strictEqual(failures[0], "body fails")
        const rollback = failures[1]
        assert.strictEqual(typeof rollback === "object" ? rollback._tag : rollback, "ConnectionError")
      }
      assert.strictEqual(yield* count("tx_rb_lost"), 0)
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.inUse, 0)
      assert.isAtLeast(stats.closedByReason.broken, 1)
    }).pipe(Effect.provide(Live)))

  it.effect("sql.withTransaction and Transaction.withTransaction nest in each other on one connection", () =>
    Effect.gen(function*() {
      yield* fresh("tx_mixed")
      const sql = yield* SqlClient.SqlClient
      const seen = yield* sql.withTransaction(Effect.gen(function*() {
        const outerPid = yield* backendPid
        yield* sql`insert into tx_mixed (id) values (1)`
        const innerExit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* sql`insert into tx_mixed (id) values (2)`
          const innerPid = yield* backendPid
          const depth = (yield* Transaction.Transaction).depth
          const deepest = yield* sql.withTransaction(Effect.map(Transaction.Transaction, (tx) => tx.depth))
          yield* Effect.fail({ innerPid, depth, deepest })
        })))
        return { outerPid, innerExit }
      }))
      const failure = Cause.failureOption(Exit.isFailure(seen.innerExit) ? seen.innerExit.cause : Cause.empty)
      assert.isTrue(Option.isSome(failure))
      const inner = Option.getOrThrow(failure) as { innerPid: number; depth: number; deepest: number }
      assert.strictEqual(inner.innerPid, seen.outerPid)
      assert.deepStrictEqual([inner.depth, inner.deepest], [1, 2])
      const rows = yield* sql<{ id: number }>`select id from tx_mixed order by id`
      assert.deepStrictEqual(rows.map((r) => r.id), [1])
    }).pipe(Effect.provide(Live)))

  it.effect("isolation level and read-only take effect", () =>
    Effect.gen(function*() {
      yield* fresh("tx_ro")
      const [row] = yield* Transaction.withTransaction(
        PgPool.query(
          "select current_setting('transaction_isolation') as iso, current_setting('transaction_read_only') as ro, current_setting('transaction_deferrable') as d"
        ),
        { isolation: "serializable", readOnly: true, deferrable: true }
      )
      assert.deepStrictEqual(row, { iso: "serializable", ro: "on", d: "on" })
      const error = yield* Effect.flip(
        Transaction.withTransaction(PgPool.query("insert into tx_ro (id) values (1)"), { readOnly: true })
      )
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "25006")
      const [rr] = yield* PgPool.query("select 1 as x").pipe(
        Transaction.withTransaction({ isolation: "repeatable read" }),
        Effect.zipRight(
          Transaction.withTransaction(PgPool.query("select current_setting('transaction_isolation') as iso"), {
            isolation: "repeatable read"
          })
        )
      )
      assert.deepStrictEqual(rr, { iso: "repeatable read" })
    }).pipe(Effect.provide(Live)))

  it.effect("invalid options are a typed error naming them, nothing run: an isolation level, a non-boolean, an unknown option", () =>
    Effect.gen(function*() {
      yield* fresh("tx_options")
      for (
        const [options, words] of [
          [{ isolation: "chaos" }, "isolation level \"chaos\""],
          // a caller without types: "yes" would have run read-write, a misspelt option would have been dropped
          [{ readOnly: "yes" }, "readOnly must be a boolean, got \"yes\""],
          [{ deferrable: 1 }, "deferrable must be a boolean"],
          [{ readonly: true }, "no option \"readonly\""],
          [null, "must be an object, got null"]
        ] as const
      ) {
        const error = yield* Effect.flip(
          Transaction.withTransaction(PgPool.query("insert into tx_options (id) values (1)"), options as never)
        )
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag === "QueryError") assert.strictEqual(error.code, "22023")
        assert.include(error.message, words)
      }
      assert.strictEqual(yield* count("tx_options"), 0)
    }).pipe(Effect.provide(Live)))

  it.effect("a COMMIT the server answers with ROLLBACK is an error, not a success", () =>
    Effect.gen(function*() {
      yield* fresh("tx_failed")
      const error = yield* Effect.flip(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_failed (id) values (1)")
        yield* Effect.ignore(PgPool.query("select 1/0"))
        return "looks fine"
      })))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "40000")
      assert.include(error.message, "ROLLBACK")
      assert.strictEqual(yield* count("tx_failed"), 0)
    }).pipe(Effect.provide(Live)))

  it.effect("a COMMIT or ROLLBACK in the body ends the transaction: it fails 25000, and so does every later statement of it", () =>
    Effect.gen(function*() {
      yield* fresh("tx_inner_end")
      for (const end of ["commit", "ROLLBACK", "/* ends it */ end"]) {
        const error = yield* Effect.flip(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into tx_inner_end (id) values (1)")
          // the body that goes on after the failure: its statements are refused, they would run outside of it
          const ended = yield* Effect.flip(PgPool.query(end))
          const later = yield* Effect.flip(PgPool.query("insert into tx_inner_end (id) values (2)"))
          assert.include(later.message, "A statement ended the transaction it ran in")
          // and in a savepoint opened after it
          const nested = yield* Effect.flip(Transaction.withTransaction(PgPool.query("select 1")))
          assert.strictEqual((nested as { code?: string }).code, "25000")
          return yield* Effect.fail(ended)
        })))
        assert.strictEqual((error as { code?: string }).code, "25000", end)
        assert.include((error as Error).message, "A statement ended the transaction it ran in")
        // what ran before it was committed (or rolled back) by it; nothing after it ran
        assert.deepStrictEqual(
          yield* PgPool.query("select id from tx_inner_end order by id"),
          end === "ROLLBACK" ? [] : [{ id: 1 }],
          end
        )
        yield* PgPool.query("delete from tx_inner_end")
      }
      assert.strictEqual(yield* idleInTransaction, 0)
      // in a savepoint too: the whole transaction is gone
      const nested = yield* Effect.flip(Transaction.withTransaction(
        Transaction.withTransaction(PgPool.query("commit"))
      ))
      assert.strictEqual((nested as { code?: string }).code, "25000")
      assert.deepStrictEqual(yield* PgPool.query("select 1 as one"), [{ one: 1 }])
    }).pipe(Effect.provide(Live)))

  it.effect("a COMMIT that fails (deferred constraint) is a typed QueryError, not a defect", () =>
    Effect.gen(function*() {
      yield* PgPool.query("drop table if exists tx_child")
      yield* PgPool.query("drop table if exists tx_parent")
      yield* PgPool.query("create table tx_parent (id int primary key)")
      yield* PgPool.query(
        "create table tx_child (id int, parent int references tx_parent (id) deferrable initially deferred)"
      )
      const exit = yield* Effect.exit(Transaction.withTransaction(PgPool.query("insert into tx_child values (1, 42)")))
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        assert.isFalse(Cause.isDie(exit.cause))
        const error = Option.getOrThrow(Cause.failureOption(exit.cause))
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag === "QueryError") assert.strictEqual(error.code, "23503")
      }
      assert.strictEqual(yield* count("tx_child"), 0)
      assert.strictEqual((yield* PgPool.stats).inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("a connection lost inside a transaction surfaces as ConnectionError and nothing is retried", () =>
    Effect.gen(function*() {
      yield* fresh("tx_lost")
      const error = yield* Effect.flip(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into tx_lost (id) values (1)")
        const pid = yield* backendPid
        yield* adminQuery("select pg_terminate_backend($1)", [pid])
        yield* PgPool.query("insert into tx_lost (id) values (2)")
      })))
      assert.strictEqual(error._tag, "ConnectionError")
      assert.strictEqual(yield* count("tx_lost"), 0)
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.inUse, 0)
      assert.isAtLeast(stats.closedByReason.broken, 1)
    }).pipe(Effect.provide(Live)))

  it.effect("a connection terminated between two statements: the ConnectionError carries the server's 57P01, in a transaction and pinned", () =>
    Effect.gen(function*() {
      const terminated = Effect.gen(function*() {
        yield* PgPool.query("select 1")
        yield* terminateOwnBackend
        return yield* PgPool.query("select 2")
      })
      for (const run of [Transaction.withTransaction, PgPool.withConnection]) {
        const error = yield* Effect.flip(run(terminated))
        if (typeof error === "string") return assert.fail(error)
        assert.strictEqual(error._tag, "ConnectionError")
        assert.strictEqual((error as { readonly code?: string }).code, "57P01", error.message)
        assert.notInclude(error.message, "not queryable")
      }
      assert.strictEqual((yield* PgPool.stats).inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.live(
    "bank transfers under concurrency, random failures and interruptions keep the total",
    () =>
      Effect.gen(function*() {
        yield* PgPool.query("drop table if exists bank")
        yield* PgPool.query("create table bank (id int primary key, balance int not null)")
        yield* PgPool.query("insert into bank select g, 1000 from generate_series(1, 10) g")
        const sql = yield* SqlClient.SqlClient
        let seed = 42
        const random = () => {
          seed = (seed * 1103515245 + 12345) & 0x7fffffff
          return seed / 0x7fffffff
        }
        const transfer = (i: number) => {
          const from = 1 + Math.floor(random() * 10)
          const to = 1 + Math.floor(random() * 10)
          const amount = 1 + Math.floor(random() * 50)
          const fail = random() < 0.2
          const viaSql = i % 2 === 0
          const body = Effect.gen(function*() {
            if (viaSql) yield* sql`update bank set balance = balance - ${amount} where id = ${from}`
            else yield* PgPool.query("update bank set balance = balance - $2 where id = $1", [from, amount])
            yield* Effect.sleep(Math.floor(random() * 3))
            if (fail) yield* Effect.fail("random failure")
            if (viaSql) yield* sql`update bank set balance = balance + ${amount} where id = ${to}`
            else yield* PgPool.query("update bank set balance = balance + $2 where id = $1", [to, amount])
          })
          return viaSql ? sql.withTransaction(body) : Transaction.withTransaction(body)
        }
        const fibers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
        for (let i = 0; i < 300; i++) fibers.push(yield* Effect.fork(Effect.exit(transfer(i))))
        for (const fiber of fibers) if (random() < 0.2) yield* Effect.fork(Fiber.interrupt(fiber))
        yield* Fiber.awaitAll(fibers)
        const [total] = yield* PgPool.query("select sum(balance)::int as total from bank")
        assert.deepStrictEqual(total, { total: 10_000 })
        const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0 && s.waiting === 0)
        assert.isAtMost(stats.size, 6)
        assert.strictEqual(yield* idleInTransaction, 0)
      }).pipe(Effect.provide(Live)),
    60_000
  )

  describe("BEGIN goes out with the first statement", () => {
    /** The live connector, counting the writes (round trips) the pool makes. */
    const counted = (writes: Array<string>): Connector.Connector => ({
      connect: (options, onLost) =>
        Effect.map(Connector.make.connect(options, onLost), (connection): Connector.Connection => ({
          ...connection,
          send: (text, params, rowMode, callback) => {
            writes.push(text)
            connection.send(text, params, rowMode, callback)
          },
          sendAfter: (prefix, text, params, rowMode, callback) => {
            writes.push([...prefix, text].join(" + "))
            connection.sendAfter!(prefix, text, params, rowMode, callback)
          }
        }))
    })
    const countedLive = (writes: Array<string>) =>
      Layer.provideMerge(
        PgPoolSql.layer,
        Layer.scoped(PgPool.PgPool, PgPool.make(testConfig({ healthCheck: false }))).pipe(
          Layer.provide(Layer.succeed(Connector.Connector, counted(writes)))
        )
      )

    it.effect("one round trip less per transaction; an empty transaction sends nothing", () => {
      const writes: Array<string> = []
      return Effect.gen(function*() {
        yield* fresh("tx_pipe")
        writes.length = 0
        yield* Transaction.withTransaction(
          Effect.gen(function*() {
            yield* PgPool.query("insert into tx_pipe (id) values ($1)", [1])
            yield* PgPool.query("update tx_pipe set v = v + 1 where id = 1")
          }),
          { isolation: "repeatable read" }
        )
        assert.deepStrictEqual(writes, [
          "BEGIN ISOLATION LEVEL REPEATABLE READ + insert into tx_pipe (id) values ($1)",
          "update tx_pipe set v = v + 1 where id = 1",
          "COMMIT"
        ])
        assert.strictEqual(yield* count("tx_pipe"), 1)
        writes.length = 0
        yield* Transaction.withTransaction(Effect.void)
        const sql = yield* SqlClient.SqlClient
        yield* sql.withTransaction(Effect.void)
        assert.deepStrictEqual(writes, [])
        // a savepoint takes the BEGIN along
        yield* Transaction.withTransaction(Transaction.withTransaction(PgPool.query("select 1")))
        assert.deepStrictEqual(writes, [
          "BEGIN + SAVEPOINT effect_sql_1",
          "select 1",
          "RELEASE SAVEPOINT effect_sql_1",
          "COMMIT"
        ])
        assert.strictEqual(yield* idleInTransaction, 0)
      }).pipe(Effect.provide(countedLive(writes)))
    })

    it.effect("when the BEGIN itself fails, the rest of the transaction is refused, not run outside of it", () => {
      // a connector whose pipelined BEGIN fails, as a cancel that hits the BEGIN would make it
      const sabotaged: Connector.Connector = {
        connect: (options, onLost) =>
          Effect.map(Connector.make.connect(options, onLost), (connection): Connector.Connection => ({
            ...connection,
            sendAfter: (_prefix, text, params, rowMode, callback) =>
              connection.sendAfter!(["select 1/0"], text, params, rowMode, callback)
          }))
      }
      const layer = Layer.scoped(PgPool.PgPool, PgPool.make(testConfig({ healthCheck: false }))).pipe(
        Layer.provide(Layer.succeed(Connector.Connector, sabotaged))
      )
      return Effect.gen(function*() {
        yield* fresh("tx_begin_lost")
        const exit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* Effect.ignore(PgPool.query("insert into tx_begin_lost (id) values ($1)", [1]))
          yield* PgPool.query("insert into tx_begin_lost (id) values ($1)", [2])
        })))
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
        assert.strictEqual(Option.isSome(error) && error.value._tag === "QueryError" ? error.value.code : "", "25P01")
        assert.strictEqual(yield* count("tx_begin_lost"), 0)
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
        // the connection is fine afterwards
        assert.deepStrictEqual(yield* PgPool.query("select 1 as one"), [{ one: 1 }])
      }).pipe(Effect.provide(layer))
    })

    it.effect("a BEGIN sent on its own ahead of a cursor stream that fails also refuses the rest of the transaction", () => {
      // BEGIN cannot ride along with a cursor: it is sent alone first; here it fails, as a cancel could make it
      const sabotaged: Connector.Connector = {
        connect: (options, onLost) =>
          Effect.map(Connector.make.connect(options, onLost), (connection): Connector.Connection => ({
            ...connection,
            send: (text, params, rowMode, callback) =>
              connection.send(text.startsWith("BEGIN") ? "select 1/0" : text, params, rowMode, callback)
          }))
      }
      const layer = Layer.provideMerge(
        PgPoolSql.layer,
        Layer.scoped(PgPool.PgPool, PgPool.make(testConfig({ healthCheck: false }))).pipe(
          Layer.provide(Layer.succeed(Connector.Connector, sabotaged))
        )
      )
      return Effect.gen(function*() {
        yield* fresh("tx_flush_lost")
        const sql = yield* SqlClient.SqlClient
        const exit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* Effect.ignore(Stream.runDrain(sql`select 1`.stream))
          yield* PgPool.query("insert into tx_flush_lost (id) values ($1)", [1])
        })))
        const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
        assert.strictEqual(Option.isSome(error) && error.value._tag === "QueryError" ? error.value.code : "", "25P01")
        assert.strictEqual(yield* count("tx_flush_lost"), 0)
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(layer))
    })

    it.effect("a failure of the first statement leaves a failed transaction that is rolled back", () => {
      const writes: Array<string> = []
      return Effect.gen(function*() {
        yield* fresh("tx_pipe_fail")
        // on a pinned connection, with a statement of its own after the transaction: the transaction's ROLLBACK
        // must come before it (the pool's return reset, after it, would also write a ROLLBACK)
        const [exit, after] = yield* PgPool.withConnection(Effect.gen(function*() {
          const exit = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
            yield* Effect.ignore(PgPool.query("insert into no_such_table values (1)"))
            yield* PgPool.query("insert into tx_pipe_fail (id) values (1)")
          })))
          return [exit, yield* PgPool.query("select 'after the transaction' as marker")] as const
        }))
        // the swallowed error left the transaction failed: the insert after it is refused, nothing autocommits
        assert.isTrue(Exit.isFailure(exit))
        assert.deepStrictEqual(after, [{ marker: "after the transaction" }])
        assert.deepStrictEqual(writes.slice(-4), [
          "BEGIN + insert into no_such_table values (1)",
          "insert into tx_pipe_fail (id) values (1)",
          "ROLLBACK",
          "select 'after the transaction' as marker"
        ])
        assert.strictEqual(yield* count("tx_pipe_fail"), 0)
        assert.strictEqual(yield* idleInTransaction, 0)
      }).pipe(Effect.provide(countedLive(writes)))
    })

    const servers: ReadonlyArray<readonly [string, Layer.Layer<PgPool.PgPool, unknown>]> = [
      ["a real server", PoolLive],
      ["the fake", PgPoolTest.layer()]
    ]
    for (const [server, layer] of servers) {
      it.effect(`a statement made before the transaction began still takes its BEGIN along (${server})`, () =>
        Effect.gen(function*() {
          // the statement value exists before withTransaction runs; several statements in one text cannot
          // share the extended-protocol message with the BEGIN, so BEGIN goes first, on its own
          const statuses = yield* PgPool.withConnection(Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => {
            const both = conn.query("select 1 as a; select 2 as b")
            return Transaction.withTransaction(
              Effect.zipRight(
                both,
                conn.query("select current_setting('transaction_isolation') as level")
              ),
              { isolation: "serializable" }
            )
          })))
          assert.deepStrictEqual(statuses, [{ level: "serializable" }])
          assert.strictEqual((yield* PgPool.stats).inUse, 0)
        }).pipe(Effect.provide(layer)))
    }

    it.effect("a cursor stream as the first statement runs inside the transaction", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const levels = yield* Transaction.withTransaction(
          Stream.runCollect(sql`select current_setting('transaction_isolation') as level`.stream),
          { isolation: "serializable" }
        )
        assert.deepStrictEqual(Chunk.toReadonlyArray(levels), [{ level: "serializable" }])
      }).pipe(Effect.provide(Live)))
  })
})
