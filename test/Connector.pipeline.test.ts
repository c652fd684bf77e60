/**
 * Pipelining on one live connection (`Connection.sendPipelined`, issue 19): statements written behind the
 * ones in flight are answered in order, each its own implicit transaction; cancelling one cancels exactly that
 * one, whether it runs, waits behind others, or has finished; a lost connection fails every statement in
 * flight at once. Which statements ran is read from the server (a counter table), never assumed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Either, Fiber, Option } from "effect"
import * as Connector from "../src/Connector.js"
import type { ConnectionError, QueryError } from "../src/PgPoolError.js"
import { adminQuery, connectToTest } from "./support/db.js"

const open = connectToTest("pipeline-test")

type Outcome = Either.Either<Connector.QueryResult, QueryError | ConnectionError>

/** Sends a statement pipelined; its outcome, and its handle. */
const sendOn = (conn: Connector.Connection, text: string, params?: ReadonlyArray<unknown>) =>
  Effect.gen(function*() {
    const done = yield* Deferred.make<Outcome>()
    const handle = conn.sendPipelined!(text, params, undefined, (error, result) => {
      Deferred.unsafeDone(done, Effect.succeed(error === undefined ? Either.right(result!) : Either.left(error)))
    })
    return { outcome: Deferred.await(done), handle }
  })

describe("Connector pipelining (live, over pg)", () => {
  it.scoped("200 statements sent at once on one connection are answered in order, each with its own result", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const sent = []
      for (let i = 0; i < 200; i++) {
        sent.push(yield* sendOn(conn, i % 7 === 3 ? "select 1/($1::int - $1::int) as v" : "select $1::int as v", [i]))
      }
      assert.isTrue(conn.isBusy())
      const outcomes = yield* Effect.forEach(sent, (s) => s.outcome)
      outcomes.forEach((outcome, i) => {
        if (i % 7 === 3) {
          // a failing statement fails alone: the ones behind it run (each has its own Sync)
          assert.isTrue(Either.isLeft(outcome))
          assert.strictEqual(Either.isLeft(outcome) && outcome.left.code, "22012")
        } else {
          assert.deepStrictEqual(Either.getOrThrow(outcome).rows, [{ v: i }])
        }
      })
      yield* conn.awaitIdle
      assert.isFalse(conn.isBusy())
      assert.strictEqual(conn.transactionStatus(), "idle")
      // the connection goes on as usual
      assert.deepStrictEqual((yield* Connector.query(conn, "select 2 as v")).rows, [{ v: 2 }])
    }))

  it.scoped("statements sent from the callback of the statement that just finished keep their order", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const outcomes: Array<string> = []
      const done = yield* Deferred.make<void>()
      const record = (name: string, last = false) => (error: unknown, result: Connector.QueryResult | undefined) => {
        outcomes.push(error === undefined ? `${name}=${result!.rows[0]!.v}` : `${name} failed`)
        if (last) Deferred.unsafeDone(done, Effect.void)
      }
      // B is sent while pg is between statements (it starts B itself), C behind B: C must wait for B's end
      conn.sendPipelined!("select 'a' as v", undefined, undefined, (error, result) => {
        record("A")(error, result)
        conn.sendPipelined!("select 'b' as v, pg_sleep(0.05)", undefined, undefined, record("B"))
        conn.sendPipelined!("select 'c' as v", undefined, undefined, record("C"))
        conn.sendPipelined!("select 'd' as v", undefined, undefined, record("D", true))
      })
      yield* Deferred.await(done)
      assert.deepStrictEqual(outcomes, ["A=a", "B=b", "C=c", "D=d"])
      assert.isFalse(conn.isBroken())
    }))

  it.scoped("cancel is exact: the running statement, one waiting behind it, one finished; neighbours unharmed", () =>
    Effect.gen(function*() {
      const conn = yield* open
      yield* Connector.query(conn, "create table if not exists piped (id int primary key)")
      yield* Connector.query(conn, "truncate piped")
      const insert = (id: number, sleep: number) =>
        sendOn(conn, "insert into piped select $1::int from pg_sleep($2::float8)", [id, sleep])
      const s1 = yield* insert(1, 0.3) // runs
      const s2 = yield* insert(2, 0.3) // cancelled while running
      const s3 = yield* insert(3, 0.01)
      const s4 = yield* insert(4, 0.3) // cancelled while waiting behind s2 and s3
      const s5 = yield* insert(5, 0.01)
      // s2 and s4 cancelled now: s2's CancelRequest waits until s1 is done, s4's until s3 is
      const cancels = yield* Effect.fork(Effect.all([s2.handle.cancel, s4.handle.cancel], { concurrency: 2 }))
      const [o1, o2, o3, o4, o5] = yield* Effect.all([s1.outcome, s2.outcome, s3.outcome, s4.outcome, s5.outcome])
      yield* Fiber.join(cancels)
      assert.isTrue(Either.isRight(o1), "s1 ran")
      assert.isTrue(Either.isRight(o3), "s3 ran")
      assert.isTrue(Either.isRight(o5), "s5 ran")
      for (const [name, outcome] of [["s2", o2], ["s4", o4]] as const) {
        // cancelled (no effect), or it had finished before the cancel landed (full effect): never half
        if (Either.isLeft(outcome)) assert.strictEqual(outcome.left.code, "57014", name)
      }
      const rows = (yield* Connector.query(conn, "select id from piped order by id")).rows.map((r) => r.id)
      const expected = [1, 3, 5, ...(Either.isRight(o2) ? [2] : []), ...(Either.isRight(o4) ? [4] : [])].sort()
      assert.deepStrictEqual(rows, expected)
      // the cancels did reach their statements (0.3 s sleeps): at least one of the two was cancelled
      assert.isTrue(Either.isLeft(o2) || Either.isLeft(o4), JSON.stringify([o2, o4]))
      // cancelling a finished statement does nothing
      yield* s1.handle.cancel
      assert.deepStrictEqual((yield* Connector.query(conn, "select 1 as v")).rows, [{ v: 1 }])
    }))

  it.scopedLive("a lost connection fails every statement in flight at once; those behind the terminated one never ran", () =>
    Effect.gen(function*() {
      const conn = yield* open
      yield* Connector.query(conn, "create table if not exists piped_lost (id int primary key)")
      yield* Connector.query(conn, "truncate piped_lost")
      const head = yield* sendOn(conn, "select pg_sleep(30)")
      const behind = []
      for (let i = 0; i < 20; i++) behind.push(yield* sendOn(conn, "insert into piped_lost values ($1)", [i]))
      // the backend is terminated while it runs the head
      yield* Effect.sleep("100 millis")
      const killed = yield* adminQuery("select pg_terminate_backend($1) as killed", [conn.backendPid])
      assert.deepStrictEqual(killed, [{ killed: true }])
      const started = performance.now()
      const outcomes = yield* Effect.timeout(Effect.forEach([head, ...behind], (s) => s.outcome), "5 seconds")
      assert.isBelow(performance.now() - started, 2_000)
      for (const outcome of outcomes) {
        assert.isTrue(Either.isLeft(outcome))
        assert.strictEqual(Either.isLeft(outcome) && outcome.left._tag, "ConnectionError")
      }
      // the head was running: not provably unrun; the ones behind it never ran, and say so
      const head_ = Either.getLeft(outcomes[0]!).pipe(Option.getOrThrow) as ConnectionError
      assert.notStrictEqual(head_.safeToRetry, true)
      for (const outcome of outcomes.slice(1)) {
        assert.strictEqual((Either.getLeft(outcome).pipe(Option.getOrThrow) as ConnectionError).safeToRetry, true)
      }
      const other = yield* open
      assert.deepStrictEqual((yield* Connector.query(other, "select count(*)::int as n from piped_lost")).rows, [{
        n: 0
      }])
      assert.isTrue(conn.isBroken())
    }))
})
