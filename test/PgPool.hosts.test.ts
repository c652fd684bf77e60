import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Redacted } from "effect"
import * as net from "node:net"
import * as PgPool from "../src/PgPool.js"
import { testServer } from "./support/db.js"

/** A port on which nothing listens (connects are refused at once). */
const closedPort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

const base = () => {
  const server = testServer()
  return { user: server.user, password: server.password!, database: server.database, applicationName: "hosts-test" }
}

describe("PgPool with several hosts (one server)", () => {
  it.effect("a host that is down is skipped; the pool runs on the next one and stats show both", () =>
    Effect.gen(function*() {
      const server = testServer()
      const down = yield* closedPort
      const pool = PgPool.layer({
        ...base(),
        hosts: [{ host: "127.0.0.1", port: down }, { host: server.host, port: server.port }],
        connectTimeout: "2 seconds"
      })
      const stats = yield* Effect.gen(function*() {
        const rows = yield* PgPool.query("select 1 as one")
        assert.deepStrictEqual(rows, [{ one: 1 }])
        return yield* PgPool.stats
      }).pipe(Effect.provide(pool))
      const [first, second] = stats.hosts
      assert.deepStrictEqual([first!.port, first!.up, first!.size], [down, false, 0])
      assert.deepStrictEqual([second!.port, second!.up, second!.role, second!.size], [server.port, true, "primary", 1])
    }))

  it.effect("a multi-host URL in libpq form works the same way", () =>
    Effect.gen(function*() {
      const server = testServer()
      const down = yield* closedPort
      const password = encodeURIComponent(Redacted.value(server.password!))
      const url =
        `postgres://${server.user}:${password}@127.0.0.1:${down},${server.host}:${server.port}/${server.database}?target_session_attrs=read-write`
      const rows = yield* PgPool.query("select current_setting('transaction_read_only') as ro").pipe(
        Effect.provide(PgPool.layer({ url: Redacted.make(url) }))
      )
      assert.deepStrictEqual(rows, [{ ro: "off" }])
    }))

  it.effect("targetSessionAttrs: standby against a primary fails at once with a ConnectionError naming why", () =>
    Effect.gen(function*() {
      const server = testServer()
      const started = Date.now()
      const error = yield* Effect.flip(Effect.scoped(Layer.build(PgPool.layer({
        ...base(),
        host: server.host,
        port: server.port,
        targetSessionAttrs: "standby"
      }))))
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "target_session_attrs=standby")
      assert.include(error.message, "is a primary")
      assert.isBelow(Date.now() - started, 3000)
    }))

  for (const attrs of ["any", "read-write", "primary", "prefer-standby"] as const) {
    it.effect(`targetSessionAttrs: ${attrs} accepts a primary`, () =>
      Effect.gen(function*() {
        const server = testServer()
        const rows = yield* PgPool.query("select pg_is_in_recovery() as standby").pipe(
          Effect.provide(PgPool.layer({ ...base(), host: server.host, port: server.port, targetSessionAttrs: attrs }))
        )
        assert.deepStrictEqual(rows, [{ standby: false }])
      }))
  }

  it.effect("readOnly with no standby falls back to the primary, or fails when readFallback is off", () =>
    Effect.gen(function*() {
      const server = testServer()
      const down = yield* closedPort
      const hosts = [{ host: server.host, port: server.port }, { host: "127.0.0.1", port: down }]
      const rows = yield* PgPool.readOnly(PgPool.query("select pg_is_in_recovery() as standby")).pipe(
        Effect.provide(PgPool.layer({ ...base(), hosts }))
      )
      assert.deepStrictEqual(rows, [{ standby: false }])
      const error = yield* Effect.flip(
        PgPool.readOnly(PgPool.query("select 1")).pipe(
          Effect.provide(PgPool.layer({ ...base(), hosts, readFallback: false }))
        )
      )
      assert.strictEqual(error._tag, "ConnectionError")
      assert.include(error.message, "No healthy standby")
    }))
})
