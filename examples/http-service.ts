/**
 * An HTTP service on the pool, with @effect/platform-node's HttpRouter and `PgPoolLive`.
 *
 *   npx tsx examples/http-service.ts            # serves on http://localhost:3000 until Ctrl-C
 *   npx tsx examples/http-service.ts --once     # starts, calls its own routes, prints, exits
 *
 *   GET  /accounts/:id        one account
 *   POST /transfer?from=1&to=2&amount=5   a transfer, in a transaction
 *   GET  /stats               the pool's stats
 */
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import { PgPool, PgPoolError, Transaction } from "effect-pg-pool"
import { createServer } from "node:http"
import { PoolLive } from "./database.js"

const setup = Effect.gen(function*() {
  yield* PgPool.query("create table if not exists accounts (id int primary key, balance int not null)")
  yield* PgPool.query("insert into accounts select g, 100 from generate_series(1, 10) g on conflict do nothing")
})

const account = Effect.gen(function*() {
  const { id } = yield* HttpRouter.params
  const rows = yield* PgPool.query("select id, balance from accounts where id = $1", [Number(id)])
  return rows.length === 0 ? HttpServerResponse.empty({ status: 404 }) : yield* HttpServerResponse.json(rows[0])
})

const transfer = Effect.gen(function*() {
  const query = yield* HttpServerRequest.ParsedSearchParams
  const [from, to, amount] = [Number(query.from), Number(query.to), Number(query.amount)]
  const balances = yield* Transaction.withTransaction(Effect.gen(function*() {
    yield* PgPool.query("update accounts set balance = balance - $2 where id = $1", [from, amount])
    yield* PgPool.query("update accounts set balance = balance + $2 where id = $1", [to, amount])
    return yield* PgPool.query("select id, balance from accounts where id = any($1) order by id", [[from, to]])
  }))
  return yield* HttpServerResponse.json(balances)
})

const stats = Effect.flatMap(PgPool.stats, (s) => HttpServerResponse.json(s))

/** The pool's errors as HTTP answers: a full pool or an unreachable database is a 503, not a crash. */
const answerErrors = <E, R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.catchIf(handler, PgPoolError.isPgPoolError, (error) =>
    HttpServerResponse.json(
      { error: error._tag, message: error.message },
      { status: error._tag === "QueryError" ? 500 : 503 }
    ))

const router = HttpRouter.empty.pipe(
  HttpRouter.get("/accounts/:id", answerErrors(account)),
  HttpRouter.post("/transfer", answerErrors(transfer)),
  HttpRouter.get("/stats", stats)
)

const port = Number(process.env.PORT ?? 3000)

const HttpLive = NodeHttpServer.layer(createServer, { port: process.argv.includes("--once") ? 0 : port })
const ServerLive = HttpServer.serve(router).pipe(HttpServer.withLogAddress)

const once = Effect.gen(function*() {
  const address = yield* HttpServer.addressWith((a) => Effect.succeed(a))
  const base = address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : ""
  for (
    const [method, path] of [["GET", "/accounts/1"], ["POST", "/transfer?from=1&to=2&amount=5"], ["GET", "/stats"]]
  ) {
    const response = yield* Effect.promise(() => fetch(`${base}${path}`, { method }))
    const body = yield* Effect.promise(() => response.text())
    yield* Console.log(`${method} ${path} -> ${response.status} ${body}`)
  }
})

const main = process.argv.includes("--once")
  ? Effect.zipRight(setup, Effect.scoped(Effect.zipRight(Layer.build(ServerLive), once))).pipe(
    Effect.provide(Layer.merge(HttpLive, PoolLive))
  )
  : Effect.zipRight(setup, Layer.launch(ServerLive)).pipe(Effect.provide(Layer.merge(HttpLive, PoolLive)))

NodeRuntime.runMain(main)
