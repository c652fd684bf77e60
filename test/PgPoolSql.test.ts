import { NodeContext } from "@effect/platform-node"
import { SqlClient, SqlError, SqlResolver, Statement } from "@effect/sql"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as PgMigrator from "@effect/sql-pg/PgMigrator"
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Chunk,
  Config,
  ConfigError,
  ConfigProvider,
  Deferred,
  Effect,
  Fiber,
  Layer,
  Option,
  Redacted,
  Schema,
  Stream,
  String as Str,
  Tracer
} from "effect"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolError from "../src/PgPoolError.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import { adminQuery, backends, eventually, testConfig, testLayer } from "./support/db.js"

const PoolLive = testLayer({ maxConnections: 4 })
const Live = Layer.provideMerge(PgPoolSql.layer, PoolLive)

describe("PgPoolSql", () => {
  it.effect("a transform that throws is a defect and the connection still goes back", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const exit = yield* Effect.exit(sql`select 1 as boom`)
      assert.isTrue(exit._tag === "Failure" && exit.cause._tag === "Die")
      const stats = yield* PgPool.stats
      assert.deepStrictEqual([stats.inUse, stats.idle], [0, 1])
      assert.deepStrictEqual(yield* PgPool.query("select 2 as two"), [{ two: 2 }])
    }).pipe(
      Effect.provide(Layer.provideMerge(
        PgPoolSql.layerWith({
          transformResultNames: (name) => {
            if (name === "boom") throw new Error("transform failed")
            return name
          }
        }),
        testLayer({ maxConnections: 1, reset: "always", acquireTimeout: "2 seconds" })
      ))
    ))

  it.effect("runs sql template statements with parameters", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{ n: number; s: string }>`select ${41}::int + 1 as n, ${"x"}::text as s`
      assert.deepStrictEqual(rows, [{ n: 42, s: "x" }])
      yield* sql`create table sql_people (id serial primary key, name text not null, age int)`
      yield* sql`insert into sql_people ${sql.insert([{ name: "ada", age: 36 }, { name: "alan", age: 41 }])}`
      const found = yield* sql<{ name: string }>`select name from sql_people where ${sql.in("name", ["ada", "bob"])}`
      assert.deepStrictEqual(found, [{ name: "ada" }])
      yield* sql`update sql_people set ${sql.update({ age: 37 })} where name = ${"ada"}`
      const [ada] = yield* sql<{ age: number }>`select age from sql_people where name = 'ada'`
      assert.strictEqual(ada!.age, 37)
    }).pipe(Effect.provide(Live)))

  it.effect("is also the PgClient, with json, raw, values and unprepared statements", () =>
    Effect.gen(function*() {
      const sql = yield* PgClient.PgClient
      const doc = { a: 1, nested: { b: [1, 2, 3] }, text: "héllo" }
      const [row] = yield* sql<{ doc: unknown }>`select ${sql.json(doc)}::jsonb as doc`
      assert.deepStrictEqual(row!.doc, doc)
      const values = yield* sql`select 1 as a, 'two' as b`.values
      assert.deepStrictEqual(values, [[1, "two"]])
      const raw = (yield* sql`select 1 as a`.raw) as { rows: Array<unknown>; command: string; rowCount: number }
      assert.strictEqual(raw.command, "SELECT")
      assert.strictEqual(raw.rowCount, 1)
      const unprepared = yield* sql.unsafe("select 7 as seven").unprepared
      assert.deepStrictEqual(unprepared, [{ seven: 7 }])
      assert.strictEqual(sql.config.database, (yield* PgPool.query("select current_database() as d"))[0]!.d)
    }).pipe(Effect.provide(Live)))

  it.effect("streams many rows with a cursor", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const chunk = yield* Stream.runCollect(sql<{ g: number }>`select g from generate_series(1, 20000) g`.stream)
      assert.strictEqual(Chunk.size(chunk), 20000)
      assert.deepStrictEqual(Chunk.unsafeGet(chunk, 19999), { g: 20000 })
      const firstFive = yield* Stream.runCollect(
        Stream.take(sql<{ g: number }>`select g from generate_series(1, 1000000) g`.stream, 5)
      )
      assert.deepStrictEqual(Chunk.toReadonlyArray(firstFive).map((r) => r.g), [1, 2, 3, 4, 5])
      const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0)
      assert.strictEqual(stats.inUse, 0)
      const rows = yield* sql`select 1 as ok`
      assert.deepStrictEqual(rows, [{ ok: 1 }])
    }).pipe(Effect.provide(Live)))

  it.effect("a statement or stream with more parameters than the protocol carries fails naming the limit, sent nowhere; a stream whose parameter cannot be serialised fails typed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const values = Array.from({ length: 65_536 }, (_, i) => i)
      const failed = yield* Effect.flip(sql.unsafe("select 1", values))
      assert.strictEqual(failed._tag, "SqlError")
      assert.include(failed.message, "at most 65535 parameters")
      const streamed = yield* Effect.flip(Stream.runCollect(sql.unsafe("select 1", values).stream))
      assert.strictEqual(streamed._tag, "SqlError")
      assert.include(streamed.message, "at most 65535 parameters")
      // a parameter that cannot be serialised: a typed failure of the stream, not a defect
      const circular: { self?: unknown } = {}
      circular.self = circular
      const unsent = yield* Effect.flip(Stream.runCollect(sql.unsafe("select $1::jsonb", [circular]).stream))
      assert.strictEqual(unsent._tag, "SqlError")
      assert.include(unsent.message, "A parameter cannot be sent")
      yield* eventually(PgPool.stats, (s) => s.inUse === 0)
      assert.deepStrictEqual(yield* sql`select 1 as ok`, [{ ok: 1 }])
    }).pipe(Effect.provide(Live)))

  it.live("a stream whose connection the server ended can still be interrupted; the connection is dropped", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const first = yield* Deferred.make<void>()
      const consumer = yield* Effect.fork(Stream.runForEach(
        sql<{ g: number }>`select g from generate_series(1, 100000) g`.stream,
        () => Effect.zipRight(Deferred.succeed(first, undefined), Effect.never)
      ))
      yield* Deferred.await(first)
      // the server ends the connection while the consumer is busy with a row, with no read out
      const rows = yield* eventually(backends(), (rows) => rows.some((row) => row.state !== "idle"))
      yield* adminQuery("select pg_terminate_backend($1)", [rows.find((row) => row.state !== "idle")!.pid])
      // the stream's finalizer (closing the cursor) does not wait for an answer that cannot come
      const interrupted = yield* Fiber.interrupt(consumer).pipe(Effect.timeoutOption("10 seconds"))
      assert.isTrue(Option.isSome(interrupted), "the interruption finished")
      const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0)
      assert.strictEqual(stats.closedByReason.broken, 1)
      assert.deepStrictEqual(yield* sql`select 1 as ok`, [{ ok: 1 }])
    }).pipe(Effect.provide(Live)))

  it.live("interrupting a stream while the server runs its statement cancels the statement", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const consumer = yield* Effect.fork(
        Stream.runDrain(sql`select pg_sleep(30), g from generate_series(1, 3) g`.stream)
      )
      const sleeping = (row: { readonly query: string; readonly state: string | null }) =>
        row.query.includes("pg_sleep(30)") && row.state === "active"
      const busy = (yield* eventually(backends(), (rows) => rows.some(sleeping))).find(sleeping)
      // without a cancel, closing the cursor would wait for the statement to finish (30 s)
      const interrupted = yield* Fiber.interrupt(consumer).pipe(Effect.timeoutOption("10 seconds"))
      assert.isTrue(Option.isSome(interrupted), "the interruption finished")
      const stats = yield* eventually(PgPool.stats, (s) => s.inUse === 0)
      assert.strictEqual(stats.inUse, 0)
      const rows = yield* backends()
      assert.isTrue(rows.every((row) => row.state !== "active"), JSON.stringify(rows))
      // the connection is still good, and is the same one
      assert.deepStrictEqual(yield* sql<{ pid: number }>`select pg_backend_pid() as pid`, [{ pid: busy!.pid }])
    }).pipe(Effect.provide(Layer.provideMerge(PgPoolSql.layer, testLayer({ maxConnections: 1 })))))

  it.effect("errors reach SqlClient users as SqlError with the pool's error as cause", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const error = yield* Effect.flip(sql`selec 1`)
      assert.instanceOf(error, SqlError.SqlError)
      assert.instanceOf(error.cause, PgPoolError.QueryError)
      assert.strictEqual((error.cause as PgPoolError.QueryError).code, "42601")
    }).pipe(Effect.provide(Live)))

  it.effect("reserve checks a connection out for the scope", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pids = yield* Effect.scoped(Effect.gen(function*() {
        const conn = yield* sql.reserve
        const a = yield* conn.execute("select pg_backend_pid() as pid", [], undefined)
        const b = yield* conn.execute("select pg_backend_pid() as pid", [], undefined)
        const stats = yield* PgPool.stats
        return [a[0].pid, b[0].pid, stats.inUse]
      }))
      assert.strictEqual(pids[0], pids[1])
      assert.strictEqual(pids[2], 1)
      assert.strictEqual((yield* PgPool.stats).inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("withTransaction commits and rolls back", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`create table sql_tx (id int primary key)`
      yield* sql.withTransaction(sql`insert into sql_tx values (1)`)
      // on a pinned connection, with work of its own after the transaction and before the connection goes back
      // to the pool (whose return reset would roll an open transaction back by itself): the transaction's own
      // ROLLBACK must have ended it, so the insert after it commits and the failed one is gone
      const [failed, seen] = yield* PgPool.withConnection(Effect.gen(function*() {
        const failed = yield* Effect.exit(sql.withTransaction(Effect.zipRight(
          sql`insert into sql_tx values (2)`,
          Effect.fail("no")
        )))
        yield* sql`insert into sql_tx values (3)`
        return [failed, yield* sql<{ id: number }>`select id from sql_tx order by id`] as const
      }))
      assert.strictEqual(failed._tag, "Failure")
      assert.deepStrictEqual(seen, [{ id: 1 }, { id: 3 }])
      const rows = yield* sql<{ id: number }>`select id from sql_tx order by id`
      assert.deepStrictEqual(rows, [{ id: 1 }, { id: 3 }])
    }).pipe(Effect.provide(Live)))

  it.effect("an SqlResolver inside withTransaction runs in the transaction (it deadlocked: the resolver's context knows only TransactionConnection)", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`create table sql_resolver (id int primary key)`
      yield* sql`insert into sql_resolver values (1), (2)`
      const byId = yield* SqlResolver.findById("ById", {
        Id: Schema.Number,
        Result: Schema.Struct({ id: Schema.Number }),
        ResultId: (row) => row.id,
        execute: (ids) => sql`select * from sql_resolver where ${sql.in("id", ids)}`
      })
      const found = yield* sql.withTransaction(Effect.gen(function*() {
        // uncommitted: only a statement in the transaction sees it
        yield* sql`insert into sql_resolver values (3)`
        const one = yield* byId.execute(1)
        const batched = yield* Effect.all([byId.execute(2), byId.execute(3)], { batching: true })
        return [one, ...batched]
      })).pipe(Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => "deadlocked" }))
      assert.deepStrictEqual(found.map(Option.getOrUndefined), [{ id: 1 }, { id: 2 }, { id: 3 }])
      // and a resolver whose transaction failed is rolled back with it
      const failed = yield* Effect.exit(
        sql.withTransaction(Effect.zipRight(
          Effect.zipRight(sql`insert into sql_resolver values (4)`, byId.execute(4)),
          Effect.fail("no")
        )).pipe(Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => "deadlocked" }))
      )
      assert.deepStrictEqual(failed._tag === "Failure" ? Cause.squash(failed.cause) : "succeeded", "no")
      assert.deepStrictEqual(yield* sql`select count(*)::int as n from sql_resolver`, [{ n: 3 }])
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.inUse, 0)
    }).pipe(Effect.provide(Live)))

  it.effect("interrupting a statement cancels it on the server, on its own backend only", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const fiber = yield* Effect.fork(sql`select pg_sleep(30)`)
      const other = yield* Effect.fork(sql`select pg_sleep(0.3), 'other finished' as result`)
      yield* eventually(backends(), (rows) => rows.filter((row) => row.state === "active").length === 2)
      yield* Fiber.interrupt(fiber)
      const rows = yield* backends()
      assert.isFalse(rows.some((row) => row.query === "select pg_sleep(30)" && row.state === "active"))
      const result = yield* Fiber.join(other)
      assert.deepStrictEqual(result.map((r) => r.result), ["other finished"])
    }).pipe(Effect.provide(Live)))

  it.effect("name transforms (layerWith)", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [row] = yield* sql`select 1 as first_name_length`
      assert.deepStrictEqual(row, { firstNameLength: 1 })
    }).pipe(Effect.provide(Layer.provide(
      PgPoolSql.layerWith({ transformResultNames: Str.snakeToCamel, transformQueryNames: Str.camelToSnake }),
      PoolLive
    ))))

  it.live("listen and notify, also after the listening backend was terminated", () =>
    Effect.gen(function*() {
      const sql = yield* PgClient.PgClient
      const received: Array<string> = []
      const first = yield* Deferred.make<void>()
      const fiber = yield* Effect.fork(Stream.runForEach(sql.listen("events"), (payload) =>
        Effect.sync(() => received.push(payload)).pipe(
          Effect.zipRight(Deferred.succeed(first, undefined))
        )))
      yield* eventually(
        Effect.zipRight(sql.notify("events", "hello"), Deferred.isDone(first)),
        (done) =>
          done
      )
      assert.include(received, "hello")
      const listeners = yield* adminQuery(
        "select pid from pg_stat_activity where datname = $1 and query like 'LISTEN%'",
        [(yield* PgPool.query("select current_database() as d"))[0]!.d]
      )
      assert.isAtLeast(listeners.length, 1)
      for (const row of listeners) yield* adminQuery("select pg_terminate_backend($1)", [row.pid])
      yield* eventually(
        Effect.zipRight(sql.notify("events", "after restart"), Effect.sync(() => received.includes("after restart"))),
        (done) => done,
        { attempts: 400, interval: "50 millis" }
      )
      yield* Fiber.interrupt(fiber)
    }).pipe(Effect.provide(Live)), 60_000)

  it.live(
    "a LISTEN the server rejects fails the stream with a SqlError (not silence); other channels go on",
    () =>
      Effect.gen(function*() {
        const sql = yield* PgClient.PgClient
        // an empty channel name is a zero-length quoted identifier: the server answers 42601
        const rejected = Effect.flip(Stream.runDrain(sql.listen(""))).pipe(
          Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => "listen(\"\") neither failed nor ended" })
        )
        const assertRejected = (error: SqlError.SqlError) => {
          assert.instanceOf(error, SqlError.SqlError)
          assert.instanceOf(error.cause, PgPoolError.QueryError)
          assert.strictEqual((error.cause as PgPoolError.QueryError).code, "42601")
          assert.include(error.message, "LISTEN \"\" failed")
        }
        // the first listen of the client: rejected when the listen connection comes up
        assertRejected(yield* rejected)
        // with the listen connection up: rejected at the subscription; the connection keeps serving other channels
        const received: Array<string> = []
        const fiber = yield* Effect.fork(Stream.runForEach(sql.listen("fine"), (payload) =>
          Effect.sync(() => {
            received.push(payload)
          })))
        yield* eventually(
          Effect.zipRight(sql.notify("fine", "one"), Effect.sync(() => received.includes("one"))),
          (done) => done
        )
        assertRejected(yield* rejected)
        yield* eventually(
          Effect.zipRight(sql.notify("fine", "two"), Effect.sync(() => received.includes("two"))),
          (done) => done
        )
        yield* Fiber.interrupt(fiber)
      }).pipe(Effect.provide(Live)),
    30_000
  )

  it.live(
    "listen refuses a channel name PostgreSQL would shorten (over 63 bytes) or cut (a NUL): its notifications would never arrive",
    () =>
      Effect.gen(function*() {
        const sql = yield* PgClient.PgClient
        const refused = (channel: string) =>
          Effect.flip(Stream.runDrain(sql.listen(channel))).pipe(
            Effect.timeoutFail({
              duration: "10 seconds",
              onTimeout: () => `listen(${channel}) neither failed nor ended`
            })
          )
        const long = yield* refused("c".repeat(64))
        assert.instanceOf(long, SqlError.SqlError)
        assert.include(long.message, "at most 63 bytes, this one has 64")
        // counted in bytes, as the server counts them: 32 two-byte characters are 64 bytes
        assert.include((yield* refused("é".repeat(32))).message, "this one has 64")
        assert.include((yield* refused("a\0b")).message, "cannot hold a NUL")
        // 63 bytes is a name the server keeps whole: a notification sent to it with NOTIFY arrives
        const name = "é".repeat(31) + "c"
        const received = yield* Deferred.make<string>()
        const fiber = yield* Effect.fork(
          Stream.runForEach(sql.listen(name), (payload) => Deferred.succeed(received, payload))
        )
        const quoted = `"${name}"`
        const arrived = yield* eventually(
          Effect.zipRight(sql.unsafe(`NOTIFY ${quoted}, 'hello'`), Deferred.poll(received)),
          (done) => done._tag === "Some"
        )
        assert.strictEqual(yield* Option.getOrThrow(arrived), "hello")
        yield* Fiber.interrupt(fiber)
      }).pipe(Effect.provide(Live)),
    30_000
  )

  it.effect("PgMigrator runs migrations on the pool", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const done = yield* PgMigrator.run({
        loader: PgMigrator.fromRecord({
          "1_create_users": Effect.flatMap(SqlClient.SqlClient, (sql) =>
            sql`create table mig_users (id serial primary key, name text)`),
          "2_add_email": Effect.flatMap(SqlClient.SqlClient, (sql) =>
            sql`alter table mig_users add column email text`)
        }),
        table: "mig_history"
      })
      assert.deepStrictEqual(done, [[1, "create_users"], [2, "add_email"]])
      const again = yield* PgMigrator.run({
        loader: PgMigrator.fromRecord({}),
        table: "mig_history"
      })
      assert.deepStrictEqual(again, [])
      const columns = yield* sql<{ column_name: string }>`
        select column_name from information_schema.columns where table_name = 'mig_users' order by ordinal_position`
      assert.deepStrictEqual(columns.map((c) => c.column_name), ["id", "name", "email"])
    }).pipe(Effect.provide(Layer.mergeAll(Live, NodeContext.layer))))

  it.effect("statements are traced as @effect/sql traces them: a sql.execute span with the query text", () =>
    Effect.gen(function*() {
      const spans: Array<{ name: string; attributes: Map<string, unknown>; parent: string | undefined }> = []
      let ids = 0
      const tracer = Tracer.make({
        span: (name, parent, context, links, startTime, kind) => {
          const attributes = new Map<string, unknown>()
          spans.push({ name, attributes, parent: Option.getOrUndefined(Option.map(parent, (p) => p.spanId)) })
          const span: Tracer.Span = {
            _tag: "Span",
            name,
            spanId: `span-${++ids}`,
            traceId: "trace",
            parent,
            context,
            status: { _tag: "Started", startTime },
            attributes,
            links,
            sampled: true,
            kind,
            end: () => {},
            attribute: (key, value) => {
              attributes.set(key, value)
            },
            event: () => {},
            addLinks: () => {}
          }
          return span
        },
        context: (f) => f()
      })
      const sql = yield* SqlClient.SqlClient
      yield* sql`select ${1}::int as one`.pipe(Effect.withSpan("handler"), Effect.withTracer(tracer))
      const execute = spans.find((span) => span.name === "sql.execute")
      assert.isDefined(execute)
      assert.strictEqual(execute!.attributes.get("db.query.text"), "select $1::int as one")
      assert.strictEqual(execute!.attributes.get("db.operation.name"), "execute")
      assert.strictEqual(execute!.attributes.get("db.system.name"), "postgresql")
      assert.isDefined(execute!.parent)
    }).pipe(Effect.provide(Live)))

  it.effect("statement transformers, sql.unsafe and withoutTransform behave as in @effect/sql", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql`select 1 as wrong`.pipe(
        Statement.withTransformer((_statement, sql) => Effect.succeed(sql`select 2 as right_one`))
      )
      assert.deepStrictEqual(rows, [{ rightOne: 2 }])
      assert.deepStrictEqual(yield* sql.unsafe("select $1::int as x", [5]), [{ x: 5 }])
      const nested = sql`select ${sql.literal("3")} as y`
      assert.deepStrictEqual(yield* sql`${nested}`, [{ y: 3 }])
      assert.deepStrictEqual(yield* sql`select 4 as first_name`.withoutTransform, [{ first_name: 4 }])
    }).pipe(Effect.provide(Layer.provide(
      PgPoolSql.layerWith({ transformResultNames: Str.snakeToCamel }),
      PoolLive
    ))))

  it.effect("the pinned connection of PgPool.withConnection is used by SqlClient statements", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const [a, b] = yield* PgPool.withConnection(Effect.all([
        PgPool.query("select pg_backend_pid() as pid"),
        sql<{ pid: number }>`select pg_backend_pid() as pid`
      ]))
      assert.strictEqual(a[0]!.pid, b[0]!.pid)
    }).pipe(Effect.provide(Live)))
})

describe("PgPoolSql.layerClient: the one-line swap for PgClient.layer", () => {
  const url = () => testConfig().url as Redacted.Redacted

  it.effect("takes PgClient.layer's configuration and provides SqlClient, PgClient and the pool", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pg = yield* PgClient.PgClient
      assert.strictEqual(sql as unknown, pg as unknown)
      const rows = yield* sql<{ userName: string }>`select current_user as user_name`
      assert.deepStrictEqual(rows, [{ userName: new URL(Redacted.value(url())).username }])
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.maxConnections, 3)
      const [setting] = yield* PgPool.query("select current_setting('application_name') as app")
      assert.deepStrictEqual(setting, { app: "swap-app" })
    }).pipe(Effect.provide(PgPoolSql.layerClient({
      url: url(),
      maxConnections: 3,
      minConnections: 1,
      idleTimeout: "1 minute",
      connectionTTL: "10 minutes",
      connectTimeout: "5 seconds",
      applicationName: "swap-app",
      transformResultNames: Str.snakeToCamel,
      // and a knob of the pool's own
      acquireTimeout: "2 seconds"
    }))))

  it.effect("PgClient.config reports what stock @effect/sql-pg reports, url included", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      assert.isDefined(pg.config.url)
      const parsed = new URL(Redacted.value(pg.config.url!))
      assert.strictEqual(pg.config.host, parsed.hostname)
      assert.strictEqual(pg.config.port, Number(parsed.port))
      assert.strictEqual(pg.config.username, decodeURIComponent(parsed.username))
      assert.strictEqual(Redacted.value(pg.config.password!), decodeURIComponent(parsed.password))
      assert.strictEqual(pg.config.database, parsed.pathname.slice(1))
      assert.strictEqual(pg.config.maxConnections, 2)
      assert.strictEqual(pg.config.applicationName, "reported")
    }).pipe(Effect.provide(PgPoolSql.layerClient({ url: url(), maxConnections: 2, applicationName: "reported" }))))

  it.effect("PgPoolSql.layer on an existing pool reports the pool's url too", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      assert.isDefined(pg.config.url)
      const parsed = new URL(Redacted.value(pg.config.url!))
      assert.strictEqual(pg.config.host, parsed.hostname)
      assert.strictEqual(pg.config.port, Number(parsed.port))
      assert.strictEqual(pg.config.database, parsed.pathname.slice(1))
    }).pipe(Effect.provide(Live)))

  it.effect("username is the user it connects as; a field neither configuration knows is a ConfigError", () =>
    Effect.gen(function*() {
      const parsed = new URL(Redacted.value(url()))
      const user = decodeURIComponent(parsed.username)
      const asUser = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ u: string }>`select current_user as u`)
        .pipe(
          Effect.provide(PgPoolSql.layerClient({
            host: parsed.hostname,
            port: Number(parsed.port),
            database: parsed.pathname.slice(1),
            username: user,
            password: Redacted.make(decodeURIComponent(parsed.password))
          }))
        )
      assert.deepStrictEqual(asUser, [{ u: user }])
      const unknown = yield* Effect.flip(Effect.scoped(Layer.build(
        PgPoolSql.layerClient({ url: url(), path: "/var/run/postgresql" } as PgPoolSql.ClientConfig)
      )))
      assert.isTrue(ConfigError.isConfigError(unknown), String(unknown))
      assert.include(String(unknown), "path")
      const tls = yield* Effect.flip(Effect.scoped(Layer.build(
        PgPoolSql.layerClient({ url: url(), ssl: { ciphers: "HIGH" } })
      )))
      assert.isTrue(ConfigError.isConfigError(tls), String(tls))
      assert.include(String(tls), "ssl.ciphers")
      // a transform that is not a function (a caller without types): at build, not as a defect of every statement
      const transform = yield* Effect.flip(Effect.scoped(Layer.build(
        PgPoolSql.layerClient({ url: url(), transformResultNames: "camel" as never })
      )))
      assert.isTrue(ConfigError.isConfigError(transform), String(transform))
      assert.include(String(transform), "transformResultNames must be a function")
    }))

  it.effect("node-postgres' ssl: true verifies the server (here: a server without TLS refuses at once)", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.scoped(Layer.build(
        PgPoolSql.layerClient({ url: url(), ssl: true, connectTimeout: "20 seconds" })
      )))
      assert.strictEqual(error._tag, "ConnectionError")
      if (error._tag === "ConnectionError") {
        assert.include(error.message, "does not accept TLS")
        assert.strictEqual(error.retryable, false)
      }
    }))

  it.effect("layerClientConfig reads the configuration with Config", () =>
    Effect.gen(function*() {
      const pg = yield* PgClient.PgClient
      assert.strictEqual(pg.config.maxConnections, 2)
      const rows = yield* pg`select 1 as one`
      assert.deepStrictEqual(rows, [{ one: 1 }])
    }).pipe(Effect.provide(
      PgPoolSql.layerClientConfig({
        url: Config.redacted("SWAP_URL"),
        maxConnections: Config.integer("SWAP_MAX")
      }).pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
        new Map([
          ["SWAP_URL", Redacted.value(url())],
          ["SWAP_MAX", "2"]
        ])
      ))))
    )))
})
