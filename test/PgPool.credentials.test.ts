/**
 * The password as an Effect run for each new connection (issue 17, point 1), on a real server: the password
 * of a role is rotated (`ALTER ROLE ... PASSWORD`) while 32 fibers run; old connections keep working, new
 * ones use the new password, nothing fails; connects that start together share one evaluation; a failing
 * Effect is a ConnectionError carrying its cause and no secret. The user as an Effect too (dynamic credentials:
 * a new role for each lease), and both through `layerConfig`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Config, Context, Effect, Layer, Logger, Redacted, Schedule } from "effect"
import * as PgPool from "../src/PgPool.js"
import { adminQuery, backends, eventually, testConfig, testDatabase, testServer } from "./support/db.js"
import { failureOf } from "./support/exits.js"
import { describeOutcomes, startLoad } from "./support/load.js"

let roles = 0

/** A login role of its own with password `first`, dropped when the scope closes. */
const role = (first: string) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const name = `rotating_${process.pid}_${++roles}`
      yield* adminQuery(`create role ${name} login password '${first}'`)
      yield* adminQuery(`grant all on database "${testDatabase()}" to ${name}`)
      return name
    }),
    (name) =>
      Effect.orDie(Effect.zipRight(
        adminQuery(
          "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1",
          [name]
        ),
        Effect.zipRight(adminQuery(`drop owned by ${name}`), adminQuery(`drop role if exists ${name}`))
      ))
  )

describe("password as an Effect, per connect", () => {
  it.scopedLive("a password rotated on the server while 32 fibers run: no failure, new connections use the new one", () =>
    Effect.gen(function*() {
      let current = "first-secret"
      let evaluations = 0
      const name = yield* role(current)
      const app = `${name}-app`
      const password = Effect.sync(() => {
        evaluations++
        return Redacted.make(current)
      }).pipe(Effect.delay("20 millis"))
      const pool = Context.get(
        yield* Layer.build(PgPool.layer(testConfig({
          user: name,
          password,
          applicationName: app,
          minConnections: 4,
          maxConnections: 4
        }))),
        PgPool.PgPool
      )
      // the four connects of the start shared one evaluation
      assert.strictEqual(evaluations, 1)
      const load = yield* startLoad(pool, 32, {
        statement: (index) => ({ text: "select current_user as who, $1::int as worker", params: [index] }),
        check: (rows) => rows[0]!.who === name
      })
      yield* eventually(load.outcomes, (o) => o.length >= 200)
      const old = (yield* backends(app)).map((row) => Number(row.pid))
      assert.strictEqual(old.length, 4)
      // rotate: the server takes only the new password from now on
      current = "second-secret"
      yield* adminQuery(`alter role ${name} password '${current}'`)
      const before = (yield* load.outcomes).length
      yield* eventually(load.outcomes, (o) => o.length >= before + 200)
      // the old connections keep working until they are replaced
      const stillOld = (yield* backends(app)).map((row) => Number(row.pid))
      assert.deepStrictEqual(stillOld.sort(), [...old].sort())
      yield* pool.drain
      const now = (yield* backends(app)).map((row) => Number(row.pid))
      assert.isTrue(now.every((pid) => !old.includes(pid)), `${JSON.stringify(old)} -> ${JSON.stringify(now)}`)
      const after = (yield* load.outcomes).length
      yield* eventually(load.outcomes, (o) => o.length >= after + 200)
      const outcomes = yield* load.stop
      const failures = outcomes.filter((o) => o.error !== undefined)
      assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
      // evaluated per new connection, not per checkout
      assert.isAtMost(evaluations, 1 + 4 + 1, `${evaluations} evaluations for ${outcomes.length} statements`)
      assert.isAtLeast(evaluations, 2)
    }))

  it.scopedLive("a failing password Effect: a ConnectionError with the cause, no secret in it", () =>
    Effect.gen(function*() {
      const name = yield* role("never-shown-secret")
      const exit = yield* Effect.exit(Layer.build(PgPool.layer(testConfig({
        user: name,
        password: Effect.fail(new Error("the vault is sealed")),
        connectTimeout: "1 second"
      }))))
      const error = failureOf(exit)
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "password Effect failed")
      // the Effect's own failure is in the cause chain
      const causes: Array<string> = []
      for (
        let e: unknown = error;
        e !== undefined && causes.length < 5;
        e = (e as { readonly cause?: unknown }).cause
      ) {
        causes.push(String(e))
      }
      assert.isTrue(causes.some((text) => text.includes("the vault is sealed")), JSON.stringify(causes))
      assert.notInclude(JSON.stringify(error), "never-shown-secret")
    }))

  it.scopedLive("a password Effect failing while the pool runs: logged with its cause as the credentials' failure, not as the host being down", () =>
    Effect.gen(function*() {
      const name = yield* role("still-the-secret")
      let sealed = false
      const warnings: Array<string> = []
      const logger = Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ cause, logLevel, message }) => {
          if (logLevel._tag !== "Warning") return
          const text = (Array.isArray(message) ? message : [message]).map(String).join(" ")
          warnings.push(`${text} ${Cause.isEmpty(cause) ? "" : Cause.pretty(cause, { renderErrorCause: true })}`)
        })
      )
      const pool = Context.get(
        yield* Layer.build(
          PgPool.layer(testConfig({
            user: name,
            password: Effect.suspend(() =>
              sealed ? Effect.fail(new Error("the vault is sealed")) : Effect.succeed(Redacted.make("still-the-secret"))
            ),
            maxConnections: 1,
            reconnect: Schedule.spaced("1 hour")
          })).pipe(Layer.provide(logger))
        ),
        PgPool.PgPool
      )
      yield* pool.query("select 1")
      sealed = true
      // the connection is replaced: the next statement needs a new one, whose credentials fail
      yield* pool.drain
      const failed = yield* Effect.flip(pool.query("select 1"))
      assert.strictEqual(failed._tag, "ConnectionError")
      assert.include(failed.message, "password Effect failed")
      // retried on the reconnect Schedule only, meanwhile the statements fail at once, saying what happened
      const stranded = yield* Effect.flip(pool.query("select 1"))
      assert.include(stranded.message, "not tried")
      assert.include(stranded.message, "could not get their credentials")
      assert.include(stranded.message, "password Effect failed")
      assert.notInclude(stranded.message, "is down")
      // stats: no connect goes to the host until the Schedule asks again, so it is not up
      const [host] = (yield* pool.stats).hosts
      assert.deepStrictEqual([host!.up, host!.size], [false, 0])
      const logged = yield* eventually(
        Effect.sync(() => warnings.filter((line) => line.includes("password Effect failed"))),
        (lines) => lines.length > 0
      )
      assert.include(logged[0], "the vault is sealed", "the log shows the Effect's own failure")
      assert.notInclude(logged[0], "is down")
      assert.notInclude(warnings.join("\n"), "still-the-secret")
    }))

  it.scopedLive("user and password as Effects through layerConfig: a new role for each lease, under 32 fibers", () =>
    Effect.gen(function*() {
      const first = yield* role("lease-one")
      const second = yield* role("lease-two")
      let lease = { user: first, password: "lease-one" }
      let evaluations = 0
      const app = `${first}-lease`
      const server = testServer()
      const pool = Context.get(
        yield* Layer.build(PgPool.layerConfig({
          host: Config.succeed(server.host),
          port: Config.succeed(server.port),
          database: Config.succeed(testDatabase()),
          // Effects that are not Configs: run for each new connection, not read once
          user: Effect.sync(() => lease.user),
          password: Effect.sync(() => {
            evaluations++
            return Redacted.make(lease.password)
          }).pipe(Effect.delay("20 millis")),
          applicationName: Config.succeed(app),
          minConnections: Config.succeed(4),
          maxConnections: Config.succeed(4)
        })),
        PgPool.PgPool
      )
      assert.strictEqual(evaluations, 1)
      let asSecond = 0
      const load = yield* startLoad(pool, 32, {
        statement: (index) => ({ text: "select current_user as who, $1::int as worker", params: [index] }),
        check: (rows) => {
          if (rows[0]!.who === second) asSecond++
          return rows[0]!.who === first || rows[0]!.who === second
        }
      })
      yield* eventually(load.outcomes, (o) => o.length >= 200)
      const users = Effect.map(
        adminQuery(
          "select distinct usename from pg_stat_activity where datname = $1 and application_name = $2",
          [testDatabase(), app]
        ),
        (rows) => rows.map((row) => String(row.usename))
      )
      assert.deepStrictEqual(yield* users, [first])
      // the next lease: another role; connections opened from now on log in as it
      lease = { user: second, password: "lease-two" }
      yield* pool.drain
      // every connection now is one opened after the drain's call (reopened ones may still be connecting)
      assert.deepStrictEqual(yield* eventually(users, (names) => names.length > 0), [second])
      const before = (yield* load.outcomes).length
      yield* eventually(load.outcomes, (o) => o.length >= before + 200)
      const outcomes = yield* load.stop
      const failures = outcomes.filter((o) => o.error !== undefined)
      assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
      assert.isAbove(asSecond, 100)
      assert.isAtMost(evaluations, 1 + 4 + 1, `${evaluations} evaluations for ${outcomes.length} statements`)
    }))

  it.live("a user Effect needs the database named; a bad user value is a ConnectionError naming the user Effect", () =>
    Effect.gen(function*() {
      const server = testServer()
      const missing = failureOf(
        yield* Effect.exit(
          Layer.build(PgPool.layer({ host: server.host, port: server.port, user: Effect.succeed("x") }))
        )
      )
      assert.strictEqual(missing._tag, "ConfigError")
      assert.include(String(missing), "database must be given when user is an Effect")
      const bad = failureOf(
        yield* Effect.exit(Layer.build(PgPool.layer({
          ...server,
          user: Effect.succeed(""),
          connectTimeout: "1 second"
        })))
      )
      assert.strictEqual(bad._tag, "ConnectionError")
      assert.include(bad.message, "the user Effect failed")
      const thrown = failureOf(
        yield* Effect.exit(Layer.build(PgPool.layer({
          ...server,
          user: Effect.die(new Error("no lease")),
          connectTimeout: "1 second"
        })))
      )
      assert.strictEqual(thrown._tag, "ConnectionError")
      assert.include(thrown.message, "the user Effect failed")
    }).pipe(Effect.scoped))
})
