/**
 * Concurrency inside one checkout (issue 15, point 3), on a real server: fibers forked inside
 * `PgPool.withConnection` or a transaction (`Effect.timeout`, `Effect.race`, `Effect.all` with concurrency,
 * `Effect.fork` + `Fiber.join`) share its connection, one statement at a time, and never wait for a second
 * connection that the pinned one blocks; a transaction open on the shared connection is its own fibers' until
 * it ends; interrupting one fiber's statement cancels that statement and no other.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Fiber } from "effect"
import * as PgPool from "../src/PgPool.js"
import * as Transaction from "../src/Transaction.js"
import { adminQuery, eventually, testDatabase, testLayer } from "./support/db.js"
import { timedExit, valueOf } from "./support/exits.js"

const pid = Effect.map(PgPool.query("select pg_backend_pid() as pid"), (rows) => Number(rows[0]!.pid))

/** One connection, and an acquire timeout long enough that a wait for a second one would show. */
const one = testLayer({ maxConnections: 1, acquireTimeout: "5 seconds" })

/** Runs `body` inside withConnection, and checks it finished well within the acquire timeout, without one. */
const quickly = <A, E>(body: Effect.Effect<A, E, PgPool.PgPool>) =>
  Effect.gen(function*() {
    const { exit, millis } = yield* timedExit(PgPool.withConnection(body))
    assert.isBelow(millis, 2_000, "a fork waited for a second connection")
    const stats = yield* PgPool.stats
    assert.deepStrictEqual([stats.timeouts, stats.size, stats.inUse, stats.waiting], [0, 1, 0, 0])
    return valueOf(exit)
  })

describe("forks inside one checkout, with maxConnections: 1", () => {
  it.live("Effect.timeout, Effect.race, Effect.all, Effect.fork + Fiber.join: all on the pinned connection", () =>
    Effect.gen(function*() {
      const [pinned, timed, raced, all, joined] = yield* quickly(Effect.gen(function*() {
        const pinned = yield* pid
        const timed = yield* pid.pipe(Effect.timeout("3 seconds"))
        const raced = yield* Effect.race(
          Effect.zipRight(PgPool.query("select pg_sleep(0.05)"), pid),
          Effect.zipRight(PgPool.query("select pg_sleep(0.2)"), pid)
        )
        const all = yield* Effect.all([pid, pid, pid, pid], { concurrency: "unbounded" })
        const fiber = yield* Effect.fork(pid)
        const joined = yield* Fiber.join(fiber)
        return [pinned, timed, raced, all, joined] as const
      }))
      assert.deepStrictEqual([timed, raced, joined], [pinned, pinned, pinned])
      assert.deepStrictEqual(all, [pinned, pinned, pinned, pinned])
    }).pipe(Effect.provide(one)))

  it.live("a forked Transaction.withTransaction, joined, and transactions under Effect.timeout", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_tx (id int primary key)")
      yield* quickly(Effect.gen(function*() {
        const fiber = yield* Effect.fork(Transaction.withTransaction(PgPool.query("insert into fork_tx values (1)")))
        yield* Fiber.join(fiber)
        yield* Transaction.withTransaction(PgPool.query("insert into fork_tx values (2)")).pipe(
          Effect.timeout("3 seconds")
        )
        // a statement of the transaction under a timeout of its own
        yield* Transaction.withTransaction(
          PgPool.query("insert into fork_tx values (3)").pipe(Effect.timeout("3 seconds"))
        )
      }))
      assert.deepStrictEqual(yield* PgPool.query("select id from fork_tx order by id"), [{ id: 1 }, { id: 2 }, {
        id: 3
      }])
    }).pipe(Effect.provide(one)))

  it.live("concurrent transactions forked inside withConnection stay apart: a failing one's rows are never committed", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_apart (id int primary key, by text)")
      const ids = Array.from({ length: 12 }, (_, i) => i + 1)
      const outcomes = yield* quickly(Effect.all(
        ids.map((id) =>
          Effect.either(Transaction.withTransaction(Effect.gen(function*() {
            yield* PgPool.query("insert into fork_apart values ($1, 'tx')", [id])
            // each transaction sees only its own rows: no other one is open in it
            const seen = yield* PgPool.query("select count(*)::int as n from fork_apart")
            yield* PgPool.query("select pg_sleep(0.01)")
            if (id % 3 === 0) return yield* Effect.fail(`rolled back ${id}`)
            return seen[0]!.n as number
          })))
        ),
        { concurrency: "unbounded" }
      ))
      const committed = ids.filter((id) => id % 3 !== 0)
      assert.deepStrictEqual(outcomes.map(Either.isRight), ids.map((id) => id % 3 !== 0))
      const rows = yield* PgPool.query("select id from fork_apart order by id")
      assert.deepStrictEqual(rows.map((row) => row.id), committed)
      // a transaction ran alone on the connection: it saw the rows committed before it and its own, and the
      // counts it saw are all different (one transaction after the other)
      const counts = outcomes.flatMap((outcome) => Either.isRight(outcome) ? [outcome.right] : [])
      assert.strictEqual(new Set(counts).size, counts.length)
    }).pipe(Effect.provide(one)))

  it.live("a plain statement of a fiber sharing the connection waits for the open transaction: it is not part of it", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_plain (id int primary key)")
      const [tx, plain] = yield* quickly(Effect.all([
        Effect.exit(Transaction.withTransaction(Effect.gen(function*() {
          yield* PgPool.query("insert into fork_plain values (1)")
          yield* PgPool.query("select pg_sleep(0.2)")
          return yield* Effect.fail("boom")
        }))),
        // starts while the transaction is open (it is forked at the same time), runs after it: autocommit
        Effect.zipRight(
          Effect.sleep("50 millis"),
          Effect.zipRight(
            PgPool.query("insert into fork_plain values (2)"),
            PgPool.query("select pg_current_xact_id_if_assigned() as xid")
          )
        )
      ], { concurrency: "unbounded" }))
      assert.isTrue(Exit.isFailure(tx))
      assert.deepStrictEqual(plain, [{ xid: null }])
      assert.deepStrictEqual(yield* PgPool.query("select id from fork_plain order by id"), [{ id: 2 }])
    }).pipe(Effect.provide(one)))

  it.live("nested transactions of concurrent fibers inside one transaction: one savepoint at a time", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_nested (id int primary key)")
      yield* quickly(Transaction.withTransaction(Effect.gen(function*() {
        yield* PgPool.query("insert into fork_nested values (0)")
        const outcomes = yield* Effect.all(
          [1, 2, 3, 4, 5, 6].map((id) =>
            Effect.either(Transaction.withTransaction(Effect.gen(function*() {
              yield* PgPool.query("insert into fork_nested values ($1)", [id])
              yield* PgPool.query("select pg_sleep(0.01)")
              if (id % 2 === 0) return yield* Effect.fail(`back to the savepoint ${id}`)
            })))
          ),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(outcomes.map(Either.isRight), [true, false, true, false, true, false])
      })))
      const rows = yield* PgPool.query("select id from fork_nested order by id")
      assert.deepStrictEqual(rows.map((row) => row.id), [0, 1, 3, 5])
    }).pipe(Effect.provide(one)))

  it.live("a fiber forked inside a transaction that outlives it is refused, not run outside of it", () =>
    Effect.gen(function*() {
      const fiber = yield* PgPool.withConnection(Transaction.withTransaction(
        Effect.fork(Effect.zipRight(Effect.sleep("100 millis"), PgPool.query("select 1")))
      ))
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      if (Exit.isFailure(exit)) {
        assert.include(Cause.pretty(exit.cause), "25P01")
      }
    }).pipe(Effect.provide(one)))
})

describe("a fiber forked inside withConnection that outlives it", () => {
  it.live("never runs a statement on the connection once it went back (it checks out its own)", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_outlived (id int primary key)")
      // the child inserts rows one after the other, before and after the withConnection it was forked in ends
      const child = yield* PgPool.withConnection(Effect.fork(Effect.forEach(
        Array.from({ length: 40 }, (_, i) => i + 1),
        (id) => Effect.exit(PgPool.query("insert into fork_outlived values ($1)", [id])),
        { concurrency: 1 }
      )))
      // meanwhile, transactions that roll back: a row of the child's inside one of them would vanish
      const rolledBack = yield* Effect.forEach(
        Array.from({ length: 5 }, (_, i) => i),
        () =>
          Effect.exit(Transaction.withTransaction(Effect.zipRight(
            PgPool.query("select pg_sleep(0.01)"),
            Effect.fail("roll back")
          ))),
        { concurrency: 1 }
      )
      assert.isTrue(rolledBack.every(Exit.isFailure))
      const outcomes = yield* Fiber.join(child)
      const inserted = outcomes.flatMap((exit, i) => Exit.isSuccess(exit) ? [i + 1] : [])
      const rows = yield* PgPool.query("select id from fork_outlived order by id")
      assert.deepStrictEqual(rows.map((row) => row.id), inserted)
      assert.isAtLeast(inserted.length, 39, JSON.stringify(outcomes.filter(Exit.isFailure).map(String)))
      yield* eventually(PgPool.stats, (stats) => stats.inUse === 0 && stats.waiting === 0)
    }).pipe(Effect.provide(testLayer({ maxConnections: 2, acquireTimeout: "5 seconds" }))))
})

describe("interrupting one of several concurrent statements on one connection", () => {
  const backendsRunning = (text: string) =>
    Effect.map(
      adminQuery(
        "select count(*)::int as n from pg_stat_activity where datname = $1 and state = 'active' and query like $2",
        [testDatabase(), `%${text}%`]
      ),
      (rows) => rows[0]!.n as number
    )

  it.live("cancels that statement only, whether it was running or waiting for its turn (many rounds)", () =>
    Effect.gen(function*() {
      for (let round = 0; round < 12; round++) {
        const delay = (round * 37) % 250
        const results = yield* PgPool.withConnection(Effect.gen(function*() {
          const a = yield* Effect.fork(PgPool.query("select pg_sleep(0.1), 'a' as v"))
          const b = yield* Effect.fork(PgPool.query("select pg_sleep(0.1), 'b' as v"))
          const c = yield* Effect.fork(PgPool.query("select pg_sleep(0.1), 'c' as v"))
          yield* Effect.sleep(`${delay} millis`)
          yield* Fiber.interrupt(b)
          return yield* Effect.all([Fiber.await(a), Fiber.await(b), Fiber.await(c)])
        }))
        const [a, b, c] = results
        const context = `round ${round}, interrupted after ${delay} ms`
        assert.deepStrictEqual(valueOf(a).map((row) => row.v), ["a"], context)
        assert.deepStrictEqual(valueOf(c).map((row) => row.v), ["c"], context)
        // b was interrupted, or had finished before the interrupt came
        if (Exit.isFailure(b)) assert.isTrue(Exit.isInterrupted(b), context)
      }
      assert.strictEqual(yield* backendsRunning("pg_sleep(0.1)"), 0)
    }).pipe(Effect.provide(one)))

  it.live("inside a transaction: a statement interrupted while it waits for its turn never runs; the transaction commits", () =>
    Effect.gen(function*() {
      yield* PgPool.query("create table fork_waiting (id int primary key)")
      yield* Transaction.withTransaction(Effect.gen(function*() {
        const running = yield* Effect.fork(PgPool.query("select pg_sleep(0.3), 1 as v"))
        // wait until the first one is on the server, then queue the second behind it and interrupt it
        yield* eventually(backendsRunning("pg_sleep(0.3)"), (n) => n === 1, { interval: "5 millis", attempts: 200 })
        const queued = yield* Effect.fork(PgPool.query("insert into fork_waiting values (1)"))
        yield* Effect.yieldNow()
        yield* Fiber.interrupt(queued)
        assert.deepStrictEqual(valueOf(yield* Fiber.await(running)).map((row) => row.v), [1])
        yield* PgPool.query("insert into fork_waiting values (2)")
      }))
      assert.deepStrictEqual(yield* PgPool.query("select id from fork_waiting order by id"), [{ id: 2 }])
    }).pipe(Effect.provide(one)))
})
