/**
 * Opening the pool's connections: a connect is started for each waiter no connect in flight serves (within
 * `maxConnections`), and for `minConnections`; it tries the hosts of the pool's policy, sets the session up,
 * and retries per `reconnect` while someone still needs the connection and the failure may go away.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { ConnectionError } from "../../PgPoolError.js"
import type { HostState } from "../connection/hosts.js"
import { isTransientConnectError, noHostFits, type Opened, openOn, tryHosts } from "../connection/open.js"
import { Physical } from "../connection/physical.js"
import type { ConnectToken, PoolCore } from "./core.js"
import { connectionLog, failureLog } from "./stats.js"

/** Starts connects for waiters not yet covered by one in flight; keeps `size + closing <= maxConnections`. @internal */
export const fill = (core: PoolCore): void => {
  if (core.closed) return
  let demand = core.waiting - core.pending
  while (demand > 0 && core.size + core.closing < core.config.maxConnections) {
    startConnect(core)
    demand--
  }
}

/** Starts connects up to `minConnections`; keeps `size + closing <= maxConnections`. @internal */
export const topUp = (core: PoolCore): void => {
  if (core.closed || !core.config.pooling) return
  while (core.size < core.config.minConnections && core.size + core.closing < core.config.maxConnections) {
    startConnect(core)
  }
}

/** Someone still needs a new connection: a waiter, or `minConnections`. */
const needed = (core: PoolCore): boolean =>
  !core.closed && (core.waiting > 0 || core.size <= core.config.minConnections)

const startConnect = (core: PoolCore): void => {
  const token = beginConnect(core)
  const retryWhile = (error: ConnectionError) => !core.role.forReads && isTransientConnectError(error) && needed(core)
  core.runBackground(
    openRetrying(core, retryWhile).pipe(
      Effect.exit,
      Effect.flatMap((exit) => connected(core, exit, token))
    )
  )
}

/** A connect starts: it counts in `size` (and `pending`) until `connected`. @internal */
export const beginConnect = (core: PoolCore): ConnectToken => {
  const token = { startedAt: core.clock.unsafeCurrentTimeMillis() }
  core.connects.add(token)
  core.updateGauges()
  return token
}

/**
 * A connect ended, in one step: the new connection joins the pool (to the first waiter, else idle, else closed
 * beyond `maxIdle`), or the failure goes to the first waiter.
 *
 * @internal
 */
export const connected = (
  core: PoolCore,
  exit: Exit.Exit<Physical, ConnectionError>,
  token: ConnectToken
): Effect.Effect<void> => {
  core.connects.delete(token)
  if (Exit.isSuccess(exit)) {
    const conn = exit.value
    core.all.add(conn)
    core.tally.created++
    const now = core.clock.unsafeCurrentTimeMillis()
    if (core.closed) core.closeDetached(conn, "poolClosed")
    else core.offer(conn, now, core.idle.length < core.config.maxIdle || core.size <= core.config.minConnections)
    return Effect.void
  }
  core.updateGauges()
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) core.failHead(core.role.onConnectFailure?.(failure.value) ?? failure.value)
  fill(core)
  return Effect.void
}

/**
 * One connect: the hosts of the policy in order until one connects (and, where roles matter, is a server that
 * fits), with its session set up; then the new connection. Counts the failure.
 *
 * @internal
 */
export const open = (core: PoolCore): Effect.Effect<Physical, ConnectionError> =>
  Effect.uninterruptibleMask((restore) => {
    const policy = core.policy
    const startedAt = core.clock.unsafeCurrentTimeMillis()
    return tryHosts(core.topology, restore, {
      passes: policy.passes,
      candidates: policy.candidates,
      accepts: (server, pass) => server === undefined || policy.accepts(server, pass),
      open: (state) => openOn(core, state, { setSession: true, checkRole: policy.checkRole })
    }).pipe(
      Effect.matchEffect({
        onFailure: (failure) => {
          const error = noHostFits(`No host fits ${policy.describe}`, failure, core.config.database)
          core.tally.connectFailures++
          core.consecutiveFailures++
          core.lastFailureAt = core.clock.unsafeCurrentTimeMillis()
          core.lastConnectError = error
          return Effect.fail(error)
        },
        onSuccess: ({ opened, state }) => wrap(core, opened, state, startedAt)
      })
    )
  })

/** A new physical connection, with its lifetime (minus a jitter), hearing its loss. */
const wrap = (core: PoolCore, opened: Opened, server: HostState, startedAt: number): Effect.Effect<Physical> =>
  Effect.gen(function*() {
    const config = core.config
    const now = core.clock.unsafeCurrentTimeMillis()
    if (core.metrics !== undefined) core.metrics.createTime(now - startedAt)
    const jitter = config.maxLifetimeJitter > 0 ? (yield* core.random.next) * config.maxLifetimeJitter : 0
    const conn = new Physical(
      core.env,
      opened.driver,
      opened.scope,
      server,
      now,
      now + config.maxLifetime - jitter,
      yield* Ref.make(0)
    )
    opened.loss.attach((error) => lost(core, conn, error))
    core.consecutiveFailures = 0
    yield* Effect.logDebug("connection opened").pipe(Effect.annotateLogs(connectionLog(core, conn)))
    return conn
  })

/**
 * Opens a connection, retrying per the `reconnect` schedule while `retryWhile` holds; an attempt that comes
 * due when nobody needs the connection any more is not made.
 *
 * @internal
 */
const openRetrying = (
  core: PoolCore,
  retryWhile: (error: ConnectionError) => boolean
): Effect.Effect<Physical, ConnectionError> => {
  let attempt = 0
  const attemptIfNeeded = Effect.suspend(() => attempt === 0 || needed(core) ? open(core) : Effect.fail(notNeeded))
  return attemptIfNeeded.pipe(
    Effect.tapError((error) => {
      if (error === notNeeded) return Effect.void
      attempt++
      return Effect.logWarning(`connect failed (attempt ${attempt}): ${error.message}`).pipe(
        Effect.annotateLogs({ ...failureLog(core, error), attempt })
      )
    }),
    Effect.retry({ schedule: core.config.reconnect, while: (error) => error !== notNeeded && retryWhile(error) })
  )
}

const notNeeded = new ConnectionError({ message: "Connect abandoned: no one needs the connection any more" })

/** The driver's report of a lost connection: an idle one is dropped at once; a busy one when it comes back. */
const lost = (core: PoolCore, conn: Physical, error: ConnectionError): void => {
  conn.lost = true
  if (conn.state !== "idle") return
  core.removeIdle(conn)
  core.closeDetached(conn, "broken")
  core.runBackground(
    Effect.logWarning(`idle connection lost: ${error.message}`).pipe(Effect.annotateLogs(connectionLog(core, conn)))
  )
}
