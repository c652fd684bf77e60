import { assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, Scope } from "effect"
import * as net from "node:net"
import { freePort } from "../../src/internal/testing/embedded.js"
import { backends, eventually, testConfig, testServer } from "./db.js"
import { watchProcessErrors } from "./processErrors.js"
import * as Proxy from "./proxy.js"
import { makePool } from "./server.js"

// ---------------------------------------------------------------------------------------------------------
// raw TCP helpers: an echo server as the target, and a client that records what happens to it
// ---------------------------------------------------------------------------------------------------------

interface Echo {
  readonly port: number
  /** Bytes the echo server received, over all connections. */
  readonly received: () => string
  readonly accepted: () => number
  readonly open: () => number
  /** Closes every connection from the server side (FIN). */
  readonly endAll: () => void
}

const echoServer: Effect.Effect<Echo, never, Scope.Scope> = Effect.acquireRelease(
  Effect.async<{ server: net.Server; sockets: Set<net.Socket>; echo: Echo }>((resume) => {
    let received = ""
    let accepted = 0
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      accepted++
      sockets.add(socket)
      socket.on("error", () => {})
      socket.on("close", () => sockets.delete(socket))
      socket.on("data", (chunk) => {
        received += chunk.toString()
        socket.write(chunk)
      })
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as net.AddressInfo
      resume(Effect.succeed({
        server,
        sockets,
        echo: {
          port: address.port,
          received: () => received,
          accepted: () => accepted,
          open: () => sockets.size,
          endAll: () => sockets.forEach((s) => s.end())
        }
      }))
    })
  }),
  ({ server, sockets }) =>
    Effect.async<void>((resume) => {
      sockets.forEach((s) => s.destroy())
      server.close(() => resume(Effect.void))
    })
).pipe(Effect.map(({ echo }) => echo))

interface Client {
  readonly write: (data: string) => Effect.Effect<void>
  readonly end: Effect.Effect<void>
  readonly received: () => string
  /** The socket closed (for any reason). */
  readonly closed: () => boolean
  /** The error code the socket failed with, e.g. ECONNRESET. */
  readonly error: () => string | undefined
  readonly state: Effect.Effect<
    { readonly received: string; readonly closed: boolean; readonly error: string | undefined }
  >
}

const client = (port: number): Effect.Effect<Client, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const socket = net.connect({ host: "127.0.0.1", port })
      let received = ""
      let closed = false
      let error: string | undefined
      socket.on("data", (chunk) => {
        received += chunk.toString()
      })
      socket.on("error", (e: NodeJS.ErrnoException) => {
        error = e.code ?? e.message
      })
      socket.on("close", () => {
        closed = true
      })
      const c: Client = {
        write: (data) => Effect.sync(() => void (socket.destroyed ? undefined : socket.write(data))),
        end: Effect.sync(() => void socket.end()),
        received: () => received,
        closed: () => closed,
        error: () => error,
        state: Effect.sync(() => ({ received, closed, error }))
      }
      return { socket, c }
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  ).pipe(Effect.map(({ c }) => c))

/** Lets a short, bounded moment of real time pass, to show that something does NOT happen. */
const quietPeriod = Effect.sleep("150 millis")

describe("Proxy (raw TCP)", () => {
  it.scopedLive("pass forwards both ways and counts connections", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      assert.strictEqual(proxy.host, "127.0.0.1")
      assert.notStrictEqual(proxy.port, echo.port)
      assert.strictEqual(proxy.mode(), "pass")
      const a = yield* client(proxy.port)
      const b = yield* client(proxy.port)
      yield* a.write("hello")
      yield* b.write("world")
      yield* eventually(a.state, (s) => s.received === "hello")
      yield* eventually(b.state, (s) => s.received === "world")
      assert.strictEqual(proxy.connections(), 2)
      assert.strictEqual(proxy.open(), 2)
      yield* a.end
      // the FIN is passed on: the echo server ends too, and the client sees the close
      yield* eventually(a.state, (s) => s.closed)
      yield* eventually(proxy.stats, (s) => s.open === 1)
      yield* eventually(Effect.sync(() => echo.open()), (n) => n === 1)
      // a close from the target's side reaches the client
      echo.endAll()
      yield* eventually(b.state, (s) => s.closed)
      assert.strictEqual(b.error(), undefined)
      const times = proxy.acceptTimes()
      assert.strictEqual(times.length, 2)
      assert.isTrue(times[0]! <= times[1]!)
      const stats = yield* proxy.stats
      assert.strictEqual(stats.connections, 2)
      assert.strictEqual(stats.open, 0)
      assert.strictEqual(stats.upstreamConnections, 2)
      assert.strictEqual(stats.bytesForwarded, 20)
    }))

  it.scopedLive("pass forwards a large transfer intact (backpressure)", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const c = yield* client(proxy.port)
      const payload = "0123456789abcdef".repeat(256 * 1024) // 4 MiB
      yield* c.write(payload)
      yield* eventually(c.state, (s) => s.received.length === payload.length, { attempts: 400 })
      assert.isTrue(c.received() === payload)
      assert.strictEqual((yield* proxy.stats).bytesForwarded, 2 * payload.length)
    }))

  it.scopedLive("drop blackholes live connections; pass forwards new bytes again (dropped bytes are lost)", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const c = yield* client(proxy.port)
      yield* c.write("a")
      yield* eventually(c.state, (s) => s.received === "a")
      yield* proxy.setMode("drop")
      assert.strictEqual(proxy.mode(), "drop")
      yield* c.write("b")
      yield* quietPeriod
      assert.strictEqual(c.received(), "a")
      assert.strictEqual(echo.received(), "a")
      assert.isFalse(c.closed())
      yield* proxy.setMode("pass")
      yield* c.write("c")
      yield* eventually(c.state, (s) => s.received === "ac")
      assert.strictEqual(echo.received(), "ac")
      assert.strictEqual((yield* proxy.stats).bytesDropped, 1)
    }))

  it.scopedLive("drop holds back a close from the target until the network heals", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const c = yield* client(proxy.port)
      yield* c.write("a")
      yield* eventually(c.state, (s) => s.received === "a")
      yield* proxy.setMode("drop")
      echo.endAll()
      yield* quietPeriod
      assert.isFalse(c.closed())
      yield* proxy.setMode("pass")
      const s = yield* eventually(c.state, (s) => s.closed)
      assert.strictEqual(s.error, undefined)
      yield* eventually(Effect.sync(() => echo.open()), (n) => n === 0)
    }))

  it.scopedLive("drop accepts new connections that get nothing; they are reset when the network heals", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port }, mode: "drop" })
      const c = yield* client(proxy.port)
      yield* c.write("x")
      yield* eventually(proxy.stats, (s) => s.connections === 1 && s.open === 1)
      yield* quietPeriod
      assert.strictEqual(c.received(), "")
      assert.isFalse(c.closed())
      assert.strictEqual(echo.accepted(), 0)
      yield* proxy.setMode("pass")
      const s = yield* eventually(c.state, (s) => s.closed)
      assert.strictEqual(s.error, "ECONNRESET")
      assert.strictEqual(echo.accepted(), 0)
      yield* eventually(proxy.stats, (s) => s.open === 0)
    }))

  it.scopedLive("reset destroys current connections with RST and resets new ones", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const a = yield* client(proxy.port)
      yield* a.write("a")
      yield* eventually(a.state, (s) => s.received === "a")
      yield* proxy.setMode("reset")
      const sa = yield* eventually(a.state, (s) => s.closed)
      assert.strictEqual(sa.error, "ECONNRESET")
      // the target side is reset too
      yield* eventually(Effect.sync(() => echo.open()), (n) => n === 0)
      const b = yield* client(proxy.port)
      const sb = yield* eventually(b.state, (s) => s.closed)
      assert.strictEqual(sb.error, "ECONNRESET")
      assert.strictEqual(proxy.connections(), 2)
      assert.strictEqual(echo.accepted(), 1)
      yield* eventually(proxy.stats, (s) => s.open === 0)
      // and pass works again for new connections
      yield* proxy.setMode("pass")
      const c = yield* client(proxy.port)
      yield* c.write("c")
      yield* eventually(c.state, (s) => s.received === "c")
    }))

  it.scopedLive("a connection to a target that is down is reset", () =>
    Effect.gen(function*() {
      const port = yield* freePort
      const proxy = yield* Proxy.make({ target: { host: "127.0.0.1", port } })
      const c = yield* client(proxy.port)
      const s = yield* eventually(c.state, (s) => s.closed)
      assert.strictEqual(s.error, "ECONNRESET")
      assert.strictEqual(proxy.connections(), 1)
    }))

  it.scopedLive("closing the scope closes every connection and stops listening", () =>
    Effect.gen(function*() {
      const echo = yield* echoServer
      const scope = yield* Scope.make()
      const proxy = yield* Scope.extend(Proxy.make({ target: { host: "127.0.0.1", port: echo.port } }), scope)
      const a = yield* client(proxy.port)
      yield* a.write("a")
      yield* eventually(a.state, (s) => s.received === "a")
      yield* proxy.setMode("drop")
      const b = yield* client(proxy.port)
      yield* eventually(proxy.stats, (s) => s.open === 2)
      yield* Scope.close(scope, Exit.void)
      yield* eventually(a.state, (s) => s.closed)
      yield* eventually(b.state, (s) => s.closed)
      yield* eventually(Effect.sync(() => echo.open()), (n) => n === 0)
      const late = yield* client(proxy.port)
      const s = yield* eventually(late.state, (s) => s.closed)
      assert.strictEqual(s.error, "ECONNREFUSED")
    }))
})

// ---------------------------------------------------------------------------------------------------------
// a pool through the proxy, on the shared test server
// ---------------------------------------------------------------------------------------------------------

describe("Proxy (pool)", () => {
  const target = () => {
    const server = testServer()
    return { host: server.host, port: server.port }
  }

  /**
   * Resets every proxied connection before the pool's scope closes (finalizers run in reverse order), so
   * that a statement whose bytes were dropped fails instead of keeping its connection busy. How the pool
   * closes with blackholed connections is a behaviour of the pool, for the pool's fault tests.
   */
  const resetBeforeClose = (proxy: Proxy.TcpProxy) => Effect.addFinalizer(() => proxy.setMode("reset"))

  it.scopedLive("a pool through the proxy works in pass mode", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const proxy = yield* Proxy.make({ target: target() })
      const pool = yield* makePool(testConfig({ host: proxy.host, port: proxy.port, minConnections: 2 }))
      const rows = yield* pool.query("select 1 as one")
      assert.deepStrictEqual(rows, [{ one: 1 }])
      assert.isAtLeast(proxy.connections(), 2)
      const seen = yield* eventually(backends(), (rows) => rows.length === 2)
      assert.strictEqual(seen.length, proxy.open())
      assert.deepStrictEqual(errors.errors(), [])
    }))

  it.scopedLive("in drop mode a query hangs, connects time out, and the proxy counts the attempts", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const proxy = yield* Proxy.make({ target: target() })
      const config = testConfig({
        host: proxy.host,
        port: proxy.port,
        connectTimeout: "500 millis",
        acquireTimeout: "1 second",
        healthCheck: false
      })
      const pool = yield* makePool(config)
      yield* resetBeforeClose(proxy)
      assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
      yield* proxy.setMode("drop")
      // disconnect: the timeout returns at once, while the pool cancels the statement in the background
      const hung = yield* pool.query("select 2 as two").pipe(
        Effect.disconnect,
        Effect.timeout("300 millis"),
        Effect.flip
      )
      assert.strictEqual(hung._tag, "TimeoutException")
      // a new pool cannot start: its connect attempt is accepted by the proxy and then hears nothing
      const before = proxy.connections()
      const started = yield* Clock.currentTimeMillis
      const failed = yield* Effect.scoped(makePool(config)).pipe(Effect.flip)
      const elapsed = (yield* Clock.currentTimeMillis) - started
      assert.strictEqual(failed._tag, "ConnectionError")
      assert.isAtLeast(elapsed, 400)
      assert.isBelow(elapsed, 3000)
      assert.isAtLeast(proxy.connections() - before, 1)
      assert.deepStrictEqual(errors.errors(), [])
    }))

  it.scopedLive("after a blackhole the pool recovers once the network heals", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const proxy = yield* Proxy.make({ target: target() })
      const pool = yield* makePool(
        testConfig({
          host: proxy.host,
          port: proxy.port,
          connectTimeout: "500 millis",
          acquireTimeout: "1 second",
          healthCheck: false
        })
      )
      yield* resetBeforeClose(proxy)
      assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
      yield* proxy.setMode("drop")
      const hung = yield* pool.query("select 1 as one").pipe(
        Effect.disconnect,
        Effect.timeout("300 millis"),
        Effect.flip
      )
      assert.strictEqual(hung._tag, "TimeoutException")
      yield* proxy.setMode("pass")
      const rows = yield* eventually(
        pool.query("select 1 as one").pipe(
          Effect.disconnect,
          Effect.timeout("2 seconds"),
          Effect.orElseSucceed(() => [])
        ),
        (rows) => rows.length === 1,
        { interval: Duration.millis(50), attempts: 60 }
      )
      assert.deepStrictEqual(rows, [{ one: 1 }])
      assert.deepStrictEqual(errors.errors(), [])
    }))

  it.scopedLive("reset mode makes queries fail with ConnectionError; after pass the pool recovers", () =>
    Effect.gen(function*() {
      const errors = yield* watchProcessErrors
      const proxy = yield* Proxy.make({ target: target() })
      const pool = yield* makePool(
        testConfig({ host: proxy.host, port: proxy.port, connectTimeout: "500 millis", acquireTimeout: "1 second" })
      )
      assert.deepStrictEqual(yield* pool.query("select 1 as one"), [{ one: 1 }])
      yield* proxy.setMode("reset")
      // the open connection is reset under its statement (not re-sent: retryLostQueries is off by default) ...
      const failed = yield* pool.query("select 1 as one").pipe(Effect.flip)
      assert.strictEqual(failed._tag, "ConnectionError")
      // ... and a new connection is reset as it connects
      const refused = yield* pool.query("select 1 as one").pipe(Effect.flip)
      assert.strictEqual(refused._tag, "ConnectionError")
      assert.isAtLeast(proxy.connections(), 2)
      yield* proxy.setMode("pass")
      const rows = yield* eventually(
        pool.query("select 1 as one").pipe(Effect.orElseSucceed(() => [])),
        (rows) => rows.length === 1,
        { interval: Duration.millis(50), attempts: 60 }
      )
      assert.deepStrictEqual(rows, [{ one: 1 }])
      assert.deepStrictEqual(errors.errors(), [])
    }))
})
