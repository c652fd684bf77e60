import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Ref, Scope, TestClock } from "effect"
import * as PgPool from "../src/PgPool.js"
import * as Transaction from "../src/Transaction.js"
import { adminQuery, backends, eventually, testConfig, testDatabase, testLayer } from "./support/db.js"

const pid = (rows: ReadonlyArray<PgPool.Row>) => Number(rows[0]!.pid)
const backendPid = PgPool.query("select pg_backend_pid() as pid").pipe(Effect.map(pid))

/** Checks a connection out and keeps it until `release` is completed. */
const hold = (release: Deferred.Deferred<void>) =>
  Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => Effect.as(Deferred.await(release), conn.backendPid)))

const waitForStats = (predicate: (stats: PgPool.PoolStats) => boolean) => eventually(PgPool.stats, predicate)

const serverBackends = (
  predicate: (rows: ReadonlyArray<{ pid: number; state: string | null; query: string }>) => boolean
) => eventually(backends(), predicate)

describe("PgPool", () => {
  describe("queries", () => {
    it.effect("runs a statement with parameters and returns rows", () =>
      Effect.gen(function*() {
        const rows = yield* PgPool.query("select $1::int + 1 as n, $2::text as s", [41, "x"])
        assert.deepStrictEqual(rows, [{ n: 42, s: "x" }])
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.inUse, 0)
        assert.strictEqual(stats.idle, 1)
      }).pipe(Effect.provide(testLayer())))

    it.effect("a syntax error is a QueryError with SQLSTATE 42601 and the pool stays usable", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(PgPool.query("selec 1"))
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag !== "QueryError") return
        assert.strictEqual(error.code, "42601")
        assert.strictEqual(error.severity, "ERROR")
        assert.isNumber(error.position)
        assert.include(error.message, "syntax error")
        const rows = yield* PgPool.query("select 1 as one")
        assert.deepStrictEqual(rows, [{ one: 1 }])
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.inUse, 0)
        assert.strictEqual(stats.size, 1)
      }).pipe(Effect.provide(testLayer())))

    it.effect("constraint violations carry detail, table and constraint", () =>
      Effect.gen(function*() {
        yield* PgPool.query("create table uniq_t (id int primary key)")
        yield* PgPool.query("insert into uniq_t values (1)")
        const error = yield* Effect.flip(PgPool.query("insert into uniq_t values (1)"))
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag !== "QueryError") return
        assert.strictEqual(error.code, "23505")
        assert.strictEqual(error.table, "uniq_t")
        assert.strictEqual(error.constraint, "uniq_t_pkey")
        assert.include(error.detail ?? "", "already exists")
      }).pipe(Effect.provide(testLayer())))

    it.effect("an error raised in a PL/pgSQL function says where: the function and its line", () =>
      Effect.gen(function*() {
        yield* PgPool.query(
          "create function raise_where() returns int language plpgsql as $$ begin raise exception 'nope' using errcode = 'P0001'; end $$"
        )
        const error = yield* Effect.flip(PgPool.query("select raise_where()"))
        assert.strictEqual(error._tag, "QueryError")
        if (error._tag !== "QueryError") return
        assert.strictEqual(error.code, "P0001")
        assert.include(error.where ?? "", "PL/pgSQL function raise_where() line 1")
      }).pipe(Effect.provide(testLayer())))

    it.effect("a statement with more parameters than the protocol carries (65,535) is a QueryError 54000, sent nowhere; 65,535 run", () =>
      Effect.gen(function*() {
        const values = (n: number) => Array.from({ length: n }, (_, i) => i)
        // every parameter used, or the server refuses the statement: one array of them all
        const text = (n: number) => `select array_length(array[${values(n).map((i) => `$${i + 1}::int`)}], 1) as n`
        const tooMany = (error: unknown) => {
          assert.strictEqual((error as { _tag?: unknown })._tag, "QueryError")
          assert.strictEqual((error as { code?: string }).code, "54000")
          assert.include((error as Error).message, "at most 65535 parameters")
          assert.include((error as Error).message, "this one has 65536")
        }
        const acquired = (yield* PgPool.stats).acquired
        tooMany(yield* Effect.flip(PgPool.query(text(65_536), values(65_536))))
        assert.strictEqual((yield* PgPool.stats).acquired, acquired, "no connection was taken for it")
        // on a pinned connection, a scoped one and in a transaction alike; each connection still serves
        yield* PgPool.withConnection(Effect.gen(function*() {
          tooMany(yield* Effect.flip(PgPool.query("select 1", values(65_536))))
          assert.deepStrictEqual(yield* PgPool.query("select 1 as one"), [{ one: 1 }])
        }))
        yield* Effect.scoped(Effect.gen(function*() {
          const conn = yield* PgPool.connection
          tooMany(yield* Effect.flip(conn.query("select 1", values(65_536))))
          assert.deepStrictEqual(yield* conn.query("select 1 as one"), [{ one: 1 }])
        }))
        const rolledBack = yield* Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("create table params_t (x int)")
          return yield* PgPool.query("select 1", values(65_536))
        })))
        assert.isTrue(Exit.isFailure(rolledBack))
        const [table] = yield* PgPool.query("select to_regclass('params_t') as t")
        assert.isNull(table!.t, "the transaction rolled back")
        assert.deepStrictEqual(yield* PgPool.query(text(65_535), values(65_535)), [{ n: 65_535 }])
      }).pipe(Effect.provide(testLayer())))

    it.effect("a parameter without a faithful PostgreSQL value (a function, a symbol, an invalid Date, a Map, an ArrayBuffer, an Effect, a lone surrogate) is a QueryError naming it, not sent", () =>
      Effect.gen(function*() {
        const refused = (params: ReadonlyArray<unknown>, why: string) =>
          Effect.gen(function*() {
            const error = yield* Effect.flip(PgPool.query("select $1::text as a, $2::text as b", params))
            assert.strictEqual(error._tag, "QueryError")
            assert.strictEqual((error as { code?: string }).code, "22023")
            assert.include(error.message, why)
          })
        yield* refused(["ok", () => 1], "parameter $2 is a function")
        yield* refused([Symbol("s"), "ok"], "parameter $1 is a symbol")
        yield* refused([new Date("never"), "ok"], "parameter $1 is an invalid Date")
        yield* refused([[1, () => 2], "ok"], "parameter $1 is an array holding a function")
        // what node-postgres would write as JSON, losing what it is
        yield* refused([new ArrayBuffer(2), "ok"], "parameter $1 is an ArrayBuffer, which would be written as {}")
        yield* refused(["ok", new Map([[1, 2]])], "parameter $2 is a Map, which JSON writes as {}")
        yield* refused([new Set([1]), "ok"], "parameter $1 is a Set")
        yield* refused([Promise.resolve(1), "ok"], "parameter $1 is a Promise (was it passed instead of its result?)")
        yield* refused([Effect.succeed(1), "ok"], "parameter $1 is an Effect (was it passed instead of its result?")
        yield* refused([Option.some(1), "ok"], "parameter $1 is an Option")
        // a lone surrogate would be replaced by U+FFFD, in a parameter or in the text
        yield* refused(["a\uD800b", "ok"], "parameter $1 is a string holding a lone UTF-16 surrogate")
        yield* refused([["x", "\uDC00"], "ok"], "parameter $1 is an array holding a string holding a lone UTF-16")
        const text = yield* Effect.flip(PgPool.query("select '\uD800' as a"))
        assert.strictEqual((text as { code?: string }).code, "22021")
        assert.include(text.message, "lone UTF-16 surrogate")
        // what is sent as it is: a well-formed astral character, a typed array's bytes, -0 (node-postgres sent 0)
        const [sent] = yield* PgPool.query("select $1::text as a, $2::bytea as b, $3::float8 as z", [
          "\uD83D\uDE00",
          new Uint8Array([1, 2]),
          -0
        ])
        assert.strictEqual(sent!.a, "\uD83D\uDE00")
        assert.deepStrictEqual([...(sent!.b as Uint8Array)], [1, 2])
        assert.isTrue(Object.is(sent!.z, -0), `-0 arrived as ${String(sent!.z)}`)
        // the same in a transaction, which goes on: the server never saw the statement
        const [row] = yield* Transaction.withTransaction(Effect.gen(function*() {
          yield* refused([() => 1, "ok"], "parameter $1 is a function")
          return yield* PgPool.query("select $1::text as a, $2::timestamptz as b", ["fine", new Date(0)])
        }))
        assert.deepStrictEqual(row, { a: "fine", b: new Date(0) })
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.inUse, stats.size], [0, 1])
      }).pipe(Effect.provide(testLayer())))

    it.effect("a NUL in a statement's text, a text that is no string or parameters that are no array: a QueryError naming it, sent nowhere", () =>
      Effect.gen(function*() {
        yield* PgPool.query("create table nul_t (id int)")
        yield* PgPool.query("insert into nul_t values (1), (2)")
        const refused = (text: unknown, params: unknown, code: string, why: string) =>
          Effect.gen(function*() {
            // as a caller without types passes them
            const error = yield* Effect.flip(PgPool.query(text as string, params as ReadonlyArray<unknown>))
            assert.strictEqual(error._tag, "QueryError")
            assert.strictEqual((error as { code?: string }).code, code)
            assert.include(error.message, why)
          })
        const acquired = (yield* PgPool.stats).acquired
        // the server would end the text at the NUL: a protocol error, or the text before it alone
        yield* refused("delete from nul_t\0 where id = 1", undefined, "22021", "NUL character (found at offset 17)")
        yield* refused("delete from nul_t\0 where id = $1", [1], "22021", "NUL character")
        yield* refused(undefined, undefined, "22023", "text must be a string; got undefined")
        yield* refused({ text: "select 1" }, undefined, "22023", "text must be a string; got an object")
        yield* refused("select $1::int", 5, "22023", "parameters must be an array; got a number")
        yield* refused("select $1::text", "ab", "22023", "parameters must be an array; got a string")
        assert.strictEqual((yield* PgPool.stats).acquired, acquired, "no connection was taken for them")
        // the same in a transaction, which goes on, and on a scoped connection
        yield* Transaction.withTransaction(refused("delete from nul_t\0", undefined, "22021", "NUL character"))
        yield* Effect.scoped(Effect.flatMap(PgPool.connection, (conn) =>
          Effect.gen(function*() {
            const error = yield* Effect.flip(conn.query("delete from nul_t\0"))
            assert.strictEqual((error as { code?: string }).code, "22021")
          })))
        assert.deepStrictEqual(yield* PgPool.query("select count(*)::int as n from nul_t"), [{ n: 2 }])
        // a NUL in a parameter is the server's to refuse (22021), as it is data
        const param = yield* Effect.flip(PgPool.query("select $1::text", ["a\0b"]))
        assert.strictEqual((param as { code?: string }).code, "22021")
      }).pipe(Effect.provide(testLayer())))
  })

  describe("connections", () => {
    it.effect("a scoped connection is used by one fiber at a time and returns when its scope closes", () =>
      Effect.gen(function*() {
        const [a, b] = yield* Effect.all([
          Effect.scoped(
            Effect.flatMap(
              PgPool.connection,
              (conn) => Effect.zipRight(conn.query("select pg_sleep(0.05)"), Effect.succeed(conn.backendPid))
            )
          ),
          Effect.scoped(
            Effect.flatMap(
              PgPool.connection,
              (conn) => Effect.zipRight(conn.query("select pg_sleep(0.05)"), Effect.succeed(conn.backendPid))
            )
          )
        ], { concurrency: 2 })
        assert.notStrictEqual(a, b)
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.inUse, stats.idle, stats.size], [0, 2, 2])
      }).pipe(Effect.provide(testLayer())))

    it.effect("backendPid is the server's process id of the connection", () =>
      Effect.gen(function*() {
        const [reported, actual] = yield* Effect.scoped(Effect.flatMap(PgPool.connection, (conn) =>
          Effect.map(conn.query("select pg_backend_pid() as pid"), (rows) =>
            [conn.backendPid, pid(rows)] as const)))
        assert.strictEqual(reported, actual)
      }).pipe(Effect.provide(testLayer())))

    it.effect("returns the connection on success, failure, defect and interruption", () =>
      Effect.gen(function*() {
        const use = <A, E>(f: (conn: PgPool.PooledConnection) => Effect.Effect<A, E>) =>
          Effect.scoped(Effect.flatMap(PgPool.connection, f))
        yield* use((conn) => conn.query("select 1"))
        yield* Effect.exit(use(() => Effect.fail("boom")))
        yield* Effect.exit(use(() => Effect.die("defect")))
        const started = yield* Deferred.make<void>()
        const fiber = yield* Effect.fork(use(() => Effect.zipRight(Deferred.succeed(started, undefined), Effect.never)))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(fiber)
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.inUse, stats.waiting], [0, 0])
        assert.strictEqual(stats.size, 1)
        assert.strictEqual(stats.acquired, 4)
      }).pipe(Effect.provide(testLayer())))

    it.effect("a connection used after its scope closed fails with a ConnectionError", () =>
      Effect.gen(function*() {
        const conn = yield* Effect.scoped(PgPool.connection)
        const error = yield* Effect.flip(conn.query("select 1"))
        assert.strictEqual(error._tag, "ConnectionError")
        assert.include(error.message, "after it was returned")
      }).pipe(Effect.provide(testLayer())))

    it.effect("invalidate closes the physical connection instead of returning it", () =>
      Effect.gen(function*() {
        const first = yield* Effect.scoped(
          Effect.flatMap(PgPool.connection, (conn) =>
            Effect.gen(function*() {
              yield* conn.invalidate
              // a statement after it says why it cannot run
              const after = yield* Effect.flip(conn.query("select 1"))
              assert.strictEqual(after._tag, "ConnectionError")
              assert.include(after.message, "This connection was invalidated (conn.invalidate)")
              return conn.backendPid
            }))
        )
        yield* serverBackends((rows) => !rows.some((row) => row.pid === first))
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.closedByReason.invalidated, 1)
        const second = yield* backendPid
        assert.notStrictEqual(second, first)
      }).pipe(Effect.provide(testLayer())))

    it.effect("withConnection pins one connection for every query inside, nested or not", () =>
      Effect.gen(function*() {
        const pids = yield* PgPool.withConnection(Effect.gen(function*() {
          const a = yield* backendPid
          const b = yield* backendPid
          const c = yield* PgPool.withConnection(backendPid)
          const d = yield* Effect.scoped(Effect.map(PgPool.connection, (conn) => conn.backendPid))
          const stats = yield* PgPool.stats
          return [a, b, c, d, stats.inUse]
        }))
        assert.deepStrictEqual(pids.slice(0, 4), [pids[0], pids[0], pids[0], pids[0]])
        assert.strictEqual(pids[4], 1)
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(testLayer())))

    it.effect("a temporary table lives on the pinned connection", () =>
      Effect.gen(function*() {
        const rows = yield* PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("create temporary table pinned_t (x int)")
          yield* PgPool.query("insert into pinned_t values (1), (2)")
          return yield* PgPool.query("select count(*)::int as n from pinned_t")
        }))
        assert.deepStrictEqual(rows, [{ n: 2 }])
      }).pipe(Effect.provide(testLayer())))

    it.effect("invalidate of a connection already returned does nothing to its next borrower", () =>
      Effect.gen(function*() {
        const stale = yield* Effect.scoped(PgPool.connection)
        const [pidBefore, pidAfter] = yield* Effect.scoped(Effect.gen(function*() {
          const conn = yield* PgPool.connection
          assert.strictEqual(conn.backendPid, stale.backendPid)
          yield* stale.invalidate
          const before = pid(yield* conn.query("select pg_backend_pid() as pid"))
          return [before, conn.backendPid] as const
        }))
        assert.strictEqual(pidBefore, pidAfter)
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.closedByReason.invalidated, 0)
        assert.strictEqual(stats.idle, 1)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1 }))))

    it.effect("fibers forked inside withConnection share its connection, one statement at a time; their transactions stay apart", () =>
      Effect.gen(function*() {
        yield* PgPool.query("create table forked_tx (id int primary key)")
        const [pinned, forked, exit] = yield* PgPool.withConnection(Effect.gen(function*() {
          const pinned = yield* backendPid
          const forked = yield* Effect.all([backendPid, backendPid.pipe(Effect.timeout("5 seconds"))], {
            concurrency: 2
          })
          // two transactions side by side: the failing one rolls back, the other commits, neither sees the other
          const exit = yield* Effect.exit(Effect.all([
            Transaction.withTransaction(
              Effect.zipRight(PgPool.query("insert into forked_tx values (1)"), Effect.fail("boom" as const))
            ),
            Transaction.withTransaction(PgPool.query("insert into forked_tx values (2)"))
          ], { concurrency: 2, mode: "either" }))
          return [pinned, forked, exit] as const
        }))
        assert.deepStrictEqual(forked, [pinned, pinned])
        assert.isTrue(Exit.isSuccess(exit))
        if (Exit.isSuccess(exit)) assert.deepStrictEqual(exit.value.map((either) => either._tag), ["Left", "Right"])
        const rows = yield* PgPool.query("select id from forked_tx order by id")
        assert.deepStrictEqual(rows, [{ id: 2 }])
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(testLayer({ maxConnections: 4 }))))

    it.effect("a transaction in a fiber forked inside withConnection that outlives it runs on a connection of its own", () =>
      Effect.gen(function*() {
        yield* PgPool.query("create table outlived_tx (id int primary key)")
        const go = yield* Deferred.make<void>()
        const child = yield* PgPool.withConnection(
          Effect.fork(Effect.zipRight(
            Deferred.await(go),
            Transaction.withTransaction(Effect.zipRight(
              PgPool.query("insert into outlived_tx values (1)"),
              PgPool.query("insert into outlived_tx values (2)")
            ))
          ))
        )
        const other = yield* Effect.fork(
          Transaction.withTransaction(PgPool.query("insert into outlived_tx values (3)"))
        )
        yield* Deferred.succeed(go, undefined)
        yield* Fiber.join(child)
        yield* Fiber.join(other)
        const rows = yield* PgPool.query("select id from outlived_tx order by id")
        assert.deepStrictEqual(rows, [{ id: 1 }, { id: 2 }, { id: 3 }])
        assert.strictEqual((yield* PgPool.stats).inUse, 0)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, acquireTimeout: "5 seconds" }))))
  })

  describe("limits", () => {
    it.effect("maxConnections caps the backends on the server; the next caller waits", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all(Array.from({ length: 3 }, () => hold(release)), {
          concurrency: "unbounded"
        }))
        yield* waitForStats((s) => s.inUse === 3)
        const waiter = yield* Effect.fork(backendPid)
        yield* waitForStats((s) => s.waiting === 1)
        const rows = yield* backends()
        assert.strictEqual(rows.length, 3)
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.size, stats.inUse, stats.waiting], [3, 3, 1])
        yield* Deferred.succeed(release, undefined)
        const held = yield* Fiber.join(holders)
        const got = yield* Fiber.join(waiter)
        assert.include(held, got)
      }).pipe(Effect.provide(testLayer({ maxConnections: 3 }))))

    it.effect("blocking: false fails at once with PoolExhaustedError(maxConnections)", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(Effect.all([hold(release), hold(release)], { concurrency: "unbounded" }))
        yield* waitForStats((s) => s.inUse === 2)
        const error = yield* Effect.flip(PgPool.query("select 1"))
        assert.strictEqual(error._tag, "PoolExhaustedError")
        if (error._tag !== "PoolExhaustedError") return
        assert.strictEqual(error.reason, "maxConnections")
        assert.strictEqual(error.stats.inUse, 2)
        assert.include(error.message, "maxConnections")
        // the message survives JSON.stringify, as the other errors' messages do (a log sink that serialises it)
        const json = JSON.parse(JSON.stringify(error)) as { message?: string; _tag?: string; reason?: string }
        assert.strictEqual(json.message, error.message)
        assert.strictEqual(json._tag, "PoolExhaustedError")
        assert.strictEqual(json.reason, "maxConnections")
        assert.include(String(error), "maxConnections reached")
        const scoped = yield* Effect.flip(Effect.scoped(PgPool.connection))
        assert.strictEqual(scoped._tag, "PoolExhaustedError")
        yield* Deferred.succeed(release, undefined)
        yield* waitForStats((s) => s.inUse === 0)
        yield* PgPool.query("select 1")
      }).pipe(Effect.provide(testLayer({ maxConnections: 2, blocking: false }))))

    it.effect("maxWaiting bounds the queue: one more waiter fails with PoolExhaustedError(maxWaiting)", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const waiters = yield* Effect.fork(Effect.all([backendPid, backendPid], { concurrency: "unbounded" }))
        yield* waitForStats((s) => s.waiting === 2)
        const error = yield* Effect.flip(PgPool.query("select 1"))
        assert.strictEqual(error._tag, "PoolExhaustedError")
        if (error._tag === "PoolExhaustedError") assert.strictEqual(error.reason, "maxWaiting")
        yield* Deferred.succeed(release, undefined)
        const pids = yield* Fiber.join(waiters)
        assert.strictEqual(pids.length, 2)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, maxWaiting: 2 }))))

    it.effect("maxWaiting counts only fibers waiting for busy connections, not those the pool opens one for", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all(Array.from({ length: 3 }, () => hold(release)), {
          concurrency: "unbounded"
        }))
        yield* waitForStats((s) => s.inUse === 3)
        const error = yield* Effect.flip(PgPool.query("select 1"))
        assert.strictEqual(error._tag, "PoolExhaustedError")
        if (error._tag === "PoolExhaustedError") assert.strictEqual(error.reason, "maxWaiting")
        yield* Deferred.succeed(release, undefined)
        const pids = yield* Fiber.join(holders)
        assert.strictEqual(new Set(pids).size, 3)
      }).pipe(Effect.provide(testLayer({ maxConnections: 3, maxWaiting: 0 }))))

    it.effect("queryTimeout bounds the statement, not the wait for a connection", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const waiter = yield* Effect.fork(PgPool.query("select 7 as seven"))
        yield* waitForStats((s) => s.waiting === 1)
        // longer than queryTimeout, shorter than acquireTimeout: the waiter keeps waiting
        yield* TestClock.adjust("1 second")
        assert.isNull(yield* Fiber.poll(waiter).pipe(Effect.map(Option.getOrNull)))
        yield* Deferred.succeed(release, undefined)
        assert.deepStrictEqual(yield* Fiber.join(waiter), [{ seven: 7 }])
      }).pipe(
        Effect.provide(testLayer({ maxConnections: 1, queryTimeout: "200 millis", acquireTimeout: "3 seconds" }))
      ))

    it.effect("acquireTimeout: a waiter fails with PoolExhaustedError(acquireTimeout) and leaves the queue", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const waiter = yield* Effect.fork(Effect.flip(PgPool.query("select 1")))
        yield* waitForStats((s) => s.waiting === 1)
        yield* TestClock.adjust("4 seconds")
        assert.isNull(yield* Fiber.poll(waiter).pipe(Effect.map(Option.getOrNull)))
        yield* TestClock.adjust("1 second")
        const error = yield* Fiber.join(waiter)
        assert.strictEqual(error._tag, "PoolExhaustedError")
        if (error._tag === "PoolExhaustedError") {
          assert.strictEqual(error.reason, "acquireTimeout")
          assert.strictEqual(error.waitedMillis, 5000)
        }
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.waiting, stats.timeouts, stats.inUse], [0, 1, 1])
        yield* Deferred.succeed(release, undefined)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, acquireTimeout: "5 seconds" }))))

    it.live("acquireTimeout is honoured within a few milliseconds in real time", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const started = Date.now()
        const error = yield* Effect.flip(PgPool.query("select 1"))
        const elapsed = Date.now() - started
        assert.strictEqual(error._tag, "PoolExhaustedError")
        assert.isAtLeast(elapsed, 145)
        assert.isBelow(elapsed, 400)
        yield* Deferred.succeed(release, undefined)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, acquireTimeout: "150 millis" }))))

    it.effect("waiters are served first come, first served", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const order = yield* Ref.make<ReadonlyArray<number>>([])
        const fibers: Array<Fiber.RuntimeFiber<void, unknown>> = []
        for (let i = 1; i <= 6; i++) {
          const waiter = i % 2 === 0
            ? Effect.asVoid(Effect.zipRight(PgPool.query("select 1"), Ref.update(order, (o) => [...o, i])))
            : Effect.scoped(Effect.zipRight(PgPool.connection, Ref.update(order, (o) => [...o, i])))
          fibers.push(yield* Effect.fork(waiter))
          yield* waitForStats((s) => s.waiting === i)
        }
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.joinAll(fibers)
        assert.deepStrictEqual(yield* Ref.get(order), [1, 2, 3, 4, 5, 6])
      }).pipe(Effect.provide(testLayer({ maxConnections: 1 }))))
  })

  describe("knobs", () => {
    it.effect("minConnections are opened when the layer is built", () =>
      Effect.gen(function*() {
        const rows = yield* serverBackends((r) => r.length === 3)
        assert.strictEqual(rows.length, 3)
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.size, stats.idle], [3, 3])
      }).pipe(Effect.provide(testLayer({ minConnections: 3 }))))

    it.effect("maxIdle: connections returned beyond it are closed", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all(Array.from({ length: 5 }, () => hold(release)), {
          concurrency: "unbounded"
        }))
        yield* waitForStats((s) => s.inUse === 5)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.idle, stats.size, stats.closedByReason.maxIdle], [2, 2, 3])
        yield* serverBackends((r) => r.length === 2)
      }).pipe(Effect.provide(testLayer({ maxConnections: 5, maxIdle: 2 }))))

    it.effect("maxUsage: a connection is replaced after that many statements", () =>
      Effect.gen(function*() {
        const pids: Array<number> = []
        for (let i = 0; i < 7; i++) pids.push(yield* backendPid)
        assert.strictEqual(new Set(pids.slice(0, 3)).size, 1)
        assert.strictEqual(new Set(pids.slice(3, 6)).size, 1)
        assert.notStrictEqual(pids[0], pids[3])
        assert.notStrictEqual(pids[3], pids[6])
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.closedByReason.maxUsage, 2)
        yield* serverBackends((r) => r.length === 1 && r[0]!.pid === pids[6])
      }).pipe(Effect.provide(testLayer({ maxUsage: 3 }))))

    it.effect("maxUsage never recycles inside a transaction: it waits for the return", () =>
      Effect.gen(function*() {
        const pids = yield* PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("begin")
          const inside: Array<number> = []
          for (let i = 0; i < 4; i++) inside.push(yield* backendPid)
          yield* PgPool.query("commit")
          return inside
        }))
        assert.strictEqual(new Set(pids).size, 1)
        const after = yield* backendPid
        assert.notStrictEqual(after, pids[0])
      }).pipe(Effect.provide(testLayer({ maxUsage: 2 }))))

    const ownPrepared =
      "select statement from pg_prepared_statements where name like 'effect_pg_pool_%' order by statement"

    it.effect("prepareThreshold: a statement is prepared on a connection after that many runs there; results are unchanged", () =>
      Effect.gen(function*() {
        const text = "select $1::int * 3 as tripled"
        for (let i = 1; i <= 3; i++) assert.deepStrictEqual(yield* PgPool.query(text, [i]), [{ tripled: 3 * i }])
        const prepared = yield* PgPool.withConnection(PgPool.query(ownPrepared))
        assert.deepStrictEqual(prepared.map((row) => row.statement), [text])
        // from the server's side: one more run is an execution of the prepared statement
        const calls = yield* PgPool.withConnection(PgPool.query(
          "select generic_plans + custom_plans as runs from pg_prepared_statements where statement = $1",
          [text]
        ))
        assert.deepStrictEqual(yield* PgPool.query(text, [5]), [{ tripled: 15 }])
        const after = yield* PgPool.withConnection(PgPool.query(
          "select generic_plans + custom_plans as runs from pg_prepared_statements where statement = $1",
          [text]
        ))
        assert.strictEqual(Number(after[0]!.runs), Number(calls[0]!.runs) + 1)
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, prepareThreshold: 2, statementCacheSize: 100 }))))

    it.effect("by default a statement is prepared on its connection at its 6th run (threshold 5, cache of 100)", () =>
      Effect.gen(function*() {
        const text = "select $1::int + 1 as next"
        for (let i = 0; i < 5; i++) yield* PgPool.query(text, [i])
        assert.deepStrictEqual(yield* PgPool.query(ownPrepared), [], "not after 5 runs")
        assert.deepStrictEqual(yield* PgPool.query(text, [41]), [{ next: 42 }])
        const prepared = yield* PgPool.query(ownPrepared)
        assert.deepStrictEqual(prepared.map((row) => row.statement), [text])
      }).pipe(Effect.provide(testLayer({ maxConnections: 1 }))))

    it.effect("statementCacheSize: 0 turns automatic preparation off", () =>
      Effect.gen(function*() {
        for (let i = 0; i < 8; i++) yield* PgPool.query("select $1::int as x", [i])
        assert.deepStrictEqual(yield* PgPool.query(ownPrepared), [])
      }).pipe(Effect.provide(testLayer({ maxConnections: 1, prepareThreshold: 1, statementCacheSize: 0 }))))

    it.effect("reset: \"full\" (DISCARD ALL) drops the prepared statements; the counts start afresh with it", () =>
      Effect.gen(function*() {
        const text = "select $1::text as echoed"
        const inside = yield* PgPool.withConnection(Effect.gen(function*() {
          for (let i = 0; i < 3; i++) assert.deepStrictEqual(yield* PgPool.query(text, ["a"]), [{ echoed: "a" }])
          return yield* PgPool.query(ownPrepared)
        }))
        assert.deepStrictEqual(inside.map((row) => row.statement), [text])
        // every return runs DISCARD ALL: one-shot statements are never prepared only to be dropped again
        for (let i = 0; i < 3; i++) assert.deepStrictEqual(yield* PgPool.query(text, ["b"]), [{ echoed: "b" }])
        assert.deepStrictEqual(yield* PgPool.query(ownPrepared), [])
      }).pipe(
        Effect.provide(testLayer({ maxConnections: 1, prepareThreshold: 2, statementCacheSize: 100, reset: "full" }))
      ))

    it.effect("setSession runs on every new connection", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        yield* Effect.fork(hold(release))
        yield* waitForStats((s) => s.inUse === 1)
        const rows = yield* PgPool.query(
          "select current_setting('TimeZone') as tz, current_setting('search_path') as sp"
        )
        assert.deepStrictEqual(rows, [{ tz: "Pacific/Auckland", sp: "pg_catalog, public" }])
        assert.strictEqual((yield* PgPool.stats).size, 2)
        yield* Deferred.succeed(release, undefined)
      }).pipe(Effect.provide(testLayer({
        setSession: ["set time zone 'Pacific/Auckland'", "set search_path to pg_catalog, public"]
      }))))

    it.effect("a failing setSession statement fails the layer with a ConnectionError naming it", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(Layer.build(testLayer({ setSession: ["set no_such_setting = 1"] })))
        assert.strictEqual(error._tag, "ConnectionError")
        assert.include(error.message, "setSession")
        if (error._tag === "ConnectionError") assert.strictEqual(error.code, "42704")
      }).pipe(Effect.scoped))

    it.effect("reset 'transaction': an open transaction is rolled back on return", () =>
      Effect.gen(function*() {
        yield* PgPool.query("create table reset_t (x int)")
        const first = yield* PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("begin")
          yield* PgPool.query("insert into reset_t values (1)")
          return yield* backendPid
        }))
        const [after] = yield* PgPool.query("select count(*)::int as n, pg_backend_pid() as pid from reset_t")
        assert.deepStrictEqual(after, { n: 0, pid: first })
        const rows = yield* adminQuery(
          "select count(*)::int as n from pg_stat_activity where datname = $1 and state like 'idle in transaction%'",
          [testDatabase()]
        )
        assert.deepStrictEqual(rows, [{ n: 0 }])
      }).pipe(Effect.provide(testLayer())))

    it.effect("reset 'transaction': a failed transaction is rolled back too", () =>
      Effect.gen(function*() {
        yield* PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("begin")
          yield* Effect.exit(PgPool.query("select 1/0"))
        }))
        const rows = yield* PgPool.query("select 1 as ok")
        assert.deepStrictEqual(rows, [{ ok: 1 }])
        assert.strictEqual((yield* PgPool.stats).size, 1)
      }).pipe(Effect.provide(testLayer())))

    it.effect("reset 'always': every return issues ROLLBACK (the server's last statement)", () =>
      Effect.gen(function*() {
        const mine = yield* backendPid
        const rows = yield* serverBackends((r) => r.some((row) => row.pid === mine && row.query === "ROLLBACK"))
        assert.isTrue(rows.some((row) => row.pid === mine && row.state === "idle"))
      }).pipe(Effect.provide(testLayer({ reset: "always" }))))

    it.effect("reset 'full': session state is discarded and setSession applied again", () =>
      Effect.gen(function*() {
        const first = yield* PgPool.withConnection(Effect.gen(function*() {
          yield* PgPool.query("create temporary table full_t (x int)")
          yield* PgPool.query("set statement_timeout = '123s'")
          return yield* backendPid
        }))
        const [row] = yield* PgPool.query(
          "select pg_backend_pid() as pid, current_setting('statement_timeout') as st, current_setting('TimeZone') as tz, to_regclass('pg_temp.full_t') is null as gone"
        )
        assert.deepStrictEqual(row, { pid: first, st: "0", tz: "Asia/Tokyo", gone: true })
      }).pipe(Effect.provide(testLayer({ reset: "full", setSession: ["set time zone 'Asia/Tokyo'"] }))))

    it.effect("idleTimeout: idle connections are closed by maintenance, down to minConnections", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all(Array.from({ length: 4 }, () => hold(release)), {
          concurrency: "unbounded"
        }))
        yield* waitForStats((s) => s.inUse === 4)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
        yield* TestClock.adjust("59 seconds")
        assert.strictEqual((yield* PgPool.stats).size, 4)
        yield* TestClock.adjust("2 seconds")
        const stats = yield* waitForStats((s) => s.size === 1)
        assert.strictEqual(stats.closedByReason.idle, 3)
        yield* serverBackends((r) => r.length === 1)
      }).pipe(Effect.provide(testLayer({ idleTimeout: "1 minute", minConnections: 1 }))))

    it.effect("purgeExpired closes idle connections past idleTimeout and returns how many", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all(Array.from({ length: 3 }, () => hold(release)), {
          concurrency: "unbounded"
        }))
        yield* waitForStats((s) => s.inUse === 3)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
        assert.strictEqual(yield* PgPool.purgeExpired, 0)
        yield* TestClock.adjust("30 seconds")
        assert.strictEqual(yield* PgPool.purgeExpired, 3)
        assert.strictEqual((yield* PgPool.stats).size, 0)
        yield* serverBackends((r) => r.length === 0)
      }).pipe(Effect.provide(testLayer({ idleTimeout: "30 seconds", maintenanceInterval: "1 hour" }))))

    it.effect("idleTimeout counts the time idle, not the age: a connection used recently stays", () =>
      Effect.gen(function*() {
        yield* PgPool.query("select 1")
        yield* TestClock.adjust("50 seconds")
        yield* PgPool.query("select 1")
        yield* TestClock.adjust("20 seconds")
        // 70 seconds old, 20 seconds idle
        assert.strictEqual(yield* PgPool.purgeExpired, 0)
        assert.strictEqual((yield* PgPool.stats).size, 1)
        yield* TestClock.adjust("41 seconds")
        assert.strictEqual(yield* PgPool.purgeExpired, 1)
      }).pipe(Effect.provide(testLayer({
        idleTimeout: "1 minute",
        maxConnections: 1,
        maintenanceInterval: "1 hour",
        maxLifetime: "1 hour",
        healthCheck: false
      }))))

    it.effect("idleTimeout: idle connections past it are closed when a connection comes back too", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.fork(Effect.all([hold(release), hold(release)], { concurrency: "unbounded" }))
        yield* waitForStats((s) => s.inUse === 2)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
        yield* TestClock.adjust("2 minutes")
        // no maintenance run in between: the return of this query's connection closes the other, idle too long
        yield* PgPool.query("select 1")
        const stats = yield* waitForStats((s) => s.closedByReason.idle >= 1)
        assert.strictEqual(stats.closedByReason.idle, 1)
      }).pipe(Effect.provide(testLayer({
        idleTimeout: "1 minute",
        maintenanceInterval: "1 hour",
        maxLifetime: "1 hour",
        healthCheck: false
      }))))

    it.effect("maxLifetime: connections are replaced at their age, spread by the jitter", () =>
      Effect.gen(function*() {
        const first = new Set((yield* backends()).map((row) => row.pid))
        assert.strictEqual(first.size, 4)
        yield* TestClock.adjust("8 minutes")
        assert.strictEqual((yield* PgPool.stats).closedByReason.lifetime, 0)
        // the last 2 minutes a maintenance interval at a time, letting the replacements connect in between: a
        // connect in flight while the test clock jumps ahead would see its connectTimeout run out at once
        for (let i = 0; i < 24; i++) {
          yield* TestClock.adjust("5 seconds")
          yield* waitForStats((s) => s.pending === 0)
        }
        const stats = yield* waitForStats((s) => s.closedByReason.lifetime === 4 && s.idle === 4 && s.pending === 0)
        assert.strictEqual(stats.created, 8, JSON.stringify(stats))
        const now = yield* serverBackends((r) => r.length === 4 && r.every((row) => !first.has(row.pid)))
        assert.strictEqual(now.length, 4)
      }).pipe(Effect.provide(testLayer({
        minConnections: 4,
        maxLifetime: "10 minutes",
        maxLifetimeJitter: "2 minutes",
        healthCheck: false
      }))))

    it.effect("maxLifetime jitter: connections do not all expire at the same moment", () =>
      Effect.gen(function*() {
        yield* TestClock.adjust("55 minutes")
        const stats = yield* PgPool.stats
        assert.isAbove(stats.closedByReason.lifetime, 0)
        assert.isBelow(stats.closedByReason.lifetime, 20)
      }).pipe(Effect.provide(testLayer({
        minConnections: 20,
        maxConnections: 20,
        maxLifetime: "1 hour",
        maxLifetimeJitter: "10 minutes",
        maintenanceInterval: "1 minute"
      }))))

    it.effect("a connection past its lifetime is closed when it comes back, not while in use", () =>
      Effect.gen(function*() {
        const [inside, after] = yield* PgPool.withConnection(Effect.gen(function*() {
          const a = yield* backendPid
          yield* TestClock.adjust("2 minutes")
          const b = yield* backendPid
          return [a, b] as const
        }))
        assert.strictEqual(inside, after)
        const next = yield* backendPid
        assert.notStrictEqual(next, inside)
      }).pipe(Effect.provide(testLayer({ maxLifetime: "1 minute", maxLifetimeJitter: 0 }))))

    it.effect("pooling: false opens a new connection for every checkout and closes it on return", () =>
      Effect.gen(function*() {
        const a = yield* backendPid
        const b = yield* backendPid
        assert.notStrictEqual(a, b)
        yield* serverBackends((r) => r.length === 0)
        const stats = yield* PgPool.stats
        assert.strictEqual(stats.size, 0)
        assert.isAtLeast(stats.closedByReason.unpooled, 2)
      }).pipe(Effect.provide(testLayer({ pooling: false }))))

    it.effect("applicationName is what the server sees", () =>
      Effect.gen(function*() {
        const rows = yield* PgPool.query("select current_setting('application_name') as name")
        assert.deepStrictEqual(rows, [{ name: "my-service" }])
        const server = yield* backends("my-service")
        assert.strictEqual(server.length, 1)
      }).pipe(Effect.provide(testLayer({ applicationName: "my-service" }))))
  })

  describe("lifecycle", () => {
    it.effect("closing the layer closes every connection; later calls fail with PoolClosedError", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(testLayer({ minConnections: 2 }), scope)
        const pool = context.unsafeMap.get(PgPool.PgPool.key) as PgPool.PgPool
        yield* pool.query("select 1")
        yield* Scope.close(scope, Exit.void)
        yield* serverBackends((r) => r.length === 0)
        const error = yield* Effect.flip(pool.query("select 1"))
        assert.strictEqual(error._tag, "PoolClosedError")
        const scoped = yield* Effect.flip(Effect.scoped(pool.connection))
        assert.strictEqual(scoped._tag, "PoolClosedError")
        // resize and drain too, rather than succeeding at nothing
        assert.strictEqual((yield* Effect.flip(pool.resize({ maxConnections: 5 })))._tag, "PoolClosedError")
        assert.strictEqual((yield* Effect.flip(pool.drain))._tag, "PoolClosedError")
      }))

    it.effect("an idle connection killed by the server never crashes the process and is replaced", () =>
      Effect.gen(function*() {
        const victim = yield* backendPid
        yield* adminQuery("select pg_terminate_backend($1)", [victim])
        yield* waitForStats((s) => s.closedByReason.broken === 1)
        const next = yield* backendPid
        assert.notStrictEqual(next, victim)
        assert.strictEqual((yield* PgPool.stats).size, 1)
      }).pipe(Effect.provide(testLayer())))

    it.effect("interrupting a running statement cancels it on the server and the connection is reused", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(PgPool.query("select pg_sleep(30)"))
        const [busy] = yield* serverBackends((r) => r.some((row) => row.state === "active"))
        yield* Fiber.interrupt(fiber)
        const rows = yield* backends()
        assert.isTrue(rows.every((row) => row.state !== "active"))
        const stats = yield* PgPool.stats
        assert.deepStrictEqual([stats.inUse, stats.idle, stats.size], [0, 1, 1])
        assert.strictEqual(yield* backendPid, busy!.pid)
      }).pipe(Effect.provide(testLayer())))

    // An interruption reaches the child fibers of a fiber even while the fiber itself is uninterruptible: the
    // return of a connection must survive it wherever it waits with a timeout (which runs in a child fiber).
    it.effect("a fiber interrupted while its connection's reset runs still gives the connection back", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(PgPool.withConnection(PgPool.query("select 1")))
        yield* serverBackends((r) => r.some((row) => row.state === "active" && row.query.includes("reset_sleep")))
        yield* Fiber.interrupt(fiber)
        const stats = yield* waitForStats((s) => s.inUse === 0)
        assert.strictEqual(stats.closedByReason.reset, 1, "the cut-off reset closes the connection")
        yield* serverBackends((r) => r.length === stats.size)
        assert.deepStrictEqual(yield* PgPool.query("select 2 as n"), [{ n: 2 }])
      }).pipe(
        Effect.provide(
          testLayer({ maxConnections: 1, reset: "full", setSession: ["select pg_sleep(0.5) as reset_sleep"] })
        )
      ))

    it.live("a fiber interrupted while it waits for the cancel of its statement still gives the connection back", () =>
      Effect.gen(function*() {
        // the statement outlives its cancel by a second and shows that it saw it in application_name
        const stubborn = `do $$ begin perform pg_sleep(30); exception when query_canceled then
          perform set_config('application_name', 'cancel-seen', false); perform pg_sleep(1); end $$`
        const fiber = yield* Effect.fork(
          Effect.scoped(
            Effect.flatMap(PgPool.connection, (conn) => conn.query(stubborn).pipe(Effect.timeout("50 millis")))
          )
        )
        // the cancel has reached the server: the fiber is in the return, waiting (briefly) for it to settle
        yield* eventually(backends("cancel-seen"), (r) => r.some((row) => row.state === "active"))
        yield* Fiber.interrupt(fiber)
        const stats = yield* waitForStats((s) => s.inUse === 0)
        assert.deepStrictEqual([stats.size, stats.idle], [1, 1])
        assert.deepStrictEqual(yield* PgPool.query("select current_setting('application_name') as app"), [{
          app: "cancel-seen"
        }], "the same connection is reused")
      }).pipe(Effect.provide(testLayer({ maxConnections: 1 }))))
  })

  describe("secrets and failures", () => {
    it.effect("a wrong password is a ConnectionError that never shows the password", () =>
      Effect.gen(function*() {
        const secret = "s3cr3t-Password-Do-Not-Leak"
        const server = testConfig()
        const error = yield* Effect.flip(Layer.build(PgPool.layer({
          ...server,
          url: undefined,
          host: "127.0.0.1",
          port: portOf(server.url),
          user: "postgres",
          database: testDatabase(),
          password: Redacted.make(secret)
        })))
        assert.strictEqual(error._tag, "ConnectionError")
        if (error._tag !== "ConnectionError") return
        assert.strictEqual(error.code, "28P01")
        assert.include(error.message, "password authentication failed")
        for (const text of [error.message, String(error), JSON.stringify(error), Cause.pretty(Cause.fail(error))]) {
          assert.notInclude(text, secret)
        }
      }).pipe(Effect.scoped))

    it.effect("a wrong password in a URL never shows up either", () =>
      Effect.gen(function*() {
        const secret = "url-Secret-42"
        const url = Redacted.value(testConfig().url as Redacted.Redacted).replace(/:[^:@/]*@/, `:${secret}@`)
        const error = yield* Effect.flip(Layer.build(PgPool.layer({ url: Redacted.make(url) })))
        assert.strictEqual(error._tag, "ConnectionError")
        if (error._tag === "ConnectionError") assert.strictEqual(error.code, "28P01")
        for (const text of [error.message, String(error), JSON.stringify(error)]) assert.notInclude(text, secret)
      }).pipe(Effect.scoped))

    it.effect("stats never contain the password", () =>
      Effect.gen(function*() {
        const stats = yield* PgPool.stats
        const password = Redacted.value(testConfig().url as Redacted.Redacted).match(/:([^:@/]*)@/)![1]!
        assert.notInclude(JSON.stringify(stats), password)
      }).pipe(Effect.provide(testLayer())))
  })
})

const portOf = (url: PgPool.Config["url"]): number =>
  Number(/:(\d+)\//.exec(Redacted.isRedacted(url) ? Redacted.value(url) : String(url))![1])
