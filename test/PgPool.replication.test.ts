/**
 * Several hosts on a real primary with a real streaming standby (issue 7): `targetSessionAttrs`, read
 * routing and its balancing, fallback to the primary, failover, and the retrying of a host that is down.
 *
 * Two replication pairs start in parallel once for the file: `Shared` for the tests that leave it intact
 * (some stop its standby and start it again), `Spare` for the failover test, which destroys it. Every test
 * builds its own pool with its own `applicationName`. Which server a statement ran on is checked from
 * inside, with `pg_is_in_recovery()` and `inet_server_port()`. Waiting for a condition is polling with a
 * bound; the clocks are live.
 */
import { assert, layer } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber, Layer, Option, Redacted, Ref, Schedule } from "effect"
import * as PgPool from "../src/PgPool.js"
import type { ConnectionError } from "../src/PgPoolError.js"
import * as Transaction from "../src/Transaction.js"
import { failureOf, now, timedExit, valueOf } from "./support/exits.js"
import { describeOutcomes, poll, startLoad } from "./support/load.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as Proxy from "./support/proxy.js"
import * as Replication from "./support/replication.js"

// ---------------------------------------------------------------------------------------------------------
// the servers
// ---------------------------------------------------------------------------------------------------------

/** Kept intact by every test (a test that stops its standby starts it again and waits for streaming). */
const Shared = Replication.ReplicationPair
/** For the failover test, which destroys it. */
class Spare extends Context.Tag("test/replication/Spare")<Spare, Replication.Replication>() {}

/** Both pairs start in parallel (`Layer.merge` builds its two sides concurrently): about 3 s for the two. */
const Pairs = Layer.merge(Replication.layer(), Layer.scoped(Spare, Replication.make({ standbyName: "spare" })))

// ---------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------

/** Where a statement ran, seen from inside the server. */
interface Where {
  readonly standby: boolean
  readonly port: number
}

const whereSql = "select pg_is_in_recovery() as standby, inet_server_port() as port"

const toWhere = (rows: ReadonlyArray<PgPool.Row>): Where => ({
  standby: rows[0]!.standby as boolean,
  port: Number(rows[0]!.port)
})

/** `PgPool.query` of where it ran. */
const where = Effect.map(PgPool.query(whereSql), toWhere)

/** The stats of the host on `port`. */
const hostOn = (stats: PgPool.PoolStats, port: number): PgPool.HostStats => {
  const host = stats.hosts.find((h) => h.port === port)
  return host ?? assert.fail(`no host with port ${port} in ${JSON.stringify(stats.hosts)}`)
}

/** Runs `body` on a pool of `config` (closed at the end). */
const onPool = <A, E, R>(config: PgPool.Config, body: Effect.Effect<A, E, R>) =>
  Effect.provide(body, PgPool.layer(config))

/** A pool built in the current Scope, as a context for `Effect.provide` (to use it between other steps). */
const buildPool = (config: PgPool.Config) => Layer.build(PgPool.layer(config))

const swap = <A>(list: ReadonlyArray<A>): ReadonlyArray<A> => [...list].reverse()

const count = <A>(list: ReadonlyArray<A>, predicate: (a: A) => boolean) => list.filter(predicate).length

/** Runs the standby's stop for the current test; the standby is started again (and streaming) at the end. */
const stoppedStandby = (pair: Replication.Replication) =>
  Effect.acquireRelease(
    pair.standby.stop,
    () => pair.standby.start.pipe(Effect.zipRight(pair.waitForStreaming()), Effect.orDie)
  )

// ---------------------------------------------------------------------------------------------------------

const pairs = layer(Pairs, { excludeTestServices: true, timeout: "60 seconds" })

pairs("PgPool on a primary and a streaming standby", (it) => {
  // ---------------------------------------------------------------------------------------------------
  // 1. targetSessionAttrs
  // ---------------------------------------------------------------------------------------------------

  it.effect("targetSessionAttrs: each value picks the right server, whichever host is listed first", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const primary = pair.primary.port
      const standby = pair.standby.port
      const orders = { "primary first": pair.hosts, "standby first": swap(pair.hosts) }
      for (const [order, hosts] of Object.entries(orders)) {
        const first = hosts[0]!.port
        const expected = {
          any: first,
          "read-write": primary,
          primary,
          "read-only": standby,
          standby,
          "prefer-standby": standby
        } as const
        for (const [attrs, port] of Object.entries(expected)) {
          const label = `${attrs}, ${order}`
          const config = pair.config({
            hosts,
            targetSessionAttrs: attrs as keyof typeof expected,
            maxConnections: 3,
            applicationName: "tsa"
          })
          const { seen, stats } = yield* onPool(
            config,
            Effect.gen(function*() {
              // three connections at once, each opened on its own: every one must be on the right server. Each is
              // held until all three are (a fixed sleep was too short for three connects on a loaded machine)
              const held = yield* Ref.make(0)
              const allHeld = yield* Deferred.make<void>()
              const hold = PgPool.withConnection(Effect.gen(function*() {
                const w = yield* where
                if ((yield* Ref.updateAndGet(held, (n) => n + 1)) === 3) yield* Deferred.succeed(allHeld, undefined)
                yield* Deferred.await(allHeld)
                return w
              }))
              const seen = yield* Effect.all([hold, hold, hold], { concurrency: "unbounded" }).pipe(
                Effect.timeout("10 seconds")
              )
              return { seen, stats: yield* PgPool.stats }
            })
          )
          for (const w of seen) assert.deepStrictEqual(w, { standby: port === standby, port }, label)
          const other = port === primary ? standby : primary
          assert.strictEqual(hostOn(stats, port).size, 3, `${label}: connections on the chosen host`)
          assert.strictEqual(hostOn(stats, other).size, 0, `${label}: connections on the other host`)
          assert.strictEqual(hostOn(stats, primary).role, "primary", label)
          assert.strictEqual(hostOn(stats, standby).role, "standby", label)
        }
      }
    }))

  it.effect("targetSessionAttrs in a multi-host URL (libpq form)", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const password = encodeURIComponent(Redacted.value(pair.password))
      const url = (attrs: string) =>
        Redacted.make(
          `postgresql://postgres:${password}@127.0.0.1:${pair.primary.port},127.0.0.1:${pair.standby.port}/postgres?target_session_attrs=${attrs}&application_name=tsa-url`
        )
      assert.deepStrictEqual(yield* onPool({ url: url("standby") }, where), { standby: true, port: pair.standby.port })
      assert.deepStrictEqual(yield* onPool({ url: url("read-write") }, where), {
        standby: false,
        port: pair.primary.port
      })
    }))

  it.effect("no targetSessionAttrs, standby listed first: writes go to the primary (read-write by default), reads to the standby", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const onPrimary: Where = { standby: false, port: pair.primary.port }
      const onStandby: Where = { standby: true, port: pair.standby.port }
      const standbyFirst = swap(pair.hosts)
      yield* onPool(
        pair.config({ hosts: standbyFirst, applicationName: "tsa-default" }),
        Effect.gen(function*() {
          yield* PgPool.query("create table default_rw (id int primary key)")
          const written = yield* PgPool.query(
            "insert into default_rw values (1) returning pg_is_in_recovery() as standby, inet_server_port() as port"
          )
          assert.deepStrictEqual(toWhere(written), onPrimary, "a write through PgPool.query")
          assert.deepStrictEqual(yield* where, onPrimary, "PgPool.query")
          assert.deepStrictEqual(
            yield* Transaction.withTransaction(
              Effect.zipLeft(where, PgPool.query("insert into default_rw values (2)"))
            ),
            onPrimary,
            "a write in a transaction"
          )
          assert.deepStrictEqual(yield* PgPool.readOnly(where), onStandby, "PgPool.readOnly")
          assert.deepStrictEqual(yield* Transaction.withTransaction(where, { readOnly: true }), onStandby)
          const stats = yield* PgPool.stats
          const s = hostOn(stats, pair.standby.port)
          assert.strictEqual(s.forReads, s.size, `no connection of ordinary work on the standby: ${JSON.stringify(s)}`)
        })
      )
      // readRouting "off" keeps libpq's default "any": the first host that answers, here the standby
      assert.deepStrictEqual(
        yield* onPool(
          pair.config({ hosts: standbyFirst, readRouting: "off", applicationName: "tsa-default-off" }),
          where
        ),
        onStandby
      )
      // with the primary unreachable (behind a proxy that resets every connection), writes fail fast with a
      // ConnectionError instead of reaching the standby
      const down = yield* Proxy.make({ target: { host: pair.primary.host, port: pair.primary.port }, mode: "reset" })
      const { exit, millis } = yield* timedExit(Effect.scoped(buildPool(pair.config({
        hosts: [pair.hosts[1]!, { host: down.host, port: down.port }],
        applicationName: "tsa-default-down"
      }))))
      const error = failureOf(exit)
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "target_session_attrs=read-write")
      assert.include(error.message, `127.0.0.1:${pair.standby.port} is a standby`)
      assert.isBelow(millis, 2_000, `failed after ${millis} ms`)
    }).pipe(Effect.scoped))

  it.effect("prefer-standby takes the primary when the standby is down; standby and read-only fail at once", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      yield* stoppedStandby(pair)
      for (const hosts of [pair.hosts, swap(pair.hosts)]) {
        const config = pair.config({ hosts, targetSessionAttrs: "prefer-standby", applicationName: "tsa-down" })
        assert.deepStrictEqual(yield* onPool(config, where), { standby: false, port: pair.primary.port })
        for (const attrs of ["standby", "read-only"] as const) {
          const { exit, millis } = yield* timedExit(
            Effect.scoped(buildPool(pair.config({ hosts, targetSessionAttrs: attrs, connectTimeout: "5 seconds" })))
          )
          const error = failureOf(exit)
          assert.strictEqual(error._tag, "ConnectionError")
          assert.include(error.message, `target_session_attrs=${attrs}`)
          assert.include(error.message, `127.0.0.1:${pair.primary.port} is a primary`)
          assert.isBelow(millis, 2_000, `${attrs} failed after ${millis} ms`)
        }
      }
    }).pipe(Effect.scoped))

  it.effect("read-only is not standby: a primary that is read-only by default is read-only (libpq semantics)", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      yield* pair.primary.query("create database ro_default")
      yield* pair.primary.query("alter database ro_default set default_transaction_read_only = on")
      yield* pair.waitForReplay()
      const config = (attrs: PgPool.Config["targetSessionAttrs"]) =>
        pair.config({ database: "ro_default", targetSessionAttrs: attrs, applicationName: "tsa-ro" })
      // primary first: the read-only primary fits read-only, but not standby
      assert.deepStrictEqual(yield* onPool(config("read-only"), where), { standby: false, port: pair.primary.port })
      assert.deepStrictEqual(yield* onPool(config("standby"), where), { standby: true, port: pair.standby.port })
      assert.deepStrictEqual(yield* onPool(config("primary"), where), { standby: false, port: pair.primary.port })
      // and no host is read-write
      const error = failureOf(yield* Effect.exit(Effect.scoped(buildPool(config("read-write")))))
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "target_session_attrs=read-write")
    }))

  // ---------------------------------------------------------------------------------------------------
  // 2. read routing
  // ---------------------------------------------------------------------------------------------------

  it.effect("read routing: read-only work runs on the standby, everything else on the primary; stats per host", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const onPrimary: Where = { standby: false, port: pair.primary.port }
      const onStandby: Where = { standby: true, port: pair.standby.port }
      yield* pair.primary.query("create table routed (id int primary key)")
      yield* pair.primary.query("insert into routed values (1)")
      yield* pair.waitForReplay()

      yield* onPool(
        pair.config({ maxConnections: 4, applicationName: "routing" }),
        Effect.gen(function*() {
          // statements
          assert.deepStrictEqual(yield* where, onPrimary, "PgPool.query")
          assert.deepStrictEqual(yield* PgPool.readOnly(where), onStandby, "PgPool.readOnly(PgPool.query)")
          // a write inside readOnly really reaches the standby, which refuses it
          const refused = failureOf(yield* Effect.exit(PgPool.readOnly(PgPool.query("insert into routed values (2)"))))
          assert.strictEqual(refused._tag, "QueryError")
          assert.strictEqual((refused as { code?: string }).code, "25006")

          // transactions
          const txWhere = Effect.zip(where, PgPool.query("select current_setting('transaction_read_only') as ro"))
          const [roTx, roSetting] = yield* Transaction.withTransaction(txWhere, { readOnly: true })
          assert.deepStrictEqual(roTx, onStandby, "withTransaction readOnly")
          assert.deepStrictEqual(roSetting, [{ ro: "on" }])
          const [rwTx] = yield* Transaction.withTransaction(
            Effect.zip(where, PgPool.query("insert into routed values (3)"))
          )
          assert.deepStrictEqual(rwTx, onPrimary, "withTransaction read-write")
          assert.deepStrictEqual(
            yield* PgPool.readOnly(Transaction.withTransaction(where)),
            onStandby,
            "withTransaction inside PgPool.readOnly"
          )
          assert.deepStrictEqual(
            yield* Transaction.withTransaction(where, { readOnly: false }),
            onPrimary,
            "withTransaction readOnly: false"
          )

          // pinned and scoped connections
          const pinned = yield* PgPool.readOnly(PgPool.withConnection(Effect.all([where, where, where])))
          assert.deepStrictEqual(pinned, [onStandby, onStandby, onStandby], "readOnly(withConnection)")
          assert.deepStrictEqual(yield* PgPool.withConnection(where), onPrimary, "withConnection")
          const scoped = yield* PgPool.readOnly(
            Effect.scoped(Effect.flatMap(PgPool.connection, (conn) => Effect.map(conn.query(whereSql), toWhere)))
          )
          assert.deepStrictEqual(scoped, onStandby, "readOnly(scoped(PgPool.connection))")
          const scopedPrimary = yield* Effect.scoped(
            Effect.flatMap(PgPool.connection, (conn) => Effect.map(conn.query(whereSql), toWhere))
          )
          assert.deepStrictEqual(scopedPrimary, onPrimary, "scoped(PgPool.connection)")

          // stats: hold one connection on each server and look
          const release = yield* Deferred.make<void>()
          const readHeld = yield* Deferred.make<Where>()
          const writeHeld = yield* Deferred.make<Where>()
          const hold = (held: Deferred.Deferred<Where>) =>
            PgPool.withConnection(Effect.zipRight(
              Effect.flatMap(where, (w) => Deferred.succeed(held, w)),
              Deferred.await(release)
            ))
          const holders = yield* Effect.fork(
            Effect.all([PgPool.readOnly(hold(readHeld)), hold(writeHeld)], { concurrency: "unbounded" })
          )
          assert.deepStrictEqual(yield* Deferred.await(readHeld).pipe(Effect.timeout("10 seconds")), onStandby)
          assert.deepStrictEqual(yield* Deferred.await(writeHeld).pipe(Effect.timeout("10 seconds")), onPrimary)
          const busy = yield* PgPool.stats
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(holders)
          const p = hostOn(busy, pair.primary.port)
          const s = hostOn(busy, pair.standby.port)
          assert.deepStrictEqual([p.role, p.up, p.inUse, p.forReads], ["primary", true, 1, 0], JSON.stringify(p))
          assert.deepStrictEqual([s.role, s.up, s.inUse], ["standby", true, 1], JSON.stringify(s))
          assert.isAtLeast(p.size, 1)
          assert.isAtLeast(s.size, 1)
          assert.strictEqual(s.forReads, s.size, "every connection to the standby serves reads")
          assert.strictEqual(busy.size, p.size + s.size, "the totals add the hosts up")
          assert.strictEqual(busy.inUse, 2)
          const after = yield* PgPool.stats
          assert.deepStrictEqual(after.hosts.map((h) => h.inUse), [0, 0])
          assert.deepStrictEqual(after.hosts.map((h) => h.idle), after.hosts.map((h) => h.size))
        })
      )
    }))

  it.effect("readRouting: \"off\" keeps read-only work with everything else", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const seen = yield* onPool(
        pair.config({ readRouting: "off", applicationName: "routing-off" }),
        Effect.all([PgPool.readOnly(where), Transaction.withTransaction(where, { readOnly: true })])
      )
      assert.deepStrictEqual(seen, [
        { standby: false, port: pair.primary.port },
        { standby: false, port: pair.primary.port }
      ])
    }))

  it.effect("reads are spread over two standby endpoints: round-robin, least-busy, random", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      // A second standby of this primary would cost a base backup of our own; two endpoints of the one standby
      // (two TCP proxies) are two standby hosts to the pool, each with its own read pool. Which endpoint a read
      // went through is told by the pool's stats: the host whose connections in use went up during the read.
      const target = { host: pair.standby.host, port: pair.standby.port }
      const proxies = yield* Effect.all([Proxy.make({ target }), Proxy.make({ target })])
      const endpoints = proxies.map((proxy) => proxy.port)
      const hosts = [pair.hosts[0]!, ...proxies.map((proxy) => ({ host: proxy.host, port: proxy.port }))]
      const config = (readBalancing: PgPool.Config["readBalancing"]) =>
        pair.config({ hosts, readBalancing, maxConnections: 4, applicationName: "spread" })
      const inUse = Effect.map(PgPool.stats, (stats) => endpoints.map((port) => hostOn(stats, port).inUse))
      /** A read-only statement, then `andThen` on the same connection; returns the endpoint it went through. */
      const readThen = (andThen: (endpoint: number) => Effect.Effect<void>) =>
        Effect.gen(function*() {
          const before = yield* inUse
          return yield* PgPool.readOnly(PgPool.withConnection(Effect.gen(function*() {
            assert.deepStrictEqual(yield* where, { standby: true, port: pair.standby.port })
            const during = yield* inUse
            const used = endpoints.filter((_, i) => during[i]! === before[i]! + 1)
            assert.strictEqual(used.length, 1, `in use before ${before}, during ${during}`)
            yield* andThen(used[0]!)
            return used[0]!
          })))
        })
      const read = readThen(() => Effect.void)
      const reads = (n: number) => Effect.all(Array.from({ length: n }, () => read))

      // round-robin: one endpoint, then the other
      const rr = yield* onPool(
        config("round-robin"),
        Effect.zip(reads(8), PgPool.stats)
      )
      assert.sameMembers([...new Set(rr[0])], endpoints, `round-robin: ${rr[0]}`)
      for (let i = 1; i < rr[0].length; i++) assert.notStrictEqual(rr[0][i], rr[0][i - 1], `round-robin: ${rr[0]}`)
      for (const port of endpoints) {
        const h = hostOn(rr[1], port)
        assert.deepStrictEqual([h.role, h.up, h.size, h.forReads], ["standby", true, 1, 1], JSON.stringify(h))
      }
      // ordinary work stays on the primary
      assert.deepStrictEqual(
        yield* onPool(config("round-robin"), Effect.all([where, where])),
        [{ standby: false, port: pair.primary.port }, { standby: false, port: pair.primary.port }]
      )

      // least-busy: while one endpoint has a connection in use, every read goes to the other one
      const leastBusy = yield* onPool(
        config("least-busy"),
        Effect.gen(function*() {
          const release = yield* Deferred.make<void>()
          const held = yield* Deferred.make<number>()
          const holder = yield* Effect.fork(
            readThen((port) => Effect.zipRight(Deferred.succeed(held, port), Deferred.await(release)))
          )
          const busy = yield* Deferred.await(held).pipe(Effect.timeout("10 seconds"))
          const others = yield* reads(6)
          const stats = yield* PgPool.stats
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(holder)
          // with nothing in use, reads alternate again
          const idle = yield* reads(4)
          return { busy, others, stats, idle }
        })
      )
      const free = endpoints.find((port) => port !== leastBusy.busy)!
      assert.deepStrictEqual(leastBusy.others, Array(6).fill(free), `least-busy: ${JSON.stringify(leastBusy)}`)
      assert.strictEqual(hostOn(leastBusy.stats, leastBusy.busy).inUse, 1)
      assert.strictEqual(hostOn(leastBusy.stats, free).inUse, 0)
      assert.sameMembers([...new Set(leastBusy.idle)], endpoints, `least-busy when idle: ${leastBusy.idle}`)

      // random: both get some of 40 reads (all on one: probability 2^-39)
      const random = yield* onPool(config("random"), reads(40))
      for (const port of endpoints) assert.isAtLeast(count(random, (p) => p === port), 1, `random: ${random}`)
      // and the endpoints did carry the reads (besides the role checks, one connection per host and pool)
      for (const proxy of proxies) assert.isAtLeast(proxy.connections(), 4, `connections through ${proxy.port}`)
    }).pipe(Effect.scoped))

  // ---------------------------------------------------------------------------------------------------
  // 3. fallback
  // ---------------------------------------------------------------------------------------------------

  it.effect("fallback: with the standby down, reads run on the primary (or fail with readFallback: false); back on the standby when it returns", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const watcher = yield* watchProcessErrors
      const onPrimary: Where = { standby: false, port: pair.primary.port }
      const onStandby: Where = { standby: true, port: pair.standby.port }
      const common = {
        roleCheckInterval: "200 millis",
        reconnect: Schedule.spaced("200 millis"),
        acquireTimeout: "10 seconds"
      } as const
      const withFallback = yield* buildPool(pair.config({ ...common, applicationName: "fallback" }))
      const withoutFallback = yield* buildPool(
        pair.config({ ...common, readFallback: false, applicationName: "no-fallback" })
      )
      const readOn = (pool: typeof withFallback) => Effect.provide(PgPool.readOnly(where), pool)
      const statsOf = (pool: typeof withFallback) => Effect.provide(PgPool.stats, pool)
      assert.deepStrictEqual(yield* readOn(withFallback), onStandby)
      assert.deepStrictEqual(yield* readOn(withoutFallback), onStandby)

      yield* pair.standby.stop
      // the pools notice (role check every 200 ms) ...
      for (const pool of [withFallback, withoutFallback]) {
        yield* poll("the standby is seen down", statsOf(pool), (s) => !hostOn(s, pair.standby.port).up, 5_000)
      }
      // ... and reads fall back to the primary, in a transaction too
      assert.deepStrictEqual(yield* readOn(withFallback), onPrimary)
      assert.deepStrictEqual(
        yield* Effect.provide(Transaction.withTransaction(where, { readOnly: true }), withFallback),
        onPrimary
      )
      // or fail at once, naming the standby
      const { exit, millis } = yield* timedExit(readOn(withoutFallback))
      const error = failureOf(exit) as ConnectionError
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "No healthy standby")
      assert.include(error.message, `127.0.0.1:${pair.standby.port} down`)
      assert.isBelow(millis, 500)
      const txError = failureOf(
        yield* Effect.exit(Effect.provide(Transaction.withTransaction(where, { readOnly: true }), withoutFallback))
      )
      assert.strictEqual(txError._tag, "ConnectionError")
      // ordinary work is not affected
      assert.deepStrictEqual(yield* Effect.provide(where, withoutFallback), onPrimary)
      const down = yield* statsOf(withFallback)
      assert.deepStrictEqual(
        [hostOn(down, pair.standby.port).up, hostOn(down, pair.standby.port).size],
        [false, 0],
        JSON.stringify(down.hosts)
      )
      assert.isTrue(hostOn(down, pair.primary.port).up)

      // the standby returns: reads go to it again, within the probing interval (plus the standby's start)
      yield* pair.standby.start
      for (const pool of [withFallback, withoutFallback]) {
        const back = yield* poll("reads are back on the standby", readOn(pool), (w) => w.standby, 5_000)
        assert.isBelow(back.millis, 2_000, `reads back on the standby after ${back.millis} ms`)
      }
      assert.deepStrictEqual(yield* readOn(withFallback), onStandby)
      const up = yield* statsOf(withFallback)
      assert.deepStrictEqual(
        [hostOn(up, pair.standby.port).up, hostOn(up, pair.standby.port).role],
        [true, "standby"]
      )
      yield* pair.waitForStreaming()
      assert.deepStrictEqual(watcher.describe(), [])
    }).pipe(Effect.scoped))

  it.effect("fallback: a read sent right after the standby went away runs on the primary, without waiting out acquireTimeout", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      // the default role check (every 5 s) has not run yet when the read comes
      const context = yield* buildPool(pair.config({ acquireTimeout: "6 seconds", applicationName: "fallback-now" }))
      assert.deepStrictEqual(yield* Effect.provide(PgPool.readOnly(where), context), {
        standby: true,
        port: pair.standby.port
      })
      yield* stoppedStandby(pair)
      const { exit, millis } = yield* timedExit(Effect.provide(PgPool.readOnly(where), context))
      assert.deepStrictEqual(valueOf(exit), { standby: false, port: pair.primary.port })
      assert.isBelow(millis, 3_000, `the read took ${millis} ms`)
    }).pipe(Effect.scoped))

  // ---------------------------------------------------------------------------------------------------
  // 5. a host that is down is retried per the schedule
  // ---------------------------------------------------------------------------------------------------

  it.effect("a host that is down is probed per the reconnect schedule, not once per query", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      // the standby behind a proxy that resets every connection: a host that is down, listed first
      const proxy = yield* Proxy.make({ target: { host: pair.standby.host, port: pair.standby.port }, mode: "reset" })
      const context = yield* buildPool(pair.config({
        hosts: [{ host: proxy.host, port: proxy.port }, pair.hosts[0]!],
        pooling: false, // every query opens a connection of its own: the most connects a pool can make
        reconnect: Schedule.spaced("300 millis"),
        roleCheckInterval: "200 millis",
        applicationName: "down-host"
      }))
      const before = proxy.connections()
      const start = yield* now
      let queries = 0
      while ((yield* now) - start < 2_000) {
        const w = yield* Effect.provide(queries % 2 === 0 ? where : PgPool.readOnly(where), context)
        assert.deepStrictEqual(w, { standby: false, port: pair.primary.port })
        queries++
      }
      const elapsed = (yield* now) - start
      const attempts = proxy.connections() - before
      const times = proxy.acceptTimes().slice(before)
      const gaps = times.slice(1).map((t, i) => t - times[i]!)
      const expected = elapsed / 300
      assert.isAtLeast(queries, 20, `only ${queries} queries ran`)
      assert.isAtLeast(attempts, Math.floor(expected) - 2, `${attempts} attempts in ${elapsed} ms: ${times}`)
      assert.isAtMost(attempts, Math.ceil(expected) + 1, `${attempts} attempts in ${elapsed} ms: ${times}`)
      for (const gap of gaps) assert.isAtLeast(gap, 250, `attempts at ${times}`)
      const stats = yield* Effect.provide(PgPool.stats, context)
      assert.deepStrictEqual([hostOn(stats, proxy.port).up, hostOn(stats, proxy.port).size], [false, 0])

      // the host heals: the next probe finds it (a standby), and reads go to it
      yield* proxy.setMode("pass")
      const back = yield* poll(
        "reads reach the healed host",
        Effect.provide(PgPool.readOnly(where), context),
        (w) => w.standby,
        3_000
      )
      assert.strictEqual(back.value.port, pair.standby.port)
      assert.isBelow(back.millis, 1_500)
      const healed = yield* Effect.provide(PgPool.stats, context)
      assert.deepStrictEqual([hostOn(healed, proxy.port).up, hostOn(healed, proxy.port).role], [true, "standby"])
    }).pipe(Effect.scoped))

  it.effect("connectTimeout applies per host: a host that does not answer costs one connectTimeout, then the next one serves", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      // a blackhole: connects are accepted and never answered
      const proxy = yield* Proxy.make({ target: { host: pair.standby.host, port: pair.standby.port }, mode: "drop" })
      const { exit, millis } = yield* timedExit(buildPool(pair.config({
        hosts: [{ host: proxy.host, port: proxy.port }, pair.hosts[0]!],
        connectTimeout: "1 second",
        applicationName: "blackhole"
      })))
      const context = valueOf(exit)
      assert.isAtLeast(millis, 900)
      assert.isBelow(millis, 2_500, `the pool was built after ${millis} ms`)
      const { exit: queried, millis: queryMillis } = yield* timedExit(
        Effect.provide(Effect.all([where, PgPool.readOnly(where)]), context)
      )
      const onPrimary = { standby: false, port: pair.primary.port }
      assert.deepStrictEqual(valueOf(queried), [onPrimary, onPrimary])
      assert.isBelow(queryMillis, 500, "the host that does not answer is not tried again for each statement")
      const stats = yield* Effect.provide(PgPool.stats, context)
      assert.deepStrictEqual([hostOn(stats, proxy.port).up, hostOn(stats, proxy.port).size], [false, 0])
    }).pipe(Effect.scoped))

  it.effect("a read that cannot get a connection to its standby fails with a ConnectionError naming that standby", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const proxy = yield* Proxy.make({ target: { host: pair.standby.host, port: pair.standby.port } })
      const context = yield* buildPool(pair.config({
        hosts: [pair.hosts[0]!, { host: proxy.host, port: proxy.port }],
        readFallback: false,
        acquireTimeout: "1 second",
        connectTimeout: "5 seconds",
        applicationName: "blackholed-read"
      }))
      // the standby was seen up at start; now its network goes silent: the read's connect hangs
      yield* proxy.setMode("drop")
      const { exit, millis } = yield* timedExit(Effect.provide(PgPool.readOnly(where), context))
      const error = failureOf(exit)
      assert.strictEqual(error._tag, "ConnectionError")
      assert.isBelow(millis, 2_000)
      assert.include(error.message, `127.0.0.1:${proxy.port}`, error.message)
      assert.notInclude(error.message, `127.0.0.1:${pair.primary.port}`, error.message)
      assert.strictEqual((error as ConnectionError).port, proxy.port)
    }).pipe(Effect.scoped))

  // ---------------------------------------------------------------------------------------------------
  // 6. loadBalanceHosts
  // ---------------------------------------------------------------------------------------------------

  it.effect("loadBalanceHosts: \"random\" spreads new connections over both hosts; \"disable\" takes the first", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const ports = (loadBalanceHosts: "random" | "disable") =>
        onPool(
          pair.config({
            loadBalanceHosts,
            targetSessionAttrs: "any",
            pooling: false, // a new connection per statement
            applicationName: "balance"
          }),
          Effect.all(Array.from({ length: 30 }, () => Effect.map(where, (w) => w.port)))
        )
      const random = yield* ports("random")
      for (const port of [pair.primary.port, pair.standby.port]) {
        assert.isAtLeast(count(random, (p) => p === port), 1, `random: ${random}`)
      }
      const disabled = yield* ports("disable")
      assert.deepStrictEqual([...new Set(disabled)], [pair.primary.port])
    }))

  // ---------------------------------------------------------------------------------------------------
  // 4. failover (on the spare pair, which it destroys)
  // ---------------------------------------------------------------------------------------------------

  it.effect("resize and drain apply to every pool: the primary's and the standby's read pool, under 32 fibers", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const app = "resize-hosts"
      const sessions = (server: Replication.Replication["primary"]) =>
        Effect.map(
          server.query("select pid from pg_stat_activity where application_name = $1 order by pid", [app]),
          (rows) => rows.map((row) => Number(row.pid))
        )
      const both = Effect.all([sessions(pair.primary), sessions(pair.standby)])
      const pool = Context.get(
        yield* buildPool(pair.config({ applicationName: app, minConnections: 2, maxConnections: 2 })),
        PgPool.PgPool
      )
      // 16 writers' statements on the primary, 16 readers' on the standby, each a few ms long
      const statement = () => ({ text: "select pg_sleep(0.005), pg_is_in_recovery() as standby", params: [] })
      const writers = yield* startLoad(pool, 16, { statement, check: (rows) => rows[0]!.standby === false })
      const readers = yield* startLoad(
        { ...pool, query: (text, params) => pool.readOnly(pool.query(text, params)) },
        16,
        { statement, check: (rows) => rows[0]!.standby === true }
      )
      yield* poll("2 sessions on each server", both, ([p, s]) => p.length === 2 && s.length === 2, 10_000)

      // growing: both servers get their 6 at once (32 fibers wait for them)
      yield* pool.resize({ maxConnections: 6 })
      yield* poll("6 sessions on each server", both, ([p, s]) => p.length === 6 && s.length === 6, 10_000)
      const grown = yield* pool.stats
      assert.deepStrictEqual(grown.hosts.map((h) => h.size), [6, 6], JSON.stringify(grown.hosts))

      // drain: every connection on both servers replaced while the load runs
      const [oldPrimary, oldStandby] = yield* both
      yield* pool.drain
      const drained = yield* pool.stats
      // the pool closed every old connection; the servers see their backends exit a moment later
      const { value: [newPrimary, newStandby] } = yield* poll(
        "old sessions gone",
        both,
        ([p, s]) => !p.some((pid) => oldPrimary.includes(pid)) && !s.some((pid) => oldStandby.includes(pid)),
        5_000
      )
      assert.deepStrictEqual(drained.hosts.map((h) => h.up), [true, true])
      assert.isTrue(newPrimary.every((pid) => !oldPrimary.includes(pid)), `${oldPrimary} -> ${newPrimary}`)
      assert.isTrue(newStandby.every((pid) => !oldStandby.includes(pid)), `${oldStandby} -> ${newStandby}`)

      // shrinking: down to 2 on each server, busy ones closed as they come back
      yield* pool.resize({ maxConnections: 2 })
      yield* poll("back to 2 on each server", both, ([p, s]) => p.length === 2 && s.length === 2, 10_000)
      const shrunk = yield* pool.stats
      assert.deepStrictEqual(shrunk.hosts.map((h) => h.size), [2, 2], JSON.stringify(shrunk.hosts))

      const written = yield* writers.stop
      const read = yield* readers.stop
      const failures = [...written, ...read].filter((o) => o.error !== undefined)
      assert.deepStrictEqual(failures, [], describeOutcomes(failures.slice(0, 5)))
      // both loads ran throughout (every worker was served)
      assert.strictEqual(new Set(written.map((o) => o.worker)).size, 16)
      assert.strictEqual(new Set(read.map((o) => o.worker)).size, 16)
    }).pipe(Effect.scoped))

  it.effect("read-your-writes: with replay paused, a read after a write sees it (on the primary); without the mode it is stale", () =>
    Effect.gen(function*() {
      const pair = yield* Shared
      const onPrimary: Where = { standby: false, port: pair.primary.port }
      const onStandby: Where = { standby: true, port: pair.standby.port }
      yield* pair.primary.query("create table ryw (id int primary key)")
      yield* pair.waitForReplay()
      const pool = yield* buildPool(
        pair.config({ applicationName: "ryw", maxConnections: 4, readYourWritesTimeout: 300 })
      )
      const seen = (id: number) =>
        Effect.map(
          PgPool.query(`${whereSql}, exists (select 1 from ryw where id = $1) as seen`, [id]),
          (rows) => ({ ...toWhere(rows), seen: rows[0]!.seen as boolean })
        )
      const insert = (id: number) => PgPool.query("insert into ryw values ($1)", [id])
      const paused = Effect.acquireRelease(
        pair.standby.query("select pg_wal_replay_pause()"),
        () => Effect.orDie(pair.standby.query("select pg_wal_replay_resume()"))
      )
      yield* Effect.gen(function*() {
        yield* Effect.scoped(Effect.gen(function*() {
          yield* paused
          // without the mode: the write is on the primary, the read on the standby, which has not replayed it
          yield* insert(1)
          assert.deepStrictEqual(
            yield* PgPool.readOnly(seen(1)),
            { ...onStandby, seen: false },
            "stale without the mode"
          )

          // with it: a read before any write still goes to the standby; after the write, to the primary (after
          // waiting readYourWritesTimeout for the paused standby)
          const [before, after, elapsed] = yield* PgPool.readYourWrites(Effect.gen(function*() {
            const before = yield* PgPool.readOnly(seen(2))
            yield* insert(2)
            const start = yield* now
            const after = yield* PgPool.readOnly(seen(2))
            return [before, after, (yield* now) - start] as const
          }))
          assert.deepStrictEqual(before, { ...onStandby, seen: false })
          assert.deepStrictEqual(after, { ...onPrimary, seen: true }, "read-your-writes while replay is paused")
          assert.isAtLeast(elapsed, 250)
          // the scope is over: the write's position is forgotten, reads go to the (stale) standby again
          assert.deepStrictEqual(yield* PgPool.readOnly(seen(2)), { ...onStandby, seen: false })

          // a read-only transaction after a write transaction, in the scope
          const tx = yield* PgPool.readYourWrites(Effect.zipRight(
            Transaction.withTransaction(insert(3)),
            Transaction.withTransaction(seen(3), { readOnly: true })
          ))
          assert.deepStrictEqual(tx, { ...onPrimary, seen: true }, "read-only transaction after a write")

          // the position carried to another request (a cookie), with writeLsn
          const lsn = yield* PgPool.readYourWrites(Effect.zipRight(insert(4), PgPool.writeLsn))
          assert.isTrue(Option.isSome(lsn))
          assert.match(Option.getOrThrow(lsn), /^[0-9A-F]+\/[0-9A-F]+$/)
          const carried = yield* Effect.fork(
            PgPool.readYourWrites(PgPool.readOnly(seen(4)), { after: Option.getOrThrow(lsn) })
          )
          assert.deepStrictEqual(yield* Fiber.join(carried), { ...onPrimary, seen: true }, "carried position")
          const invalid = failureOf(yield* Effect.exit(PgPool.readYourWrites(seen(4), { after: "yesterday" })))
          assert.strictEqual(invalid._tag, "QueryError")
          assert.strictEqual((invalid as { code?: string }).code, "22P02")
          assert.strictEqual(Option.isNone(yield* PgPool.writeLsn), true, "no write outside a scope")
        }))

        // replay resumed: reads after a write go back to the standby once it has replayed the write
        const back = yield* PgPool.readYourWrites(Effect.zipRight(insert(5), PgPool.readOnly(seen(5))))
        assert.deepStrictEqual(back, { ...onStandby, seen: true }, "on the standby once replayed")
      }).pipe(Effect.provide(pool))

      // the knob: every fiber's reads see its own writes, no scope needed
      yield* Effect.scoped(Effect.gen(function*() {
        const always = yield* buildPool(pair.config({ applicationName: "ryw-knob", readYourWrites: true }))
        yield* paused
        const read = yield* Effect.zipRight(insert(6), PgPool.readOnly(seen(6))).pipe(Effect.provide(always))
        assert.deepStrictEqual(read, { ...onPrimary, seen: true }, "readYourWrites: true")
      }))
    }).pipe(Effect.scoped))

  it.effect("failover: writes fail fast while reads go on; after the promotion writes succeed on the same pool", () =>
    Effect.gen(function*() {
      const pair = yield* Spare
      const watcher = yield* watchProcessErrors
      const oldPrimary = pair.primary.port
      const newPrimary = pair.standby.port
      const acquireTimeout = 20_000
      const context = yield* buildPool(pair.config({
        targetSessionAttrs: "read-write",
        roleCheckInterval: "250 millis",
        reconnect: Schedule.spaced("250 millis"),
        acquireTimeout,
        applicationName: "failover"
      }))
      const run = <A, E>(effect: Effect.Effect<A, E, PgPool.PgPool>) => Effect.provide(effect, context)
      const write = (id: number) => Effect.zipLeft(where, PgPool.query("insert into accounts values ($1)", [id]))

      yield* run(PgPool.query("create table accounts (id int primary key)"))
      assert.deepStrictEqual(yield* run(write(1)), { standby: false, port: oldPrimary })
      yield* pair.waitForReplay()
      assert.deepStrictEqual(yield* run(PgPool.readOnly(where)), { standby: true, port: newPrimary })

      // the primary goes away
      yield* pair.primary.stop
      for (const attempt of [write(2), Transaction.withTransaction(write(3)), write(4)]) {
        const { exit, millis } = yield* timedExit(run(attempt))
        const error = failureOf(exit)
        assert.strictEqual(error._tag, "ConnectionError", error.message)
        assert.include(error.message, "target_session_attrs=read-write")
        assert.include(error.message, `127.0.0.1:${newPrimary} is a standby`)
        assert.isBelow(millis, 2_000, `a write failed after ${millis} ms (acquireTimeout ${acquireTimeout} ms)`)
      }
      // reads keep working on the standby
      const reads = yield* run(Effect.all([
        PgPool.readOnly(Effect.zip(where, PgPool.query("select id from accounts order by id"))),
        Transaction.withTransaction(where, { readOnly: true })
      ]))
      assert.deepStrictEqual(reads, [[{ standby: true, port: newPrimary }, [{ id: 1 }]], {
        standby: true,
        port: newPrimary
      }])

      // the standby is promoted: writes succeed again, on the same pool
      yield* pair.promote
      const back = yield* poll("writes succeed after the promotion", run(write(5)), () => true, 10_000)
      assert.deepStrictEqual(back.value, { standby: false, port: newPrimary })
      assert.isBelow(back.millis, 3_000, `writes back after ${back.millis} ms`)
      assert.deepStrictEqual(
        yield* run(Transaction.withTransaction(write(6))),
        { standby: false, port: newPrimary }
      )
      assert.deepStrictEqual(
        yield* run(PgPool.query("select id from accounts order by id")),
        [{ id: 1 }, { id: 5 }, { id: 6 }]
      )
      // with no standby left, reads fall back to the new primary
      assert.deepStrictEqual(yield* run(PgPool.readOnly(where)), { standby: false, port: newPrimary })
      const stats = yield* poll(
        "stats show the new roles",
        run(PgPool.stats),
        (s) => hostOn(s, newPrimary).role === "primary" && !hostOn(s, oldPrimary).up,
        5_000
      )
      assert.strictEqual(hostOn(stats.value, oldPrimary).size, 0)
      assert.deepStrictEqual(watcher.describe(), [])
    }).pipe(Effect.scoped))
})
