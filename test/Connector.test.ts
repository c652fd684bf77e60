/**
 * The live connector on a real server: statements, results and errors as the pool sees them.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import pg from "pg"
import * as Connector from "../src/Connector.js"
import { connectToTest } from "./support/db.js"

const openWith = (statementCache?: Connector.StatementCacheOptions) => connectToTest("connector-test", statementCache)

/** The statements the statement cache prepared on this connection (pg_prepared_statements is per session). */
const ownPrepared =
  "select statement from pg_prepared_statements where name like $1 and statement <> $2 order by statement"
const preparedOn = (conn: Connector.Connection) =>
  Effect.map(
    Connector.query(conn, ownPrepared, ["effect_pg_pool_%", ownPrepared]),
    (result) => result.rows.map((row) => row.statement as string)
  )

/** How many times the server ran `text` as one of the connector's prepared statements (PostgreSQL 14+). */
const preparedRuns = (conn: Connector.Connection, text: string) =>
  Effect.map(
    Connector.query(
      conn,
      "select coalesce(sum(generic_plans + custom_plans), 0)::int as runs from pg_prepared_statements where name like $1 and statement = $2",
      ["effect_pg_pool_%", text]
    ),
    (result) => result.rows[0]!.runs as number
  )

const open = openWith()

describe("Connector (live, over pg)", () => {
  it.scoped("a statement or cursor with more parameters than the protocol carries is a QueryError 54000, not sent; a cursor refuses what a statement refuses (22023), an array holding itself too", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const values = Array.from({ length: 65_536 }, (_, i) => i)
      const failed = yield* Effect.flip(Connector.query(conn, "select 1", values))
      assert.strictEqual(failed._tag, "QueryError")
      assert.strictEqual((failed as { code?: string }).code, "54000")
      assert.include(failed.message, "this one has 65536")
      const cursor = conn.cursor("select 1", values)
      const unread = yield* Effect.flip(cursor.read(10))
      assert.strictEqual((unread as { code?: string }).code, "54000")
      yield* cursor.close
      // a cursor refuses what a statement refuses (pg-cursor serialises its parameters itself)
      const fnCursor = conn.cursor("select $1::text", [() => 1])
      const fnRead = yield* Effect.flip(fnCursor.read(10))
      assert.strictEqual((fnRead as { code?: string }).code, "22023")
      assert.include(fnRead.message, "parameter $1 is a function")
      yield* fnCursor.close
      // serialised before it is handed to pg (which may serialise it in a socket handler, where a throw would
      // end the process): an array holding itself is a typed failure
      const cyclic: Array<unknown> = [1]
      cyclic.push(cyclic)
      const cyclicCursor = conn.cursor("select $1::int[]", [cyclic])
      const cyclicRead = yield* Effect.flip(cyclicCursor.read(10))
      assert.strictEqual((cyclicRead as { code?: string }).code, "22023")
      yield* cyclicCursor.close
      assert.isFalse(conn.isBusy(), "nothing went out")
      const result = yield* Connector.query(conn, "select 1 as one")
      assert.deepStrictEqual(result.rows, [{ one: 1 }])
    }))

  it.scoped("parameters of every common type round-trip; nulls stay null", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const now = new Date("2024-05-06T07:08:09.123Z")
      const result = yield* Connector.query(
        conn,
        "select $1::int as i, $2::text as t, $3::bool as b, $4::jsonb as j, $5::timestamptz as ts, $6::int as n, $7::int[] as a, $8::bytea as bin",
        [42, "héllo", true, { a: [1, 2] }, now, null, [1, 2, 3], Buffer.from([1, 2, 255])]
      )
      assert.deepStrictEqual(result.rows, [{
        i: 42,
        t: "héllo",
        b: true,
        j: { a: [1, 2] },
        ts: now,
        n: null,
        a: [1, 2, 3],
        bin: Buffer.from([1, 2, 255])
      }])
      assert.strictEqual(result.command, "SELECT")
      assert.strictEqual(result.rowCount, 1)
      assert.deepStrictEqual(result.fields.map((f) => f.name), ["i", "t", "b", "j", "ts", "n", "a", "bin"])
      // a cursor's parameters (serialised by the connector before pg-cursor gets them) arrive the same
      const cursor = conn.cursor(
        "select $1::int as i, $2::text as t, $3::bool as b, $4::jsonb as j, $5::timestamptz as ts, $6::int as n, $7::int[] as a, $8::bytea as bin",
        [42, "héllo", true, { a: [1, 2] }, now, null, [1, 2, 3], Buffer.from([1, 2, 255])]
      )
      assert.deepStrictEqual(yield* cursor.read(10), result.rows)
      yield* cursor.close
    }))

  it.scoped("sendAfter runs the prefix and the statement in order; a failing prefix keeps the statement from running", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const sendAfter = conn.sendAfter!
      const run = (prefix: ReadonlyArray<string>, text: string, params?: ReadonlyArray<unknown>) =>
        Effect.async<Connector.QueryResult, unknown>((resume) => {
          sendAfter(prefix, text, params, undefined, (error, result) => {
            resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
          })
        })
      yield* Connector.query(conn, "create temporary table p_t (x int)")
      // the prefix opens a transaction that the statement runs in; only the statement's result comes back
      const inserted = yield* run(["BEGIN ISOLATION LEVEL SERIALIZABLE"], "insert into p_t values ($1) returning x", [
        1
      ])
      assert.deepStrictEqual([inserted.command, inserted.rows], ["INSERT", [{ x: 1 }]])
      assert.strictEqual(conn.transactionStatus(), "transaction")
      const level = yield* Connector.query(conn, "select current_setting('transaction_isolation') as level")
      assert.deepStrictEqual(level.rows, [{ level: "serializable" }])
      yield* Connector.query(conn, "ROLLBACK")
      // a statement without parameters goes the same way
      const plain = yield* run(["BEGIN"], "select 2 as two")
      assert.deepStrictEqual(plain.rows, [{ two: 2 }])
      assert.strictEqual(conn.transactionStatus(), "transaction")
      yield* Connector.query(conn, "ROLLBACK")
      // the prefix fails: its error comes back and the statement never ran
      const error = yield* Effect.flip(run(["select 1/0"], "insert into p_t values ($1)", [2])) as Effect.Effect<{
        readonly code?: string
      }>
      assert.strictEqual(error.code, "22012")
      assert.strictEqual(conn.transactionStatus(), "idle")
      const rows = yield* Connector.query(conn, "select x from p_t order by x")
      assert.deepStrictEqual(rows.rows, [])
      // the statement fails inside the transaction the prefix opened: the transaction is failed, not gone
      const failed = yield* Effect.flip(run(["BEGIN"], "select * from no_such_table")) as Effect.Effect<{
        readonly code?: string
      }>
      assert.strictEqual(failed.code, "42P01")
      assert.strictEqual(conn.transactionStatus(), "failed")
      yield* Connector.query(conn, "ROLLBACK")
    }))

  it.scoped("rowMode array, command tags and row counts", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const values = yield* Connector.query(conn, "select 1 as a, 'x' as b union all select 2, 'y'", undefined, "array")
      assert.deepStrictEqual(values.rows as ReadonlyArray<unknown>, [[1, "x"], [2, "y"]])
      yield* Connector.query(conn, "create temporary table c_t (x int)")
      const insert = yield* Connector.query(conn, "insert into c_t select generate_series(1, 5)")
      assert.deepStrictEqual([insert.command, insert.rowCount], ["INSERT", 5])
      const update = yield* Connector.query(conn, "update c_t set x = x + 1 where x > $1", [2])
      assert.deepStrictEqual([update.command, update.rowCount], ["UPDATE", 3])
    }))

  it.scoped("several statements in one simple query give each result", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const result = yield* Connector.query(conn, "select 1 as a; select 'two' as b; select 3 as c where false")
      assert.deepStrictEqual(result.results?.map((r) => r.rows), [[{ a: 1 }], [{ b: "two" }], []])
      assert.deepStrictEqual(result.rows, [])
      const empty = yield* Connector.query(conn, "")
      assert.deepStrictEqual([empty.command, empty.rows], ["", []])
    }))

  it.scoped("a column of the same name but another type is parsed by its own parser", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const a = yield* Connector.query(conn, "select 1 as x")
      const b = yield* Connector.query(conn, "select 'one' as x")
      const c = yield* Connector.query(conn, "select true as x")
      const d = yield* Connector.query(conn, "select 1 as x")
      assert.deepStrictEqual([a.rows, b.rows, c.rows, d.rows], [[{ x: 1 }], [{ x: "one" }], [{ x: true }], [{ x: 1 }]])
    }))

  it.scoped("global type parsers (pg.types.setTypeParser) are honoured", () =>
    Effect.gen(function*() {
      const previous = pg.types.getTypeParser(20, "text")
      yield* Effect.addFinalizer(() => Effect.sync(() => pg.types.setTypeParser(20, previous)))
      pg.types.setTypeParser(20, (value: string) => BigInt(value))
      const conn = yield* open
      const result = yield* Connector.query(conn, "select 9007199254740993::int8 as big")
      assert.deepStrictEqual(result.rows, [{ big: 9007199254740993n }])
    }))

  it.scoped("a parameter that cannot be sent is a QueryError and the connection stays usable", () =>
    Effect.gen(function*() {
      const conn = yield* open
      const bad = {
        toPostgres: () => {
          throw new Error("not serialisable")
        }
      }
      const error = yield* Effect.flip(Connector.query(conn, "select $1::text as t", [bad]))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "22023")
      assert.include(error.message, "not serialisable")
      assert.isFalse(conn.isBroken())
      assert.isFalse(conn.isBusy())
      const ok = yield* Connector.query(conn, "select $1::text as t", ["fine"])
      assert.deepStrictEqual(ok.rows, [{ t: "fine" }])
      assert.strictEqual(conn.transactionStatus(), "idle")
    }))

  it.scoped("a value a type parser rejects is a QueryError and the connection stays usable", () =>
    Effect.gen(function*() {
      const previous = pg.types.getTypeParser(1700, "text")
      yield* Effect.addFinalizer(() => Effect.sync(() => pg.types.setTypeParser(1700, previous)))
      pg.types.setTypeParser(1700, () => {
        throw new Error("no numerics today")
      })
      const conn = yield* open
      const error = yield* Effect.flip(Connector.query(conn, "select 1.5::numeric as n"))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "22P02")
      pg.types.setTypeParser(1700, previous)
      const ok = yield* Connector.query(conn, "select 1 as one")
      assert.deepStrictEqual(ok.rows, [{ one: 1 }])
    }))

  it.scoped("a server error is a QueryError with the transaction status as the server reports it", () =>
    Effect.gen(function*() {
      const conn = yield* open
      yield* Connector.query(conn, "begin")
      const error = yield* Effect.flip(Connector.query(conn, "select 1/0"))
      assert.strictEqual(error._tag, "QueryError")
      if (error._tag === "QueryError") assert.strictEqual(error.code, "22012")
      assert.strictEqual(conn.transactionStatus(), "failed")
      const commit = yield* Connector.query(conn, "commit")
      assert.strictEqual(commit.command, "ROLLBACK")
      assert.strictEqual(conn.transactionStatus(), "idle")
    }))

  describe("statement cache (automatic preparation)", () => {
    it.scoped("a statement that ran `threshold` times is prepared; its results stay the same, in every row mode", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 2, capacity: 10 })
        yield* Connector.query(conn, "create temporary table sc_t (id int primary key, name text)")
        yield* Connector.query(conn, "insert into sc_t values (1, 'one'), (2, 'two')")
        const plain = "select id, name from sc_t order by id"
        const param = "select name from sc_t where id = $1"
        const results = []
        for (let i = 0; i < 4; i++) {
          results.push(yield* Connector.query(conn, plain))
          results.push(yield* Connector.query(conn, param, [1 + (i % 2)]))
        }
        assert.deepStrictEqual(yield* preparedOn(conn), [plain, param])
        for (let i = 0; i < 4; i++) {
          assert.deepStrictEqual(results[2 * i]!.rows, [{ id: 1, name: "one" }, { id: 2, name: "two" }])
          assert.deepStrictEqual(results[2 * i]!.fields.map((f) => f.name), ["id", "name"])
          assert.deepStrictEqual([results[2 * i]!.command, results[2 * i]!.rowCount], ["SELECT", 2])
          assert.deepStrictEqual(results[2 * i + 1]!.rows, [{ name: i % 2 === 0 ? "one" : "two" }])
        }
        const arrays = yield* Connector.query(conn, plain, undefined, "array")
        assert.deepStrictEqual(arrays.rows as ReadonlyArray<unknown>, [[1, "one"], [2, "two"]])
        // a statement without rows (NoData) and a write are prepared too and report their counts
        for (let i = 0; i < 3; i++) {
          const update = yield* Connector.query(conn, "update sc_t set name = name where id > $1", [0])
          assert.deepStrictEqual([update.command, update.rowCount, update.rows], ["UPDATE", 2, []])
        }
        assert.include(yield* preparedOn(conn), "update sc_t set name = name where id > $1")
      }))

    it.scoped("several statements in one text, utility statements and failures are never prepared", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        for (let i = 0; i < 3; i++) {
          const both = yield* Connector.query(conn, "select 1 as a; select 2 as b")
          assert.deepStrictEqual(both.results?.map((r) => r.rows), [[{ a: 1 }], [{ b: 2 }]])
          yield* Connector.query(conn, "set application_name = 'sc'")
          yield* Effect.flip(Connector.query(conn, "select 1/0"))
        }
        assert.deepStrictEqual(yield* preparedOn(conn), [])
      }))

    it.scoped("capacity 0 prepares nothing", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 0 })
        for (let i = 0; i < 5; i++) yield* Connector.query(conn, "select $1::int as x", [i])
        assert.deepStrictEqual(yield* preparedOn(conn), [])
      }))

    it.scoped("beyond the capacity the least recently used statement is closed on the server", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 2 })
        const run = (n: number) => Connector.query(conn, `select ${n} as n where $1::int = 1`, [1])
        for (const n of [1, 1, 2, 2]) yield* run(n)
        yield* run(1) // 1 is now the most recently used
        for (const n of [3, 3]) yield* run(n)
        const left = yield* preparedOn(conn)
        assert.deepStrictEqual(left, ["select 1 as n where $1::int = 1", "select 3 as n where $1::int = 1"])
        assert.deepStrictEqual((yield* run(2)).rows, [{ n: 2 }])
      }))

    it.scoped("a failure while preparing leaves no statement behind and the next run prepares it", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 2, capacity: 10 })
        const text = "select 10 / $1::int as q"
        yield* Connector.query(conn, text, [1])
        yield* Connector.query(conn, text, [2])
        const error = yield* Effect.flip(Connector.query(conn, text, [0]))
        assert.strictEqual(error._tag === "QueryError" ? error.code : error._tag, "22012")
        assert.deepStrictEqual((yield* Connector.query(conn, text, [5])).rows, [{ q: 2 }])
        assert.deepStrictEqual((yield* Connector.query(conn, text, [10])).rows, [{ q: 1 }])
        const names = yield* Connector.query(
          conn,
          "select count(*)::int as n from pg_prepared_statements where statement = $1",
          [text]
        )
        assert.deepStrictEqual(names.rows, [{ n: 1 }])
      }))

    it.scoped("a table changed under a prepared statement: sent again outside a transaction, an error inside one", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        yield* Connector.query(conn, "create temporary table sc_alter (id int)")
        yield* Connector.query(conn, "insert into sc_alter values (1)")
        const text = "select * from sc_alter"
        yield* Connector.query(conn, text)
        yield* Connector.query(conn, text)
        assert.include(yield* preparedOn(conn), text)
        yield* Connector.query(conn, "alter table sc_alter add column extra text default 'x'")
        // the server refuses the old plan (0A000): the statement did not run, and is sent again as it is now
        const again = yield* Connector.query(conn, text)
        assert.deepStrictEqual(again.rows, [{ id: 1, extra: "x" }])
        assert.deepStrictEqual(again.fields.map((f) => f.name), ["id", "extra"])
        assert.deepStrictEqual((yield* Connector.query(conn, text)).rows, [{ id: 1, extra: "x" }])
        // inside a transaction the failure aborts the transaction, so it is reported, not hidden
        yield* Connector.query(conn, "alter table sc_alter add column more int default 2")
        yield* Connector.query(conn, "begin")
        const error = yield* Effect.flip(Connector.query(conn, text))
        assert.strictEqual(error._tag === "QueryError" ? error.code : error._tag, "0A000")
        yield* Connector.query(conn, "rollback")
        assert.deepStrictEqual((yield* Connector.query(conn, text)).rows, [{ id: 1, extra: "x", more: 2 }])
      }))

    it.scoped("DEALLOCATE ALL, DISCARD ALL and a deallocated name: the cache follows the server", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        const text = "select $1::int + 1 as y"
        const run = (x: number) => Effect.map(Connector.query(conn, text, [x]), (r) => r.rows)
        yield* run(1)
        yield* run(1)
        for (const reset of ["deallocate all", "discard all"]) {
          yield* Connector.query(conn, reset)
          // the counts start afresh: the first run after the reset is not prepared, the next one is
          assert.deepStrictEqual(yield* run(2), [{ y: 3 }])
          assert.deepStrictEqual(yield* preparedOn(conn), [])
          assert.deepStrictEqual(yield* run(3), [{ y: 4 }])
          assert.deepStrictEqual(yield* preparedOn(conn), [text])
        }
        // a statement dropped behind the cache's back (26000) is sent again, then prepared afresh
        const name = yield* Connector.query(conn, "select name from pg_prepared_statements where statement = $1", [
          text
        ])
        yield* Connector.query(conn, `deallocate ${name.rows[0]!.name as string}`)
        assert.deepStrictEqual(yield* run(4), [{ y: 5 }])
        assert.deepStrictEqual(yield* run(5), [{ y: 6 }])
        assert.deepStrictEqual(yield* preparedOn(conn), [text])
      }))

    it.scoped("a prepared statement goes out after a pipelined prefix (a transaction's BEGIN)", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        const sendAfter = conn.sendAfter!
        const text = "select $1::int * 2 as d"
        yield* Connector.query(conn, text, [1])
        yield* Connector.query(conn, text, [1])
        assert.deepStrictEqual(yield* preparedOn(conn), [text])
        const before = yield* preparedRuns(conn, text)
        const result = yield* Effect.async<Connector.QueryResult, unknown>((resume) => {
          sendAfter(["BEGIN"], text, [21], undefined, (error, value) => {
            resume(error === undefined ? Effect.succeed(value!) : Effect.fail(error))
          })
        })
        assert.deepStrictEqual(result.rows, [{ d: 42 }])
        assert.strictEqual(conn.transactionStatus(), "transaction")
        // it ran as the prepared statement, not as its text parsed again
        assert.strictEqual(yield* preparedRuns(conn, text), before + 1)
        yield* Connector.query(conn, "ROLLBACK")
      }))

    it.scoped("EXECUTE of an application's own prepared statement is never prepared: its columns may change", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        yield* Connector.query(conn, "prepare mine as select 1 as a, 2 as b")
        for (let i = 0; i < 3; i++) yield* Connector.query(conn, "  /* mine */ execute mine")
        yield* Connector.query(conn, "deallocate mine")
        yield* Connector.query(conn, "prepare mine as select 10 as b, 20 as a, 30 as c")
        const result = yield* Connector.query(conn, "  /* mine */ execute mine")
        assert.deepStrictEqual(result.fields.map((f) => f.name), ["b", "a", "c"])
        assert.deepStrictEqual(result.rows, [{ b: 10, a: 20, c: 30 }])
        assert.deepStrictEqual(yield* preparedOn(conn), [])
      }))

    it.scoped("a function raising 0A000 or 26000 is the statement's own error: not run again, the statement stays prepared", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        yield* Connector.query(conn, "create temporary sequence sc_seq")
        yield* Connector.query(
          conn,
          `create function pg_temp.sc_raise(code text) returns int language plpgsql as $$
           begin perform nextval('sc_seq'); if code <> '' then raise exception 'no' using errcode = code; end if; return 1; end $$`
        )
        const text = "select pg_temp.sc_raise($1) as r"
        yield* Connector.query(conn, text, [""])
        yield* Connector.query(conn, text, [""])
        assert.deepStrictEqual(yield* preparedOn(conn), [text])
        for (const code of ["0A000", "26000"]) {
          const error = yield* Effect.flip(Connector.query(conn, text, [code]))
          assert.strictEqual(error._tag === "QueryError" ? error.code : error._tag, code)
        }
        const calls = yield* Connector.query(conn, "select last_value::int as n from sc_seq")
        assert.deepStrictEqual(calls.rows, [{ n: 4 }])
        assert.deepStrictEqual(yield* preparedOn(conn), [text])
      }))

    it.scoped("a prepared text run with another number of parameters gets the server's error; the connection stays", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        const text = "select $1::int as v"
        yield* Connector.query(conn, text, [1])
        yield* Connector.query(conn, text, [2])
        const error = yield* Effect.flip(Connector.query(conn, text, []))
        assert.strictEqual(error._tag, "QueryError")
        assert.isFalse(conn.isBroken())
        assert.deepStrictEqual((yield* Connector.query(conn, text, [3])).rows, [{ v: 3 }])
      }))

    it.scoped("long texts are neither counted nor prepared", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        const long = `select '${"x".repeat(20_000)}' as filler where $1::int = 1`
        for (let i = 0; i < 3; i++) yield* Connector.query(conn, long, [1])
        assert.deepStrictEqual(yield* preparedOn(conn), [])
      }))

    it.scoped("a stale statement sent with a transaction's BEGIN: the transaction is begun again and the statement runs", () =>
      Effect.gen(function*() {
        const conn = yield* openWith({ threshold: 1, capacity: 10 })
        const sendAfter = conn.sendAfter!
        yield* Connector.query(conn, "create temporary table sc_tx (id int)")
        yield* Connector.query(conn, "insert into sc_tx values (7)")
        const text = "select * from sc_tx where id = $1"
        yield* Connector.query(conn, text, [7])
        yield* Connector.query(conn, text, [7])
        yield* Connector.query(conn, "alter table sc_tx add column note text default 'n'")
        const result = yield* Effect.async<Connector.QueryResult, unknown>((resume) => {
          sendAfter(["BEGIN"], text, [7], undefined, (error, value) => {
            resume(error === undefined ? Effect.succeed(value!) : Effect.fail(error))
          })
        })
        assert.deepStrictEqual(result.rows, [{ id: 7, note: "n" }])
        assert.strictEqual(conn.transactionStatus(), "transaction")
        yield* Connector.query(conn, "ROLLBACK")
      }))

    it.scoped("a text has the same statement name on every connection; a name gone missing closes the others too", () =>
      Effect.gen(function*() {
        const a = yield* openWith({ threshold: 1, capacity: 10 })
        const b = yield* openWith({ threshold: 1, capacity: 10 })
        const texts = ["select $1::int + 10 as p", "select $1::int + 20 as p", "select $1::int + 30 as p"]
        for (const conn of [a, b]) {
          for (const text of texts) for (let i = 0; i < 2; i++) yield* Connector.query(conn, text, [1])
        }
        const names = (conn: Connector.Connection) =>
          Effect.map(
            Connector.query(
              conn,
              "select name from pg_prepared_statements where statement = any($1) order by statement",
              [texts]
            ),
            (r) => r.rows.map((row) => row.name as string)
          )
        const onA = yield* names(a)
        assert.deepStrictEqual(onA, yield* names(b))
        assert.strictEqual(new Set(onA).size, 3)
        // one name dropped behind the cache's back (26000): the statement is sent again, and every name the
        // cache held is closed (some may be gone too) rather than left on the server
        yield* Connector.query(a, `deallocate ${onA[0]!}`)
        assert.deepStrictEqual((yield* Connector.query(a, texts[0]!, [1])).rows, [{ p: 11 }])
        yield* Connector.query(a, "select 1 where $1::int = 1", [1])
        assert.deepStrictEqual(yield* names(a), [])
        assert.deepStrictEqual((yield* Connector.query(a, texts[1]!, [1])).rows, [{ p: 21 }])
      }))
  })
})
