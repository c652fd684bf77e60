import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Either, Exit, Redacted, Scope } from "effect"
import * as fs from "node:fs"
import * as Replication from "./replication.js"
import * as PrivateServer from "./server.js"

/** Polls `effect` (failures count as "not yet") until `done` holds, for up to `ms` of real time. */
const eventually = <A, E>(effect: Effect.Effect<A, E>, done: (a: A) => boolean, ms = 10_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + ms
    for (;;) {
      const result = yield* Effect.either(effect)
      if (Either.isRight(result) && done(result.right)) return result.right
      if (Date.now() >= deadline) {
        return yield* Effect.fail(`not done after ${ms} ms; last: ${JSON.stringify(result)}`)
      }
      yield* Effect.sleep("20 millis")
    }
  })

const alive = (pid: number) => {
  try {
    process.kill(pid, 0) // signal 0: only asks whether the process exists
    return true
  } catch {
    return false
  }
}

const shared = layer(Replication.layer(), { excludeTestServices: true, timeout: "60 seconds" })

shared("Replication (one shared pair)", (it) => {
  it.effect("streams: a row inserted on the primary appears on the standby", () =>
    Effect.gen(function*() {
      const { primary, standby, waitForReplay } = yield* Replication.ReplicationPair
      const streaming = yield* primary.query("select application_name, state from pg_stat_replication")
      assert.deepStrictEqual(streaming, [{ application_name: "standby", state: "streaming" }])

      yield* primary.query("create table streamed (id int primary key, note text)")
      yield* primary.query("insert into streamed values (1, 'hello')")
      // no waitForReplay here: poll the standby itself
      const rows = yield* eventually(
        standby.query("select id, note from streamed order by id"),
        (rows) => rows.length === 1
      )
      assert.deepStrictEqual(rows, [{ id: 1, note: "hello" }])

      // waitForReplay: once it returns, the standby has everything, even a commit with synchronous_commit off
      yield* primary.query("insert into streamed values (2, 'world')")
      yield* waitForReplay()
      assert.deepStrictEqual(yield* standby.query("select id from streamed order by id"), [{ id: 1 }, { id: 2 }])
    }))

  it.effect("the standby is read-only; the primary is not", () =>
    Effect.gen(function*() {
      const { primary, standby } = yield* Replication.ReplicationPair
      assert.isTrue(yield* standby.inRecovery)
      assert.isFalse(yield* primary.inRecovery)
      assert.deepStrictEqual(
        yield* standby.query("select pg_is_in_recovery() as r, current_setting('transaction_read_only') as ro"),
        [{ r: true, ro: "on" }]
      )
      const failed = yield* Effect.flip(standby.query("create table nope (id int)"))
      assert.strictEqual(failed._tag, "ReplicationError")
      assert.strictEqual(failed.code, "25006") // read_only_sql_transaction
      const written = yield* primary.query("create table yes (id int); insert into yes values (1); select id from yes")
      assert.deepStrictEqual(written, [{ id: 1 }])
    }))

  it.effect("hosts, config and url point at the two servers", () =>
    Effect.gen(function*() {
      const pair = yield* Replication.ReplicationPair
      assert.deepStrictEqual(pair.hosts, [
        { host: "127.0.0.1", port: pair.primary.port },
        { host: "127.0.0.1", port: pair.standby.port }
      ])
      assert.notStrictEqual(pair.primary.port, pair.standby.port)
      const config = pair.config({ maxConnections: 2 })
      assert.deepStrictEqual(config.hosts, pair.hosts)
      assert.strictEqual(config.user, "postgres")
      assert.strictEqual(config.database, "postgres")
      assert.strictEqual(config.applicationName, Replication.applicationName)
      assert.strictEqual(config.maxConnections, 2)
      assert.isTrue(Redacted.isRedacted(config.password))
      assert.strictEqual(Redacted.value(config.password as Redacted.Redacted), Redacted.value(pair.password))
      assert.notInclude(String(pair.standby.url()), Redacted.value(pair.password))

      // a (single-host) pool on each URL lands on the right server
      const onPrimary = yield* PrivateServer.makePool({ url: pair.primary.url(), maxConnections: 1 })
      const onStandby = yield* PrivateServer.makePool({ url: pair.standby.url(), maxConnections: 1 })
      assert.deepStrictEqual(yield* onPrimary.query("select pg_is_in_recovery() as r"), [{ r: false }])
      assert.deepStrictEqual(yield* onStandby.query("select pg_is_in_recovery() as r"), [{ r: true }])
    }).pipe(Effect.scoped))

  it.effect("the standby stops and starts again, and catches up with what it missed", () =>
    Effect.gen(function*() {
      const { primary, standby, waitForReplay, waitForStreaming } = yield* Replication.ReplicationPair
      yield* primary.query("create table missed (id int)")
      const pidBefore = standby.pid()
      assert.isDefined(pidBefore)
      yield* standby.stop
      assert.isFalse(standby.isRunning())
      assert.isUndefined(standby.pid())
      assert.isFalse(alive(pidBefore!))
      yield* standby.stop // stopping a stopped server does nothing
      assert.isTrue(Either.isLeft(yield* Effect.either(standby.query("select 1"))))

      yield* primary.query("insert into missed values (1)")
      yield* standby.start
      assert.isTrue(standby.isRunning())
      assert.notStrictEqual(standby.pid(), pidBefore)
      yield* standby.start // starting a running server does nothing
      yield* waitForStreaming()
      yield* waitForReplay()
      assert.deepStrictEqual(yield* standby.query("select id from missed"), [{ id: 1 }])
      assert.isTrue(yield* standby.inRecovery)
    }))

  it.effect("the primary restarts; the standby reconnects and streams again", () =>
    Effect.gen(function*() {
      const { primary, standby, waitForReplay, waitForStreaming } = yield* Replication.ReplicationPair
      const pidBefore = primary.pid()
      assert.isDefined(pidBefore)
      yield* primary.restart
      assert.isTrue(primary.isRunning())
      assert.notStrictEqual(primary.pid(), pidBefore)
      assert.isFalse(alive(pidBefore!))
      // while the primary was down, the standby kept serving reads
      assert.isTrue(yield* standby.inRecovery)
      yield* waitForStreaming()
      yield* primary.query("create table after_restart (id int); insert into after_restart values (7)")
      yield* waitForReplay()
      assert.deepStrictEqual(yield* standby.query("select id from after_restart"), [{ id: 7 }])
    }))
})

describe("Replication (a pair of its own)", () => {
  it.live("failover: stop the primary, promote the standby, it takes writes; closing the Scope removes all", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const pair = yield* Scope.extend(Replication.make(), scope)
      const { primary, standby } = pair
      const pids = [primary.pid()!, standby.pid()!]
      const dirs = [primary.dataDir, standby.dataDir]
      assert.isTrue(pids.every(alive))
      assert.isTrue(dirs.every((dir) => fs.existsSync(dir)))

      yield* primary.query("create table before_failover (id int); insert into before_failover values (1)")
      yield* pair.waitForReplay()

      yield* primary.stop
      assert.isFalse(primary.isRunning())
      assert.isFalse(alive(pids[0]!))
      // the standby still serves reads, and still refuses writes
      assert.deepStrictEqual(yield* standby.query("select id from before_failover"), [{ id: 1 }])
      assert.strictEqual(
        (yield* Effect.flip(standby.query("insert into before_failover values (2)"))).code,
        "25006"
      )

      yield* pair.promote
      assert.isFalse(yield* standby.inRecovery)
      yield* pair.promote // promoting a promoted standby does nothing
      assert.deepStrictEqual(
        yield* standby.query("insert into before_failover values (2) returning id"),
        [{ id: 2 }]
      )
      assert.deepStrictEqual(yield* standby.query("select id from before_failover order by id"), [{ id: 1 }, {
        id: 2
      }])
      assert.strictEqual(standby.pid(), pids[1]) // promoted in place, not restarted

      // closing the Scope (here as a failed test would) stops the servers and deletes their data
      yield* Scope.close(scope, Exit.fail("the test failed"))
      assert.isFalse(standby.isRunning())
      assert.isFalse(pids.some(alive))
      assert.isFalse(dirs.some((dir) => fs.existsSync(dir)))
    }))

  it.live("failover is one call: the old primary is down, the new one takes writes", () =>
    Effect.gen(function*() {
      const pair = yield* Replication.make()
      yield* pair.failover
      assert.isFalse(pair.primary.isRunning())
      assert.isTrue(Either.isLeft(yield* Effect.either(pair.primary.query("select 1"))))
      const rows = yield* pair.standby.query("create table t (id int); insert into t values (3); select id from t")
      assert.deepStrictEqual(rows, [{ id: 3 }])
    }).pipe(Effect.scoped))
})
