/**
 * A statement is sent at most once unless the user opts in (issue 15, point 2), against a private real server
 * whose backends the tests terminate:
 *
 * - a statement that reached a live backend and then lost its connection fails with `ConnectionError` (57P01
 *   for a terminated backend), promptly, and is not sent again: a killed `pg_sleep(30)` does not run again, a
 *   killed INSERT is not applied twice;
 * - a statement that provably never reached a live backend (written to a backend that had been terminated
 *   while idle, before the pool read its FATAL) is sent again on another connection: terminating every idle
 *   backend of the pool costs the callers nothing;
 * - `retryLostQueries: true` keeps the old at-least-once re-send.
 *
 * Every wait is a bounded poll (`eventually`); "nothing runs again" is checked by polling `pg_stat_activity`
 * for a while.
 */
import { assert, layer } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer } from "effect"
import type { Duration } from "effect"
import * as net from "node:net"
import type * as PgPool from "../src/PgPool.js"
import type { ConnectionError } from "../src/PgPoolError.js"
import { eventually } from "./support/db.js"
import { failureOf, timedExit, valueOf } from "./support/exits.js"
import { watchProcessErrors } from "./support/processErrors.js"
import * as PrivateServer from "./support/server.js"

class Server extends Context.Tag("test/atMostOnce/Server")<Server, PrivateServer.PrivateServer>() {}

const pidOf = (rows: ReadonlyArray<PgPool.Row>): number => Number(rows[0]!.pid)

/** Fails if `predicate` holds at any of `attempts` polls of `effect`, `interval` apart (about a second). */
const never = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  predicate: (a: A) => boolean,
  what: string,
  { attempts = 20, interval = "50 millis" }: {
    readonly attempts?: number
    readonly interval?: Duration.DurationInput
  } = {}
) =>
  Effect.gen(function*() {
    for (let i = 0; i < attempts; i++) {
      const value = yield* effect
      if (predicate(value)) return assert.fail(`${what}: ${JSON.stringify(value)}`)
      yield* Effect.sleep(interval)
    }
  })

/** The client backends of the whole server running `marker` (other than the one asking). */
const running = (server: PrivateServer.PrivateServer, marker: string) =>
  Effect.map(
    server.query(
      `select pid, state, query from pg_stat_activity
       where backend_type = 'client backend' and pid <> pg_backend_pid() and query like '%' || $1 || '%'
         and query not like '%pg_stat_activity%'`,
      [marker]
    ),
    (rows) => rows.map((row) => ({ pid: Number(row.pid), state: String(row.state), query: String(row.query) }))
  )

/** The statement is running on one backend of `app`: its pid. */
const busyWith = (server: PrivateServer.PrivateServer, app: string, marker: string) =>
  Effect.map(
    eventually(
      server.backends(app),
      (rows) => rows.some((row) => row.state === "active" && row.query.includes(marker))
    ),
    (rows) => rows.find((row) => row.state === "active" && row.query.includes(marker))!.pid
  )

/** Terminates `pid` and checks that the backend is gone. */
const kill = (server: PrivateServer.PrivateServer, pid: number) =>
  Effect.gen(function*() {
    assert.isTrue(yield* server.terminate(pid), `backend ${pid} exited`)
    const left = yield* server.query("select count(*)::int as n from pg_stat_activity where pid = $1", [pid])
    assert.deepStrictEqual(left, [{ n: 0 }], `backend ${pid} is gone`)
  })

/** The two ways a one-shot statement runs: directly, and under `queryTimeout` (a checkout, then the statement). */
const modes: ReadonlyArray<{ readonly name: string; readonly config: PgPool.Config }> = [
  { name: "PgPool.query", config: {} },
  { name: "PgPool.query under queryTimeout", config: { queryTimeout: "60 seconds" } }
]

/**
 * A TCP proxy in front of the server whose answers to the client can be held back: `hold` buffers everything the
 * server sends on the connections open now (and their end), `release` delivers it. With it, a backend can be
 * terminated while its FATAL is kept from the pool, so that the pool writes a statement to a backend that is
 * already gone, and reads the FATAL only afterwards: the moment the issue describes ("the termination lands a
 * moment before the next checkout"), made certain.
 */
interface HoldingProxy {
  readonly port: number
  readonly hold: () => void
  readonly release: () => void
  /** Bytes the clients wrote on held connections. */
  readonly writtenWhileHeld: () => number
}

const holdingProxy = (target: { readonly host: string; readonly port: number }) =>
  Effect.acquireRelease(
    Effect.async<{ readonly proxy: HoldingProxy; readonly close: () => void }>((resume) => {
      interface Pair {
        readonly client: net.Socket
        readonly upstream: net.Socket
        held: Array<Buffer | "end"> | undefined
      }
      const pairs = new Set<Pair>()
      let writtenWhileHeld = 0
      const server = net.createServer((client) => {
        const upstream = net.connect(target.port, target.host)
        const pair: Pair = { client, upstream, held: undefined }
        pairs.add(pair)
        client.on("error", () => {})
        upstream.on("error", () => {})
        client.on("data", (data) => {
          if (pair.held !== undefined) writtenWhileHeld += data.length
          if (!upstream.destroyed && upstream.writable) upstream.write(data)
        })
        upstream.on("data", (data) => {
          if (pair.held !== undefined) pair.held.push(data)
          else client.write(data)
        })
        upstream.on("end", () => {
          if (pair.held !== undefined) pair.held.push("end")
          else client.end()
        })
        client.on("close", () => {
          upstream.destroy()
          pairs.delete(pair)
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const port = (server.address() as net.AddressInfo).port
        resume(Effect.succeed({
          proxy: {
            port,
            hold: () => {
              for (const pair of pairs) pair.held ??= []
            },
            release: () => {
              for (const pair of pairs) {
                const held = pair.held
                pair.held = undefined
                for (const chunk of held ?? []) {
                  if (chunk === "end") pair.client.end()
                  else pair.client.write(chunk)
                }
              }
            },
            writtenWhileHeld: () => writtenWhileHeld
          },
          close: () => {
            for (const pair of pairs) {
              pair.client.destroy()
              pair.upstream.destroy()
            }
            server.close()
          }
        }))
      })
    }),
    ({ close }) => Effect.sync(close)
  ).pipe(Effect.map(({ proxy }) => proxy))

layer(Layer.scoped(Server, PrivateServer.make()), { excludeTestServices: true, timeout: "60 seconds" })(
  "a statement is sent at most once",
  (it) => {
    const makePool = (server: PrivateServer.PrivateServer, app: string, config: PgPool.Config = {}) =>
      PrivateServer.makePool(server.config({ applicationName: app, healthCheck: false, ...config }))

    for (const mode of modes) {
      it.scoped(`${mode.name}: a busy pg_sleep(30) whose backend is terminated fails within 5 s with 57P01 and is not run again`, () =>
        Effect.gen(function*() {
          const server = yield* Server
          const errors = yield* watchProcessErrors
          const app = `sleep-${mode.config.queryTimeout === undefined ? "direct" : "timed"}`
          const marker = `at_most_once_${app.replace("-", "_")}`
          const pool = yield* makePool(server, app, mode.config)
          // the statement, without parameters (one statement: over the extended protocol)
          const fiber = yield* Effect.fork(timedExit(pool.query(`select pg_sleep(30) as ${marker}`)))
          const victim = yield* busyWith(server, app, marker)
          yield* kill(server, victim)
          const { exit, millis } = yield* Fiber.join(fiber)
          const error = failureOf(exit)
          assert.strictEqual(error._tag, "ConnectionError", error.message)
          assert.strictEqual((error as ConnectionError).code, "57P01")
          assert.notStrictEqual((error as ConnectionError).safeToRetry, true)
          assert.isBelow(millis, 5_000)
          // nothing runs it again, on any backend
          yield* never(running(server, marker), (rows) => rows.length > 0, "the statement runs again")
          const stats = yield* pool.stats
          assert.deepStrictEqual([stats.closedByReason.broken, stats.inUse], [1, 0])
          assert.notStrictEqual(pidOf(yield* pool.query("select pg_backend_pid() as pid")), victim)
          assert.deepStrictEqual(errors.describe(), [])
        }))
    }

    it.scoped("several statements in one text (a simple Query) whose backend is terminated are not run again", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const app = "sleep-simple"
        const marker = "at_most_once_simple"
        yield* server.query("drop sequence if exists simple_runs")
        yield* server.query("create sequence simple_runs")
        const pool = yield* makePool(server, app)
        const fiber = yield* Effect.fork(
          timedExit(pool.query(`select nextval('simple_runs'); select pg_sleep(30) as ${marker}`))
        )
        const victim = yield* busyWith(server, app, marker)
        yield* kill(server, victim)
        const { exit, millis } = yield* Fiber.join(fiber)
        const error = failureOf(exit)
        assert.strictEqual(error._tag, "ConnectionError", error.message)
        assert.strictEqual((error as ConnectionError).code, "57P01")
        assert.isBelow(millis, 5_000)
        yield* never(running(server, marker), (rows) => rows.length > 0, "the statement runs again")
        assert.deepStrictEqual(yield* server.query("select last_value::int as n from simple_runs"), [{ n: 1 }])
      }))

    const inserts: ReadonlyArray<{ readonly name: string; readonly text: string; readonly params?: Array<unknown> }> = [
      {
        name: "with a parameter",
        text: "with ins as (insert into at_most_once_rows (k) values ($1) returning k) " +
          "select k, pg_sleep(30) as at_most_once_insert from ins",
        params: [1]
      },
      {
        name: "without parameters",
        text: "insert into at_most_once_rows (k) select 1 from pg_sleep(30) as at_most_once_insert"
      },
      {
        name: "several statements in one text",
        text: "insert into at_most_once_rows (k) values (1); select pg_sleep(30) as at_most_once_insert"
      }
    ]

    for (const insert of inserts) {
      it.scoped(`an INSERT (${insert.name}) whose backend is terminated while it runs is never applied twice`, () =>
        Effect.gen(function*() {
          const server = yield* Server
          const app = "insert"
          yield* server.query("drop table if exists at_most_once_rows")
          yield* server.query("create table at_most_once_rows (k int)")
          const pool = yield* makePool(server, app)
          const fiber = yield* Effect.fork(Effect.exit(pool.query(insert.text, insert.params)))
          const victim = yield* busyWith(server, app, "at_most_once_insert")
          // the row is inserted (not committed) when the backend is terminated
          yield* kill(server, victim)
          const error = failureOf(yield* Fiber.join(fiber))
          assert.strictEqual(error._tag, "ConnectionError", error.message)
          assert.strictEqual((error as ConnectionError).code, "57P01")
          const count = server.query("select count(*)::int as n from at_most_once_rows")
          // the terminated INSERT was rolled back, and it is not sent again
          yield* never(
            Effect.zip(count, running(server, "at_most_once_insert")),
            ([rows, busy]) => rows[0]!.n !== 0 || busy.length > 0,
            "the INSERT ran again"
          )
          assert.deepStrictEqual(yield* count, [{ n: 0 }])
        }))
    }

    for (const mode of modes) {
      it.scoped(`${mode.name}: a statement written to a backend terminated while idle is sent again on another connection`, () =>
        Effect.gen(function*() {
          const server = yield* Server
          const errors = yield* watchProcessErrors
          const app = `held-${mode.config.queryTimeout === undefined ? "direct" : "timed"}`
          const proxy = yield* holdingProxy({ host: server.host, port: server.port })
          const pool = yield* makePool(server, app, {
            ...mode.config,
            host: "127.0.0.1",
            port: proxy.port,
            minConnections: 2,
            maxConnections: 2,
            maintenanceInterval: "100 millis"
          })
          const terminated: Array<number> = []
          /** Every backend of the pool exits while the pool cannot hear of it. */
          const terminateHeld = Effect.gen(function*() {
            yield* eventually(pool.stats, (s) => s.idle === 2 && s.size === 2 && s.pending === 0)
            const before = yield* eventually(
              server.backends(app),
              (rows) => rows.length === 2 && rows.every((row) => row.state === "idle")
            )
            proxy.hold()
            const gone = yield* server.terminateAll(app)
            assert.deepStrictEqual([...gone].sort(), before.map((b) => b.pid).sort())
            assert.deepStrictEqual(yield* server.backends(app), [])
            for (const pid of gone) terminated.push(pid)
          })
          for (
            const [text, params] of [
              ["select pg_backend_pid() as pid", undefined],
              ["select pg_backend_pid() as pid, $1::int as one", [1]]
            ] as const
          ) {
            yield* terminateHeld
            const fiber = yield* Effect.fork(pool.query(text, params))
            // the statement went out on a dead connection
            const written = proxy.writtenWhileHeld()
            yield* eventually(Effect.sync(() => proxy.writtenWhileHeld()), (n) => n > written)
            proxy.release()
            const rows = valueOf(yield* Fiber.await(fiber))
            assert.notInclude(terminated, pidOf(rows))
          }
          const stats = yield* eventually(pool.stats, (s) => s.closedByReason.broken === 4)
          assert.strictEqual(stats.inUse, 0)
          assert.deepStrictEqual(errors.describe(), [])
        }))
    }

    it.scoped("a simple Query written to a backend terminated while idle fails: nothing proves it did not run", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const app = "held-simple"
        const proxy = yield* holdingProxy({ host: server.host, port: server.port })
        const pool = yield* makePool(server, app, { host: "127.0.0.1", port: proxy.port })
        const [backend] = yield* eventually(server.backends(app), (rows) => rows.length === 1)
        proxy.hold()
        assert.deepStrictEqual(yield* server.terminateAll(app), [backend!.pid])
        const fiber = yield* Effect.fork(pool.query("select 1; select 2"))
        yield* eventually(Effect.sync(() => proxy.writtenWhileHeld()), (n) => n > 0)
        proxy.release()
        const error = failureOf(yield* Fiber.await(fiber))
        assert.strictEqual(error._tag, "ConnectionError", error.message)
        assert.strictEqual((error as ConnectionError).code, "57P01")
        assert.notStrictEqual((error as ConnectionError).safeToRetry, true)
      }))

    it.scoped("ConnectionError.safeToRetry on a scoped connection: true when the statement never ran, not in a transaction", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const app = "held-scoped"
        const proxy = yield* holdingProxy({ host: server.host, port: server.port })
        const pool = yield* makePool(server, app, { host: "127.0.0.1", port: proxy.port, maxConnections: 2 })
        const lostOn = (inTransaction: boolean) =>
          Effect.scoped(Effect.gen(function*() {
            const conn = yield* pool.connection
            if (inTransaction) yield* conn.query("begin")
            yield* eventually(
              server.backends(app),
              (rows) => rows.some((row) => row.pid === conn.backendPid && row.state?.startsWith("idle") === true)
            )
            proxy.hold()
            assert.isTrue(yield* server.terminate(conn.backendPid))
            const fiber = yield* Effect.fork(conn.query("select 1"))
            const written = proxy.writtenWhileHeld()
            yield* eventually(Effect.sync(() => proxy.writtenWhileHeld()), (n) => n > written)
            proxy.release()
            return failureOf(yield* Fiber.await(fiber))
          }))
        const idle = yield* lostOn(false)
        assert.strictEqual(idle._tag, "ConnectionError", idle.message)
        assert.strictEqual((idle as ConnectionError).code, "57P01")
        assert.isTrue((idle as ConnectionError).safeToRetry)
        const inTransaction = yield* lostOn(true)
        assert.strictEqual(inTransaction._tag, "ConnectionError", inTransaction.message)
        assert.strictEqual((inTransaction as ConnectionError).code, "57P01")
        assert.isUndefined((inTransaction as ConnectionError).safeToRetry)
      }))

    const storms: ReadonlyArray<
      { readonly name: string; readonly healthCheck: boolean; readonly held: boolean; readonly pipelineDepth: number }
    > = [
      { name: "healthCheck: false", healthCheck: false, held: false, pipelineDepth: 16 },
      { name: "healthCheck: true", healthCheck: true, held: false, pipelineDepth: 16 },
      // the FATALs held back until every connection has a statement written on it: the race made certain
      {
        name: "healthCheck: false, the FATALs read only after the statements went out",
        healthCheck: false,
        held: true,
        pipelineDepth: 1
      },
      // ... and with 16 statements pipelined on every dead connection
      {
        name: "healthCheck: false, the FATALs read only after 16 statements per connection went out",
        healthCheck: false,
        held: true,
        pipelineDepth: 16
      }
    ]

    for (const storm of storms) {
      it.scoped(`terminating every idle backend, then 100 queries at once: no failure (${storm.name})`, () =>
        Effect.gen(function*() {
          const server = yield* Server
          const errors = yield* watchProcessErrors
          const app = `idle-storm-${storm.healthCheck}-${storm.held}`
          const size = 5
          const proxy = yield* holdingProxy({ host: server.host, port: server.port })
          const pool = yield* makePool(server, app, {
            minConnections: size,
            maxConnections: size,
            maintenanceInterval: "100 millis",
            healthCheck: storm.healthCheck,
            pipelineDepth: storm.pipelineDepth,
            host: "127.0.0.1",
            port: proxy.port
          })
          // statements answered first: the pool pipelines only once it has measured how fast they are answered
          yield* Effect.all(Array.from({ length: size }, () => pool.query("select 1")), { concurrency: "unbounded" })
          const rounds = 5
          const failures: Array<string> = []
          for (let round = 0; round < rounds; round++) {
            yield* eventually(pool.stats, (s) => s.idle === size && s.inUse === 0 && s.pending === 0)
            const before = yield* eventually(
              server.backends(app),
              (rows) => rows.length === size && rows.every((row) => row.state === "idle")
            )
            if (storm.held) proxy.hold()
            const terminated = yield* server.terminateAll(app)
            assert.deepStrictEqual([...terminated].sort(), before.map((b) => b.pid).sort())
            const queries = Effect.all(
              Array.from(
                { length: 100 },
                (_, i) =>
                  Effect.exit(
                    i % 2 === 0
                      ? pool.query("select pg_backend_pid() as pid")
                      : pool.query("select pg_backend_pid() as pid, $1::int as i", [i])
                  )
              ),
              { concurrency: "unbounded" }
            )
            let exits: ReadonlyArray<Exit.Exit<ReadonlyArray<PgPool.Row>, unknown>>
            if (storm.held) {
              const fiber = yield* Effect.fork(queries)
              // pipelineDepth statements on every (dead) connection, the others waiting
              yield* eventually(
                pool.stats,
                (s) => s.inUse === size && s.waiting === Math.max(0, 100 - size * storm.pipelineDepth)
              )
              proxy.release()
              exits = yield* Fiber.join(fiber)
            } else {
              exits = yield* queries
            }
            for (const exit of exits) {
              if (Exit.isFailure(exit)) failures.push(`round ${round}: ${String(failureOf(exit))}`)
              else assert.notInclude(terminated, pidOf(exit.value))
            }
          }
          assert.deepStrictEqual(failures, [])
          const stats = yield* pool.stats
          assert.strictEqual(stats.closedByReason.broken, rounds * size)
          assert.deepStrictEqual(errors.describe(), [])
        }))
    }

    it.scoped("retryLostQueries: true: a statement whose busy backend is terminated is sent again (at-least-once)", () =>
      Effect.gen(function*() {
        const server = yield* Server
        const app = "retry-lost"
        const marker = "at_most_once_retry"
        yield* server.query("drop sequence if exists retry_runs")
        yield* server.query("create sequence retry_runs")
        const pool = yield* makePool(server, app, { retryLostQueries: true })
        const fiber = yield* Effect.fork(timedExit(pool.query(
          `select pg_sleep(case when nextval('retry_runs') = 1 then 30 else 0 end) as ${marker}, pg_backend_pid() as pid`
        )))
        const victim = yield* busyWith(server, app, marker)
        yield* kill(server, victim)
        const { exit, millis } = yield* Fiber.join(fiber)
        // the caller gets the result of the second run, from another backend
        assert.notStrictEqual(pidOf(valueOf(exit)), victim)
        assert.isBelow(millis, 10_000)
        assert.deepStrictEqual(yield* server.query("select last_value::int as n from retry_runs"), [{ n: 2 }])
      }))
  }
)
