/**
 * Server-side limits and crashes are transient (issue 15, point 4), on a private server with
 * `max_connections` 10 (and no reserved slots): the server full because of another client (SQLSTATE 53300),
 * the crash of one backend (`kill -9`: the postmaster resets every connection and is briefly in recovery,
 * 57P03), and a restart while queries run, counted through a proxy. In each: `ConnectionError` (with the code
 * when the server sent one), connects on the reconnect Schedule, the pool keeps serving on the connections it
 * has, and recovers by itself; no defect, no unhandled error, nothing leaked.
 *
 * One server for the file; each test has its own pool, its own proxy and its own `application_name`. Waiting
 * for a condition is polling with a bound; the only sleeps pace the load or keep a fault on for a measured
 * time. The clocks are live.
 */
import { assert, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Either, Fiber, Layer, Redacted, Ref, Schedule } from "effect"
import pg from "pg"
import type * as PgPool from "../src/PgPool.js"
import type { ConnectionError } from "../src/PgPoolError.js"
import { failureOf, now, timedExit } from "./support/exits.js"
import { poll, startLoad, workersWithSuccessAfter } from "./support/load.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Proxy from "./support/proxy.js"
import * as PrivateServer from "./support/server.js"

class Server extends Context.Tag("test/serverLimits/Server")<Server, PrivateServer.PrivateServer>() {}

const maxServerConnections = 10

const ServerLayer = Effect.gen(function*() {
  return yield* PrivateServer.make({
    settings: {
      max_connections: maxServerConnections,
      // every client here is the superuser postgres: no slot is kept back from it
      superuser_reserved_connections: 0,
      reserved_connections: 0,
      lc_messages: "C"
    }
  })
})

// ---------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------

/** A pool of `server` through a counting proxy, with the reconnect Schedule `spaced(interval)`. */
const proxiedPool = (
  server: PrivateServer.PrivateServer,
  applicationName: string,
  interval: number,
  maxConnections: number
) =>
  Effect.gen(function*() {
    const proxy = yield* Proxy.make({ target: { host: server.host, port: server.port } })
    const pool = yield* PrivateServer.makePool(server.config({
      host: proxy.host,
      port: proxy.port,
      applicationName,
      maxConnections,
      acquireTimeout: "20 seconds",
      connectTimeout: "2 seconds",
      reconnect: Schedule.spaced(`${interval} millis`)
    }))
    return { proxy, pool }
  })

/** Nothing leaked: the pool at rest, and the server's backends of `applicationName` are its connections. */
const atRest = (
  server: PrivateServer.PrivateServer,
  pool: PgPool.PgPool,
  applicationName: string,
  also: (rows: ReadonlyArray<PrivateServer.Backend>) => boolean = () => true
) =>
  Effect.gen(function*() {
    const stats = (yield* poll("at rest", pool.stats, (s) => s.inUse === 0 && s.waiting === 0, 5_000)).value
    yield* poll(
      `the server's backends of ${applicationName}`,
      server.backends(applicationName),
      (rows) => rows.length === stats.size && also(rows),
      5_000
    )
    return stats
  })

/**
 * Serves 40 statements on the two connections `pool` holds, connecting nothing; then, with both held, a third
 * caller's statement (which needs a new connection): its exit and how long it took.
 */
const servesOnTwoThenNeedsAThird = (pool: PgPool.PgPool, proxy: Proxy.TcpProxy) =>
  Effect.gen(function*() {
    const proxied = proxy.connections()
    const served = yield* Effect.all(
      Array.from({ length: 40 }, (_, i) => pool.query("select $1::int as i", [i])),
      { concurrency: 2 }
    )
    assert.deepStrictEqual(served.map((rows) => rows[0]!.i), Array.from({ length: 40 }, (_, i) => i))
    assert.strictEqual(proxy.connections(), proxied)
    const release = yield* Deferred.make<void>()
    const holding = yield* Ref.make(0)
    const both = yield* Deferred.make<void>()
    const hold = pool.withConnection(Effect.gen(function*() {
      yield* pool.query("select 1")
      if ((yield* Ref.updateAndGet(holding, (k) => k + 1)) === 2) yield* Deferred.succeed(both, undefined)
      yield* Deferred.await(release)
    }))
    const holders = yield* Effect.fork(Effect.all([hold, hold], { concurrency: "unbounded" }))
    yield* Deferred.await(both)
    const third = yield* timedExit(pool.query("select 1 as one"))
    yield* Deferred.succeed(release, undefined)
    yield* Fiber.join(holders)
    return third
  })

/** `workers` on `pool` for `ms`: their outcomes, how long it took, and the connects the proxy saw meanwhile. */
const loadWindow = (pool: PgPool.PgPool, proxy: Proxy.TcpProxy, workers: number, ms: number) =>
  Effect.gen(function*() {
    const before = proxy.connections()
    const windowBegan = yield* now
    const load = yield* startLoad(pool, workers)
    yield* Effect.sleep(`${ms} millis`)
    const outcomes = yield* load.stop
    const windowMillis = (yield* now) - windowBegan
    return { outcomes, windowMillis, attempts: proxy.connections() - before, times: proxy.acceptTimes().slice(before) }
  })

const countBy = <A>(list: ReadonlyArray<A>, key: (a: A) => string) => {
  const counts: Record<string, number> = {}
  for (const a of list) counts[key(a)] = (counts[key(a)] ?? 0) + 1
  return counts
}

/** `n` checkouts of `pool` held at the same time (each runs `select pg_backend_pid()`), bounded by `ms`. */
const holdTogether = (pool: PgPool.PgPool, n: number, ms: number) =>
  Effect.gen(function*() {
    const held = yield* Ref.make(0)
    const all = yield* Deferred.make<void>()
    const hold = pool.withConnection(Effect.gen(function*() {
      const rows = yield* pool.query("select pg_backend_pid() as pid")
      if ((yield* Ref.updateAndGet(held, (k) => k + 1)) === n) yield* Deferred.succeed(all, undefined)
      yield* Deferred.await(all)
      return Number(rows[0]!.pid)
    }))
    return yield* Effect.all(Array.from({ length: n }, () => hold), { concurrency: "unbounded" }).pipe(
      Effect.timeoutFail({ duration: ms, onTimeout: () => `${n} connections were not held at once within ${ms} ms` })
    )
  })

/** Raw node-postgres clients of "another application", closed when the Scope closes. */
const otherClient = (server: PrivateServer.PrivateServer) =>
  Effect.gen(function*() {
    const clients: Array<pg.Client> = []
    yield* Effect.addFinalizer(() =>
      Effect.promise(() => Promise.allSettled(clients.splice(0).map((client) => client.end())))
    )
    /** Connects one more client; fails with the server's error (its SQLSTATE in `code`). */
    const connect = Effect.tryPromise({
      try: async () => {
        const client = new pg.Client({
          connectionString: Redacted.value(server.url()),
          application_name: "other-client"
        })
        client.on("error", () => {})
        await client.connect()
        clients.push(client)
        return client
      },
      catch: (error) => error as { readonly code?: string; readonly message: string }
    })
    /** Connects clients until the server refuses one; returns the refusal. */
    const fill = Effect.gen(function*() {
      for (let i = 0; i < 50; i++) {
        const result = yield* Effect.either(connect)
        if (Either.isLeft(result)) return result.left
      }
      return assert.fail("the server took 50 more connections")
    })
    const query = (sql: string) =>
      Effect.promise(() => clients[0]!.query(sql)).pipe(Effect.map((result) => result.rows))
    const disconnect = Effect.promise(() => Promise.allSettled(clients.splice(0).map((client) => client.end())))
    return { connect, fill, query, disconnect, count: () => clients.length }
  })

// ---------------------------------------------------------------------------------------------------------

layer(Layer.scoped(Server, ServerLayer), { excludeTestServices: true, timeout: "60 seconds" })(
  "PgPool under server-side limits and crashes",
  (it) => {
    it.effect("max_connections reached by another client: the pool serves on what it has, connects follow the Schedule with 53300, and it grows again once the other client leaves", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const errors = yield* watchProcessErrors
        const app = "limits-full"
        const interval = 500
        const { pool, proxy } = yield* proxiedPool(server, app, interval, 6)
        // two connections open
        yield* holdTogether(pool, 2, 5_000)
        assert.strictEqual((yield* pool.stats).size, 2)

        // the fault: another application takes every remaining slot; the server refuses the next with 53300
        const other = yield* otherClient(server)
        const refusal = yield* other.fill
        assert.strictEqual(refusal.code, "53300", refusal.message)
        assert.strictEqual(other.count(), maxServerConnections - 2)
        const activity = yield* other.query(
          "select count(*)::int as n from pg_stat_activity where backend_type = 'client backend'"
        )
        assert.strictEqual(activity[0]!.n, maxServerConnections)

        // the pool keeps serving on its two connections, connecting nothing; a caller that needs a third
        // connection fails promptly with the server's 53300
        const needsMore = yield* servesOnTwoThenNeedsAThird(pool, proxy)
        const full = failureOf(needsMore.exit)
        assert.strictEqual(full._tag, "ConnectionError", full.message)
        assert.strictEqual((full as ConnectionError).code, "53300", full.message)
        assert.isBelow(needsMore.millis, 1_000)

        // under load that wants more connections than it has (4 workers on 2 connections) it goes on serving
        // for 2 s, and its connect attempts (the probe's) follow the Schedule
        const { attempts, outcomes, times, windowMillis } = yield* loadWindow(pool, proxy, 4, 2_000)
        const gaps = times.slice(1).map((t, i) => t - times[i]!)
        const described = JSON.stringify({
          outcomes: countBy(outcomes, (o) => o.error ?? "ok"),
          failures: outcomes.filter((o) => o.error !== undefined).slice(0, 5),
          attempts,
          times,
          windowMillis: Math.round(windowMillis),
          stats: yield* pool.stats
        })
        yield* Effect.logInfo(`${app}: ${described}`)
        assert.isTrue(outcomes.every((o) => o.error === undefined), described)
        assert.isAtLeast(outcomes.length, 100, described)
        assert.isAtMost(attempts, Math.ceil(windowMillis / interval) + 1, described)
        assert.isTrue(gaps.every((gap) => gap >= interval - 50), described)
        assert.strictEqual((yield* pool.stats).size, 2)

        // a cold pool on the full server: the first caller gets the 53300, the next ones fail at once, naming
        // the host, the attempts and the code; its connects follow the Schedule too
        const coldProxy = yield* Proxy.make({ target: { host: server.host, port: server.port } })
        const cold = yield* PrivateServer.makePool(server.config({
          host: coldProxy.host,
          port: coldProxy.port,
          applicationName: `${app}-cold`,
          lazy: true,
          acquireTimeout: "20 seconds",
          reconnect: Schedule.spaced(`${interval} millis`)
        }))
        const coldBegan = yield* now
        let coldCalls = 0
        let slowest = 0
        let lastCold: ConnectionError | undefined
        const caller = Effect.gen(function*() {
          while ((yield* now) - coldBegan < 1_500) {
            const { exit, millis } = yield* timedExit(cold.query("select 1"))
            const error = failureOf(exit)
            assert.strictEqual(error._tag, "ConnectionError", error.message)
            lastCold = error as ConnectionError
            coldCalls++
            slowest = Math.max(slowest, millis)
            yield* Effect.sleep("10 millis")
          }
        })
        yield* Effect.all(Array.from({ length: 10 }, () => caller), { concurrency: "unbounded", discard: true })
        const coldMillis = (yield* now) - coldBegan
        const coldAttempts = coldProxy.connections()
        const coldDescribed = JSON.stringify({
          coldCalls,
          slowest,
          coldAttempts,
          times: coldProxy.acceptTimes(),
          last: lastCold?.message,
          code: lastCold?.code,
          attempts: lastCold?.attempts
        })
        yield* Effect.logInfo(`${app}-cold: ${coldDescribed}`)
        assert.isAtLeast(coldCalls, 500, coldDescribed)
        assert.isBelow(slowest, 1_000, coldDescribed)
        assert.include(lastCold!.message, `${coldProxy.host}:${coldProxy.port} is down`, coldDescribed)
        assert.strictEqual(lastCold!.code, "53300", coldDescribed)
        assert.isAtLeast(lastCold!.attempts ?? 0, 1, coldDescribed)
        assert.isAtMost(coldAttempts, Math.ceil(coldMillis / interval) + 2, coldDescribed)

        // the other application leaves: within about one interval both pools serve again, and the first one
        // grows to six connections, without a restart of anything
        yield* other.disconnect
        const released = yield* now
        const grown = yield* poll("the pool grows to six connections", holdTogether(pool, 6, 3_000), () => true, 5_000)
        assert.strictEqual(new Set(grown.value).size, 6)
        assert.isBelow((yield* now) - released, interval + 2_000)
        const grownAfter = (yield* now) - released
        const coldBack = yield* poll("the cold pool serves", cold.query("select 1 as one"), () => true, 5_000)
        assert.deepStrictEqual(coldBack.value, [{ one: 1 }])
        const coldBackAfter = (yield* now) - released
        assert.isBelow(coldBackAfter, interval + 2_500)
        yield* Effect.logInfo(
          `${app}: grown to 6 connections ${
            Math.round(grownAfter)
          } ms after the other client left, the cold pool served after ${Math.round(coldBackAfter)} ms`
        )

        // nothing leaked: at rest, and the server's backends are the pool's connections
        yield* atRest(server, pool, app)
        yield* atRest(server, cold, `${app}-cold`)
        assert.deepStrictEqual(errors.describe(), [])
      }).pipe(Effect.scoped))

    it.effect("kill -9 of one backend: every connection is reset and the server is briefly in recovery; the pool recovers by itself", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const errors = yield* watchProcessErrors
        const app = "limits-kill"
        const workers = 4
        const pool = yield* PrivateServer.makePool(server.config({
          applicationName: app,
          maxConnections: workers,
          acquireTimeout: "20 seconds",
          connectTimeout: "2 seconds",
          reconnect: Schedule.spaced("200 millis")
        }))
        const load = yield* startLoad(pool, workers)
        yield* poll(
          "every worker is served",
          load.outcomes,
          (o) => workersWithSuccessAfter(o, 0).size === workers,
          10_000
        )
        const old = (yield* server.backends(app)).map((row) => row.pid)
        assert.isAtLeast(old.length, 1)
        const logLines = server.embedded.logs().length

        // the fault: one backend of the pool is killed; the postmaster resets every connection and recovers
        const killedAt = yield* now
        process.kill(old[0]!, "SIGKILL")
        // every worker gets statements answered again that it issued after the kill
        const back = yield* poll(
          "every worker is served again",
          load.outcomes,
          (o) => workersWithSuccessAfter(o, killedAt).size === workers,
          15_000
        )
        const outcomes = yield* load.stop
        const failures = outcomes.filter((o) => o.error !== undefined)
        const after = outcomes.filter((o) => o.startedAt > killedAt)
        const firstSuccess = Math.min(...after.filter((o) => o.error === undefined).map((o) => o.endedAt))
        const described = JSON.stringify({
          outcomes: countBy(outcomes, (o) => o.error ?? "ok"),
          codes: countBy(failures, (o) => String(o.code)),
          messages: [...new Set(failures.map((o) => o.message))].slice(0, 8),
          recoveredAfter: Math.round(back.millis),
          firstSuccessAfter: Math.round(firstSuccess - killedAt),
          slowestFailure: Math.round(Math.max(0, ...failures.map((o) => o.endedAt - o.startedAt)))
        })
        yield* Effect.logInfo(`${app}: ${described}`)

        // the fault happened: the server logs the crash, and none of the old backends is left
        const logged = server.embedded.logs().slice(logLines).join("\n")
        assert.match(logged, /terminated by signal 9/, logged)
        assert.match(logged, /all server processes terminated; reinitializing/, logged)
        const now_ = yield* poll("new backends", server.backends(app), (rows) => rows.length > 0, 5_000)
        for (const row of now_.value) assert.notInclude(old, row.pid, `${JSON.stringify(now_.value)} vs ${old}`)

        // meanwhile only ConnectionErrors (with the server's code when it sent one), each promptly; no defect
        assert.isAtLeast(failures.length, 1, described)
        assert.isTrue(failures.every((o) => o.error === "ConnectionError"), described)
        assert.isTrue(
          failures.every((o) => o.code === undefined || /^(57P0[123]|08\d\d\d)$/.test(o.code)),
          described
        )
        assert.isTrue(failures.every((o) => o.endedAt - o.startedAt < 2_000), described)
        assert.isBelow(firstSuccess - killedAt, 5_000, described)

        // nothing leaked
        const stats = yield* atRest(server, pool, app, (rows) => rows.every((row) => !old.includes(row.pid)))
        assert.isAtLeast(stats.closedByReason.broken, 1)
        assert.deepStrictEqual(errors.describe(), [])
      }).pipe(Effect.scoped))

    it.effect("restart of the server while queries run, through a proxy: connects follow the Schedule, errors are ConnectionErrors, the pool recovers", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const errors = yield* watchProcessErrors
        const app = "limits-restart"
        const interval = 300
        const workers = 8
        const { pool, proxy } = yield* proxiedPool(server, app, interval, 4)
        const startTime = yield* server.startTime
        const load = yield* startLoad(pool, workers)
        yield* poll(
          "every worker is served",
          load.outcomes,
          (o) => workersWithSuccessAfter(o, 0).size === workers,
          10_000
        )

        // the fault: the server stops (fast shutdown), stays down 1.5 s, starts again
        const before = proxy.connections()
        const stopBegan = yield* now
        yield* server.stop
        const stopped = yield* now
        yield* Effect.sleep("1500 millis")
        const startBegan = yield* now
        const attempts = proxy.connections() - before
        const times = proxy.acceptTimes().slice(before)
        yield* server.start
        const started = yield* now
        assert.isAbove((yield* server.startTime).getTime(), startTime.getTime(), "the server really restarted")

        const back = yield* poll(
          "every worker is served again",
          load.outcomes,
          (o) => workersWithSuccessAfter(o, started).size === workers,
          10_000
        )
        const outcomes = yield* load.stop
        const failures = outcomes.filter((o) => o.error !== undefined)
        const firstSuccess = Math.min(
          ...outcomes.filter((o) => o.error === undefined && o.startedAt > started).map((o) => o.endedAt)
        )
        const whileDown = outcomes.filter((o) => o.startedAt > stopped && o.endedAt < startBegan)
        const downMillis = startBegan - stopBegan
        const described = JSON.stringify({
          outcomes: countBy(outcomes, (o) => o.error ?? "ok"),
          whileDown: whileDown.length,
          codes: countBy(failures, (o) => String(o.code)),
          messages: [...new Set(failures.map((o) => o.message))].slice(0, 6),
          attempts,
          times,
          downMillis: Math.round(downMillis),
          recoveredAfter: Math.round(back.millis),
          firstSuccessAfter: Math.round(firstSuccess - started)
        })
        yield* Effect.logInfo(`${app}: ${described}`)

        // ConnectionErrors only, fast; none after the pool was back
        assert.isAtLeast(whileDown.length, 100, described)
        assert.isTrue(failures.every((o) => o.error === "ConnectionError"), described)
        assert.isTrue(
          whileDown.every((o) => o.error === "ConnectionError" && o.endedAt - o.startedAt < 1_000),
          described
        )
        assert.isTrue(failures.every((o) => o.startedAt < firstSuccess), described)
        // connects while it was down: on the Schedule (the first caller's, then one probe per interval)
        assert.isAtMost(attempts, Math.ceil(downMillis / interval) + 2, described)
        // back within about one interval
        assert.isBelow(firstSuccess - started, interval + 1_000, described)

        // nothing leaked
        yield* atRest(server, pool, app)
        assert.deepStrictEqual(errors.describe(), [])
      }).pipe(Effect.scoped))

    it.effect("a server shutting down (smart shutdown, 57P03 for new connections): the pool serves on the connections it has; after the restart it recovers", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const errors = yield* watchProcessErrors
        const app = "limits-shutting-down"
        const interval = 300
        const { pool, proxy } = yield* proxiedPool(server, app, interval, 4)
        yield* holdTogether(pool, 2, 5_000)
        const startTime = yield* server.startTime

        // the fault: a smart shutdown (SIGTERM to the postmaster): sessions go on, new connections are refused
        const postmaster = server.embedded.postmasterPid()
        assert.isDefined(postmaster)
        process.kill(postmaster!, "SIGTERM")
        const other = yield* otherClient(server)
        const refused = yield* poll("new connections are refused", Effect.flip(other.connect), () => true, 5_000)
        assert.strictEqual(refused.value.code, "57P03", refused.value.message)

        // the pool serves on its two connections, connecting nothing; a caller that needs a third connection
        // fails promptly with the server's 57P03
        const third = yield* servesOnTwoThenNeedsAThird(pool, proxy)
        const error = failureOf(third.exit) as ConnectionError
        assert.strictEqual(error._tag, "ConnectionError", error.message)
        assert.strictEqual(error.code, "57P03", error.message)
        assert.isBelow(third.millis, 1_000)

        // under load wanting more connections (4 workers on 2), everything is served; the connects follow the Schedule
        const { attempts, outcomes, times, windowMillis } = yield* loadWindow(pool, proxy, 4, 1_500)
        const described = JSON.stringify({
          outcomes: countBy(outcomes, (o) => o.error ?? "ok"),
          failures: outcomes.filter((o) => o.error !== undefined).slice(0, 5),
          attempts,
          times,
          windowMillis: Math.round(windowMillis)
        })
        yield* Effect.logInfo(`${app}: ${described}`)
        assert.isAtLeast(outcomes.length, 100, described)
        assert.isTrue(outcomes.every((o) => o.error === undefined), described)
        assert.isAtMost(attempts, Math.ceil(windowMillis / interval) + 1, described)

        // the shutdown completes (fast shutdown now) and the server starts again: the pool recovers by itself
        yield* server.stop
        yield* server.start
        const started = yield* now
        assert.isAbove((yield* server.startTime).getTime(), startTime.getTime(), "the server really restarted")
        const back = yield* poll("the pool holds 4 connections again", holdTogether(pool, 4, 3_000), () => true, 5_000)
        assert.strictEqual(new Set(back.value).size, 4)
        assert.isBelow((yield* now) - started, interval + 2_000)

        // nothing leaked
        yield* atRest(server, pool, app)
        assert.deepStrictEqual(errors.describe(), [])
      }).pipe(Effect.scoped))
  }
)
