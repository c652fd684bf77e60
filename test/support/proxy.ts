/**
 * A small TCP proxy for network faults in tests: it forwards bytes between its clients and a target
 * (`"pass"`), blackholes them (`"drop"`), or resets every connection (`"reset"`).
 *
 * ```ts
 * const proxy = yield* Proxy.make({ target: { host: server.host, port: server.port } })
 * const layer = PgPool.layer(server.config({ host: proxy.host, port: proxy.port }))
 * yield* proxy.setMode("drop") // live connections go silent, new ones are accepted and get nothing
 * yield* proxy.setMode("pass") // the network heals: new bytes flow again (dropped bytes are lost)
 * ```
 *
 * Modes, and what they do to connections that already exist:
 *
 * - `"pass"`: bytes are forwarded both ways. A new client connection opens its own connection to the
 *   target; if that fails (target down), the client connection is reset, as a refused connect would be.
 * - `"drop"`: a blackhole. Every byte in either direction is read and discarded, sockets stay open, and
 *   closes (FIN or RST) are not passed on either: they are remembered and delivered when the network heals
 *   (as TCP would retransmit a FIN). New connections are accepted but get nothing and never reach the
 *   target; when the network heals (back to `"pass"`) they are reset, since the target never heard of them
 *   (their first bytes are lost, so forwarding them later could not help).
 * - `"reset"`: every current connection is destroyed with an RST on both sides (client and target), and
 *   new connections are reset as soon as they are accepted.
 *
 * Every socket gets an `'error'` listener, so nothing the proxy does can crash the test process. Closing
 * the Scope destroys every connection and closes the listening socket.
 */
import { Data, Effect } from "effect"
import type { Scope } from "effect"
import * as net from "node:net"

/** What the proxy does with traffic. */
export type Mode = "pass" | "drop" | "reset"

/** Where the proxy forwards to. */
interface Target {
  readonly host: string
  readonly port: number
}

export interface Options {
  readonly target: Target
  /** The mode at start. Default `"pass"`. */
  readonly mode?: Mode | undefined
}

/** A snapshot of the proxy's counters. */
interface Stats {
  readonly mode: Mode
  /** Client connections accepted since the proxy started (in any mode): one per connect attempt. */
  readonly connections: number
  /** Client connections open right now. */
  readonly open: number
  /** Connections to the target opened since the proxy started (only in `"pass"` mode). */
  readonly upstreamConnections: number
  /** Bytes forwarded (client to target plus target to client). */
  readonly bytesForwarded: number
  /** Bytes discarded while dropping. */
  readonly bytesDropped: number
}

export interface TcpProxy {
  /** Always `"127.0.0.1"`. */
  readonly host: string
  /** The port the proxy listens on (picked by the OS). */
  readonly port: number
  readonly target: Target
  /** The current mode. */
  readonly mode: () => Mode
  /** Switches the mode; applies to the connections that already exist too. */
  readonly setMode: (mode: Mode) => Effect.Effect<void>
  /** Client connections accepted so far (in any mode). */
  readonly connections: () => number
  /** Client connections open right now. */
  readonly open: () => number
  /**
   * When each client connection was accepted, in milliseconds since the proxy started (real time), oldest
   * first: the spacing of connect attempts, e.g. to check a reconnect schedule.
   */
  readonly acceptTimes: () => ReadonlyArray<number>
  /** All the counters, as an Effect (handy with `eventually`). */
  readonly stats: Effect.Effect<Stats>
}

/** The proxy could not listen. */
export class ProxyError extends Data.TaggedError("ProxyError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

interface Side {
  readonly socket: net.Socket
  /** The peer sent FIN ('end' seen). */
  ended: boolean
  /** The socket closed; `failed` when because of an error (RST, refused connect). */
  closed: boolean
  failed: boolean
  /** We already passed this side's close on to the other side. */
  propagated: boolean
  /** Reading is paused until the other side drains. */
  paused: boolean
}

interface Pair {
  readonly client: Side
  /** Undefined for a connection accepted while dropping or resetting: it never reaches the target. */
  readonly upstream: Side | undefined
}

const side = (socket: net.Socket): Side => ({
  socket,
  ended: false,
  closed: false,
  failed: false,
  propagated: false,
  paused: false
})

const reset = (socket: net.Socket): void => {
  if (socket.destroyed) return
  try {
    socket.resetAndDestroy()
  } catch {
    socket.destroy()
  }
}

/**
 * Starts a proxy on 127.0.0.1 (OS-picked port) in the current Scope. Closing the Scope destroys every
 * connection and stops listening.
 */
export const make = (options: Options): Effect.Effect<TcpProxy, ProxyError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<Running, ProxyError>((resume) => {
      const running = new Running(options)
      running.server.once("error", (cause) => {
        running.close(() => {})
        resume(Effect.fail(new ProxyError({ message: `The proxy cannot listen: ${cause.message}`, cause })))
      })
      running.server.listen(0, "127.0.0.1", () => {
        running.server.on("error", () => {})
        resume(Effect.succeed(running))
      })
      return Effect.async<void>((done) => running.close(() => done(Effect.void)))
    }),
    (running) => Effect.async<void>((done) => running.close(() => done(Effect.void)))
  ).pipe(Effect.map((running) => running.api()))

class Running {
  mode: Mode
  readonly pairs = new Set<Pair>()
  readonly server: net.Server
  connections = 0
  readonly acceptTimes: Array<number> = []
  readonly startedAt = performance.now()
  upstreamConnections = 0
  bytesForwarded = 0
  bytesDropped = 0
  closed = false

  constructor(readonly options: Options) {
    this.mode = options.mode ?? "pass"
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.accept(socket))
  }

  accept(socket: net.Socket): void {
    this.connections++
    this.acceptTimes.push(Math.round(performance.now() - this.startedAt))
    socket.on("error", () => {})
    if (this.closed || this.mode === "reset") {
      reset(socket)
      return
    }
    socket.setNoDelay(true)
    const client = side(socket)
    let upstream: Side | undefined
    if (this.mode === "pass") {
      this.upstreamConnections++
      const target = net.connect({
        host: this.options.target.host,
        port: this.options.target.port,
        allowHalfOpen: true
      })
      target.on("error", () => {})
      target.setNoDelay(true)
      upstream = side(target)
    }
    const pair: Pair = { client, upstream }
    this.pairs.add(pair)
    this.wire(pair, client, upstream)
    if (upstream !== undefined) this.wire(pair, upstream, client)
  }

  /** Listens on `from`, forwarding to `to` (if any) while passing. */
  wire(pair: Pair, from: Side, to: Side | undefined): void {
    const socket = from.socket
    socket.on("data", (chunk: Buffer) => {
      if (this.mode !== "pass" || to === undefined || to.closed || to.socket.writableEnded) {
        this.bytesDropped += chunk.length
        return
      }
      this.bytesForwarded += chunk.length
      if (!to.socket.write(chunk) && !from.paused) {
        from.paused = true
        socket.pause()
        to.socket.once("drain", () => {
          from.paused = false
          socket.resume()
        })
      }
    })
    socket.on("end", () => {
      from.ended = true
      this.propagate(pair)
    })
    socket.on("close", (hadError: boolean) => {
      from.closed = true
      // A close without 'end' (our own destroy, or the peer vanished) is a failure for the other side.
      from.failed = hadError || !from.ended
      // Whatever the other side was waiting to write here is moot: let it read on (and see its own close).
      if (to !== undefined && to.paused) {
        to.paused = false
        to.socket.resume()
      }
      this.propagate(pair)
      if (pair.client.closed && (pair.upstream === undefined || pair.upstream.closed)) this.pairs.delete(pair)
    })
  }

  /** Passes each side's FIN or RST on to the other side, unless the network is dropping everything. */
  propagate(pair: Pair): void {
    if (this.mode !== "pass") return
    if (pair.upstream === undefined) {
      // Accepted while dropping: the target never heard of it, so once the network heals it answers with RST.
      reset(pair.client.socket)
      return
    }
    const sides: ReadonlyArray<readonly [Side, Side]> = [[pair.client, pair.upstream], [pair.upstream, pair.client]]
    for (const [from, to] of sides) {
      if (from.propagated) continue
      if (from.failed) {
        from.propagated = true
        reset(to.socket)
      } else if (from.ended) {
        from.propagated = true
        if (!to.socket.destroyed) to.socket.end()
      }
    }
  }

  setMode(mode: Mode): void {
    if (this.closed) return
    this.mode = mode
    for (const pair of this.pairs) {
      switch (mode) {
        case "reset": {
          reset(pair.client.socket)
          if (pair.upstream !== undefined) reset(pair.upstream.socket)
          break
        }
        case "drop": {
          // Keep reading (and discarding) even where forwarding had paused for backpressure.
          for (const s of [pair.client, pair.upstream]) {
            if (s !== undefined && s.paused) {
              s.paused = false
              s.socket.resume()
            }
          }
          break
        }
        case "pass": {
          this.propagate(pair)
          break
        }
      }
    }
  }

  close(done: () => void): void {
    this.closed = true
    for (const pair of this.pairs) {
      pair.client.socket.destroy()
      pair.upstream?.socket.destroy()
    }
    this.pairs.clear()
    if (!this.server.listening) return done()
    this.server.close(() => done())
  }

  /** Client connections that the client still holds open (no FIN or RST from it yet). */
  open(): number {
    let n = 0
    for (const pair of this.pairs) if (!pair.client.closed && !pair.client.ended) n++
    return n
  }

  stats(): Stats {
    return {
      mode: this.mode,
      connections: this.connections,
      open: this.open(),
      upstreamConnections: this.upstreamConnections,
      bytesForwarded: this.bytesForwarded,
      bytesDropped: this.bytesDropped
    }
  }

  api(): TcpProxy {
    const address = this.server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    return {
      host: "127.0.0.1",
      port,
      target: this.options.target,
      mode: () => this.mode,
      setMode: (mode) => Effect.sync(() => this.setMode(mode)),
      connections: () => this.connections,
      open: () => this.open(),
      acceptTimes: () => this.acceptTimes.slice(),
      stats: Effect.sync(() => this.stats())
    }
  }
}
