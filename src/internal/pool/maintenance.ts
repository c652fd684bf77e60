/**
 * A pool core's life: made in a Scope with its timer fiber, warmed up (one checked connection, plus
 * `minConnections`), kept by the maintenance fiber (idle and lifetime expiry, `minConnections`, keepalive
 * pings), and shut down when the Scope closes (waiters failed, idle connections closed, checked-out ones
 * waited for up to `drainTimeout`).
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Connector from "../../Connector.js"
import { ConnectionError, DrainTimeoutError } from "../../PgPoolError.js"
import type { ResolvedConfig } from "../config/resolve.js"
import { isTransientConnectError } from "../connection/open.js"
import type { Physical } from "../connection/physical.js"
import { beginConnect, connected, fill, open, topUp } from "./connecting.js"
import { type CoreRole, PoolCore } from "./core.js"
import { purge, waitWithin } from "./release.js"
import { failureLog } from "./stats.js"

/** Closes idle connections past `idleTimeout` (down to `minConnections`); how many. @internal */
export const purgeExpired = (core: PoolCore): Effect.Effect<number> =>
  Effect.sync(() => core.closed ? 0 : purge(core, core.clock.unsafeCurrentTimeMillis()))

/** One run of the maintenance fiber. */
const maintenance = (core: PoolCore): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (core.closed) return Effect.void
    const now = core.clock.unsafeCurrentTimeMillis()
    purge(core, now)
    topUp(core)
    const health = core.config.healthCheck
    if (!health.enabled) return Effect.void
    const stale = core.idle.filter((conn) => now - conn.idleSince >= health.interval)
    if (stale.length === 0) return Effect.void
    return Effect.forEach(stale, (conn) => keepAlive(core, conn), { discard: true, concurrency: "unbounded" }).pipe(
      Effect.zipRight(Effect.sync(() => topUp(core)))
    )
  })

/** The keepalive of an idle connection: back to the pool if it answered (a waiter first), else closed. */
const keepAlive = (core: PoolCore, conn: Physical): Effect.Effect<void> =>
  Effect.uninterruptible(Effect.suspend(() => {
    if (conn.state !== "idle" || core.closed) return Effect.void
    core.removeIdle(conn)
    core.setState(conn, "checking", core.clock.unsafeCurrentTimeMillis())
    return Effect.asVoid(core.checked(conn, (now) => core.offer(conn, now, true)))
  }))

/**
 * Closes the pool: later checkouts fail with PoolClosedError, waiters now; idle connections are closed, and
 * checked-out ones when they come back, waiting for them up to `drainTimeout` (then closing them).
 */
const shutdown = (core: PoolCore): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (core.closed) return Effect.void
    core.closed = true
    const error = core.closedError()
    while (core.queue.head !== undefined) core.failHead(error)
    for (const conn of core.idle.splice(0)) core.closeDetached(conn, "poolClosed")
    const drain = core.inUse === 0 ? Effect.void : Effect.flatMap(Deferred.make<void>(), (drained) => {
      core.drained = drained
      const closeCheckedOut = (concurrency: "unbounded" | undefined) =>
        Effect.forEach(
          [...core.all].filter((conn) => conn.state === "busy" || conn.state === "checking"),
          (conn) => {
            conn.lost = true
            conn.closedBy = concurrency === undefined
              ? "The pool was closed while the statement ran: the fiber closing it was interrupted, and its connection closed"
              : `The pool was closed while the statement ran: its connection was still checked out after drainTimeout ` +
                `(${core.config.drainTimeout} ms), and was closed`
            // a connection closed now needs no settled cancel any more (the cancel guards its reuse): its settling,
            // which may wait for a CancelRequest a silent network swallows, is ended rather than waited for
            const settling = conn.settling
            const close = Scope.close(conn.scope, Exit.void)
            return settling === undefined ? close : Effect.zipRight(close, Effect.asVoid(Fiber.interrupt(settling)))
          },
          { discard: true, concurrency }
        )
      return waitWithin(Deferred.await(drained), core.config.drainTimeout, {
        done: () => Effect.void,
        timedOut: () =>
          Effect.logWarning(`closing ${core.inUse} connections still checked out after drainTimeout`).pipe(
            Effect.annotateLogs({ pool: core.config.name }),
            Effect.zipRight(closeCheckedOut("unbounded"))
          ),
        // the fiber closing the pool was interrupted: the connections still out are closed now, one by one (no
        // child fibers), since the pool's background fibers, which would close them when they come back, end
        // with its scope
        cutOff: () => closeCheckedOut(undefined)
      })
    })
    return drain.pipe(
      Effect.zipRight(Effect.logDebug("pool closed")),
      Effect.annotateLogs({ pool: core.config.name, created: core.tally.created, closed: core.tally.closed })
    )
  })

/** A pool core in the current Scope, with its timer fiber; closing the Scope shuts it down. @internal */
export const makeCore = (
  config: ResolvedConfig,
  role: CoreRole
): Effect.Effect<PoolCore, never, Scope.Scope | Connector.Connector> =>
  Effect.gen(function*() {
    const connector = yield* Connector.Connector
    const clock = yield* Effect.clock
    const random = yield* Effect.random
    const closers = yield* FiberSet.make<unknown, unknown>()
    const runCloser = yield* FiberSet.runtime(closers)<never>()
    const runBackground = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    const core = new PoolCore(config, connector, clock, random, runBackground, runCloser, role)
    yield* Effect.addFinalizer(() =>
      shutdown(core).pipe(
        Effect.zipRight(
          Effect.interruptible(FiberSet.awaitEmpty(closers)).pipe(Effect.timeoutOption(Duration.seconds(10)))
        ),
        // cut off by an interruption of the closing fiber: the closers' set interrupts them (they close
        // uninterruptibly, so it waits for them)
        Effect.catchAllCause(() => Effect.void)
      )
    )
    runBackground(core.timerLoop)
    // a host that was down answers again: the connects the waiters need, and minConnections
    role.topology.upListeners.push(() => {
      fill(core)
      topUp(core)
    })
    // the probes' failed connects count as the pool's (the read pools leave them to the pool for ordinary work)
    if (!role.forReads) {
      role.topology.probeFailureListeners.push((error) => {
        core.tally.connectFailures++
        core.consecutiveFailures++
        core.lastFailureAt = core.clock.unsafeCurrentTimeMillis()
        core.lastConnectError = error
      })
    }
    return core
  })

/**
 * New sizes for a running pool core (`PgPool.resize`): the limit gauges follow; a smaller `maxConnections`
 * closes idle connections beyond it at once (the busy ones go as they come back, see `releaseWith`); room
 * for more serves the waiters and `minConnections` at once.
 *
 * @internal
 */
export const resize = (core: PoolCore, sizes: { readonly minConnections: number; readonly maxConnections: number }) => {
  const old = core.config
  const maxIdle = old.maxIdle >= old.maxConnections
    ? sizes.maxConnections
    : Math.max(sizes.minConnections, Math.min(old.maxIdle, sizes.maxConnections))
  core.config = { ...old, minConnections: sizes.minConnections, maxConnections: sizes.maxConnections, maxIdle }
  core.metrics?.setLimits({ max: sizes.maxConnections, idleMax: maxIdle, idleMin: sizes.minConnections })
  while (core.size > sizes.maxConnections && core.idle.length > 0) {
    const conn = core.idle[0]!
    core.removeIdle(conn)
    core.closeDetached(conn, "resized")
  }
  fill(core)
  topUp(core)
  core.updateGauges()
}

/**
 * `PgPool.drain` on one pool core: the connections opened until now are closed, the idle ones at once, the
 * busy ones as they come back; new ones are opened as the waiters and `minConnections` need. Completes when
 * none of them is left, or fails after `drainTimeout`.
 *
 * @internal
 */
export const drain = (core: PoolCore): Effect.Effect<void, DrainTimeoutError> =>
  Effect.suspend(() => {
    const before = core.clock.unsafeCurrentTimeMillis()
    const startedAt = before
    core.drainBefore = Math.max(core.drainBefore, before)
    for (const conn of core.idle.slice()) {
      if (conn.createdAt <= before) {
        core.removeIdle(conn)
        core.closeDetached(conn, "drained")
      }
    }
    fill(core)
    topUp(core)
    if (core.olderThan(before) === 0) return Effect.void
    const wait = Effect.async<void>((resume) => {
      const entry = { before, done: () => resume(Effect.void) }
      core.drains.add(entry)
      return Effect.sync(() => core.drains.delete(entry))
    })
    return wait.pipe(
      Effect.timeoutFail({
        duration: Duration.millis(core.config.drainTimeout),
        onTimeout: () => {
          const remaining = core.olderThan(before)
          const waitedMillis = core.clock.unsafeCurrentTimeMillis() - startedAt
          return new DrainTimeoutError({
            message: `Drain not complete within drainTimeout (${waitedMillis} ms): ${remaining} connection${
              remaining === 1 ? "" : "s"
            } opened before it still checked out; they are closed when they come back`,
            remaining,
            waitedMillis
          })
        }
      })
    )
  })

/** Forks the maintenance fiber of a core, after its warm-up. @internal */
export const startMaintenance = (core: PoolCore): void => {
  core.runBackground(
    maintenance(core).pipe(
      Effect.catchAllCause((cause) => Effect.logError("maintenance failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(core.config.maintenanceInterval)))
    )
  )
  core.updateGauges()
}

/**
 * Opens and checks one connection (plus `minConnections`) within `connectTimeout`, or fails. Every host is
 * tried first; while a host that did not answer is probed on the reconnect Schedule, the warm-up waits for it
 * to answer and tries again; when the Schedule ends, it fails with the last error.
 *
 * @internal
 */
export const warmup = (core: PoolCore): Effect.Effect<void, ConnectionError> => {
  const count = Math.max(1, core.config.pooling ? core.config.minConnections : 1)
  const tokens = Array.from({ length: count }, () => beginConnect(core))
  let attempts = 0
  // the probes of a host that did not answer connect too: their failures count as attempts
  const failuresBefore = core.tally.connectFailures
  const hosts = core.role.hosts
  const attempt = (first: boolean): Effect.Effect<Physical, ConnectionError> =>
    open(core, !first).pipe(Effect.catchAll((error) =>
      Effect.suspend(() => {
        attempts++
        // at Debug: the connect's own Warning ("connect failed") has said it already
        const log = Effect.logDebug(`connect failed at start (attempt ${attempts}): ${error.message}`).pipe(
          Effect.annotateLogs({ ...failureLog(core, error), attempt: attempts })
        )
        if (!isTransientConnectError(error)) return Effect.zipRight(log, Effect.fail(error))
        // again once a host answers (at once if one has meanwhile), unless no host is probed any more
        const up = () => hosts.some((state) => !state.down)
        const probed = () => hosts.some((state) => state.probing)
        const again: Effect.Effect<Physical, ConnectionError> = Effect.suspend(() => {
          if (up()) return attempt(false)
          if (!probed()) return Effect.fail(hosts.length === 1 ? hosts[0]!.lastError ?? error : error)
          return Effect.zipRight(core.topology.waitChange(() => up() || !probed()), again)
        })
        return Effect.zipRight(log, again)
      })
    ))
  return Effect.forEach(
    tokens,
    (token) => attempt(true).pipe(Effect.onExit((exit) => connected(core, exit, token))),
    { concurrency: "unbounded", discard: true }
  ).pipe(
    Effect.timeoutFail({
      duration: core.config.connectTimeout,
      onTimeout: () => {
        const last = core.lastConnectError
        const host = core.config.hosts[0]!
        const failed = Math.max(attempts, core.tally.connectFailures - failuresBefore)
        const tried = failed === 0
          ? `the connect to ${host.host}:${host.port} did not complete`
          : `${failed} failed attempt${failed === 1 ? "" : "s"}, last: ${last?.message ?? "unknown"}`
        return new ConnectionError({
          message: `Cannot start the pool: no connection within connectTimeout (${
            Duration.format(core.config.connectTimeout)
          }): ${tried}`,
          cause: last,
          host: last?.host ?? core.config.hosts[0]?.host,
          port: last?.port ?? core.config.hosts[0]?.port,
          database: core.config.database,
          code: last?.code,
          attempts: failed
        })
      }
    })
  )
}
