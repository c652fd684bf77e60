/**
 * The SqlClient on a real primary with a real streaming standby: `listen` lands on the primary whichever host
 * is listed first, and follows it through a failover; a pool with no primary fails `listen` instead of staying
 * silent; cursor streams and `reserve` are routed as `PgPool.connection` is (inside `PgPool.readOnly`, to the
 * standby, with the same fallback).
 *
 * One replication pair is shared by the file. Its tests run one after the other, and the failover test, which
 * destroys the pair (the old primary must not come back after the promotion), is the last one. Every test
 * builds its own pool with its own `applicationName`; waiting for a condition is polling with a bound, on
 * live clocks.
 */
import { SqlClient, SqlError } from "@effect/sql"
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, layer } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, Layer, Schedule, Stream } from "effect"
import * as net from "node:net"
import * as PgPool from "../src/PgPool.js"
import * as PgPoolError from "../src/PgPoolError.js"
import * as PgPoolSql from "../src/PgPoolSql.js"
import { now } from "./support/exits.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Replication from "./support/replication.js"

const Shared = Replication.ReplicationPair

/** `SqlClient` / `PgClient` on a pool of `config` (and the pool itself). */
const sqlOn = (config: PgPool.Config) => Layer.provideMerge(PgPoolSql.layer, PgPool.layer(config))

/**
 * Polls `effect` until it succeeds with a value satisfying `done` (a failure counts as "not yet"), every
 * 25 ms, for at most `ms` of real time.
 */
const poll = <A, E, R>(label: string, effect: Effect.Effect<A, E, R>, done: (a: A) => boolean, ms: number) =>
  Effect.gen(function*() {
    const start = yield* now
    for (;;) {
      const result = yield* Effect.either(effect)
      if (Either.isRight(result) && done(result.right)) return result.right
      if ((yield* now) - start >= ms) {
        const last = Either.isRight(result) ? JSON.stringify(result.right) : String(result.left)
        return assert.fail(`${label}: not done after ${ms} ms; last: ${last}`)
      }
      yield* Effect.sleep("25 millis")
    }
  })

/** A listener on `channel` that collects what it receives (interrupted when the Scope closes). */
const collect = (sql: PgClient.PgClient, channel: string) =>
  Effect.gen(function*() {
    const received: Array<string> = []
    const fiber = yield* Effect.forkScoped(Stream.runForEach(sql.listen(channel), (payload) =>
      Effect.sync(() => {
        received.push(payload)
      })))
    return { received, fiber }
  })

/** Notifies `payload` until the listener has received it. */
const notifyUntilReceived = (
  sql: PgClient.PgClient,
  channel: string,
  payload: string,
  received: ReadonlyArray<string>,
  ms = 10_000
) =>
  poll(
    `"${payload}" received on ${channel}`,
    Effect.zipRight(sql.notify(channel, payload), Effect.sync(() => received.includes(payload))),
    (done) => done,
    ms
  )

/** The backends of `applicationName` on `node` that are listening (their last statement was a LISTEN). */
const listening = (node: Replication.Node, applicationName: string) =>
  Effect.map(
    node.query(
      "select count(*)::int as n from pg_stat_activity where application_name = $1 and query like 'LISTEN%'",
      [applicationName]
    ),
    (rows) => rows[0]!.n as number
  )

interface Where {
  readonly standby: boolean
  readonly port: number
}

const whereSql = "select pg_is_in_recovery() as standby, inet_server_port() as port"

const toWhere = (row: { readonly standby: boolean; readonly port: number }): Where => ({
  standby: row.standby,
  port: Number(row.port)
})

/** Where a cursor stream of the SqlClient ran. */
const streamWhere = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(
    Stream.runCollect(sql.unsafe<{ standby: boolean; port: number }>(whereSql).stream),
    (rows) => toWhere(Chunk.unsafeGet(rows, 0))
  ))

/** Where a connection of `sql.reserve` is. */
const reserveWhere = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) =>
    Effect.scoped(
      Effect.flatMap(sql.reserve, (conn) =>
        Effect.map(conn.execute(whereSql, [], undefined), (rows) => toWhere(rows[0]!)))
    )
)

/** A port on which nothing listens (connects are refused at once). */
const closedPort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

layer(Replication.layer(), { excludeTestServices: true, timeout: "60 seconds" })(
  "PgPoolSql on a primary and a streaming standby",
  (it) => {
    it.effect("listen lands on the primary when the standby is listed first (targetSessionAttrs read-write)", () =>
      Effect.gen(function*() {
        const pair = yield* Shared
        const applicationName = "sql-listen-order"
        yield* Effect.gen(function*() {
          const sql = yield* PgClient.PgClient
          const { received } = yield* collect(sql, "events")
          yield* notifyUntilReceived(sql, "events", "hello", received)
          assert.strictEqual(yield* listening(pair.primary, applicationName), 1)
          assert.strictEqual(yield* listening(pair.standby, applicationName), 0)
        }).pipe(
          Effect.scoped,
          Effect.provide(sqlOn(pair.config({
            hosts: [...pair.hosts].reverse(),
            targetSessionAttrs: "read-write",
            applicationName
          })))
        )
      }))

    it.effect("listen on a pool whose only host is a standby fails with a SqlError instead of staying silent", () =>
      Effect.gen(function*() {
        const pair = yield* Shared
        const listenError = (targetSessionAttrs: "any" | "read-write") =>
          Effect.gen(function*() {
            const sql = yield* PgClient.PgClient
            return yield* Effect.flip(Stream.runDrain(sql.listen("events"))).pipe(
              Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => "listen neither failed nor ended" })
            )
          }).pipe(Effect.provide(sqlOn(pair.config({
            hosts: [{ host: pair.standby.host, port: pair.standby.port }],
            targetSessionAttrs,
            lazy: true,
            applicationName: "sql-listen-standby"
          }))))
        // roles not read: the server rejects LISTEN (in recovery), and that is the error
        const rejected = yield* listenError("any")
        assert.instanceOf(rejected, SqlError.SqlError)
        assert.instanceOf(rejected.cause, PgPoolError.QueryError)
        assert.strictEqual((rejected.cause as PgPoolError.QueryError).code, "25006")
        assert.include(rejected.message, "cannot execute LISTEN during recovery")
        // roles read (a lazy pool: with no primary, ordinary work could not start it): LISTEN is not even sent
        const refused = yield* listenError("read-write")
        assert.instanceOf(refused, SqlError.SqlError)
        assert.instanceOf(refused.cause, PgPoolError.ConnectionError)
        assert.include(refused.message, "No primary to LISTEN on")
        assert.include(refused.message, `127.0.0.1:${pair.standby.port} is a standby`)
      }))

    it.effect("cursor streams and reserve run on the standby inside PgPool.readOnly, else on the primary", () =>
      Effect.gen(function*() {
        const pair = yield* Shared
        const primary = { standby: false, port: pair.primary.port }
        const standby = { standby: true, port: pair.standby.port }
        const seen = yield* Effect.all([
          PgPool.readOnly(streamWhere),
          streamWhere,
          PgPool.readOnly(reserveWhere),
          reserveWhere,
          PgPool.stats
        ]).pipe(
          Effect.provide(sqlOn(pair.config({ targetSessionAttrs: "read-write", applicationName: "sql-routing" })))
        )
        assert.deepStrictEqual(seen.slice(0, 4), [standby, primary, standby, primary])
        assert.strictEqual(seen[4].inUse, 0)
        // no standby up: read-only streams fall back to the primary, as PgPool.connection does
        const down = yield* closedPort
        const fallback = yield* Effect.all([PgPool.readOnly(streamWhere), PgPool.readOnly(reserveWhere)]).pipe(
          Effect.provide(sqlOn(pair.config({
            hosts: [pair.hosts[0]!, { host: "127.0.0.1", port: down }],
            targetSessionAttrs: "read-write",
            applicationName: "sql-routing-fallback"
          })))
        )
        assert.deepStrictEqual(fallback, [primary, primary])
      }))

    // last: it destroys the pair
    it.effect("failover: a listener started before it receives notifications sent after the promotion", () =>
      Effect.gen(function*() {
        const pair = yield* Shared
        const watcher = yield* watchProcessErrors
        const applicationName = "sql-listen-failover"
        yield* Effect.gen(function*() {
          const sql = yield* PgClient.PgClient
          const { fiber, received } = yield* collect(sql, "events")
          yield* notifyUntilReceived(sql, "events", "before", received)
          assert.strictEqual(yield* listening(pair.primary, applicationName), 1)

          yield* pair.failover
          let n = 0
          yield* poll(
            "a notification sent after the promotion is received",
            Effect.zipRight(
              Effect.suspend(() => sql.notify("events", `after ${++n}`)),
              Effect.sync(() => received.some((payload) => payload.startsWith("after")))
            ),
            (done) => done,
            15_000
          )
          assert.strictEqual(yield* listening(pair.standby, applicationName), 1)
          assert.isNull(fiber.unsafePoll(), "the listen stream is still running")
          yield* Fiber.interrupt(fiber)
        }).pipe(
          Effect.scoped,
          Effect.provide(sqlOn(pair.config({
            targetSessionAttrs: "read-write",
            roleCheckInterval: "250 millis",
            reconnect: Schedule.spaced("250 millis"),
            applicationName
          })))
        )
        assert.deepStrictEqual(watcher.describe(), [])
      }).pipe(Effect.scoped))
  }
)
