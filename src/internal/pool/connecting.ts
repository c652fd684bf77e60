/**
 * Opening the pool's connections: a connect is started for each waiter no connect in flight serves (within
 * `maxConnections`), and for `minConnections`; it tries the hosts of the pool's policy and sets the session
 * up. A connect is never retried here: a host that did not answer is marked down, and the topology probes it on
 * the `reconnect` Schedule, one attempt at a time whatever the rate of requests; until it answers, no connect
 * is started for it, and a checkout that nothing else can serve fails at once (`strandedError`).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type { ConnectionError } from "../../PgPoolError.js"
import type { HostState } from "../connection/hosts.js"
import { noHostFits, type Opened, openOn, tryHosts } from "../connection/open.js"
import { Physical } from "../connection/physical.js"
import type { ConnectToken, PoolCore } from "./core.js"
import { connectionLog, failureLog } from "./stats.js"

/**
 * Starts connects for waiters not yet covered by one in flight; keeps `size + closing <= maxConnections`. With
 * every host down, starts none, and fails the waiters nothing will serve (see `strandedError`). With no open
 * connection, one connect at a time (see `gated`).
 *
 * @internal
 */
export const fill = (core: PoolCore): void => {
  if (core.closed) return
  if (!core.reachable()) {
    failStranded(core)
    return
  }
  let demand = core.waiting - core.pending
  while (demand > 0 && core.size + core.closing < core.config.maxConnections && !core.gated()) {
    startConnect(core)
    demand--
  }
}

/** Starts connects up to `minConnections` (none while every host is down); keeps `size + closing <= maxConnections`. @internal */
export const topUp = (core: PoolCore): void => {
  if (core.closed || !core.config.pooling || !core.reachable()) return
  while (
    core.size < core.config.minConnections && core.size + core.closing < core.config.maxConnections && !core.gated()
  ) startConnect(core)
}

/** Fails every waiter when every host is down and no connection is out or being opened to serve them. */
const failStranded = (core: PoolCore): void => {
  const error = core.strandedError()
  if (error === undefined) return
  while (core.queue.head !== undefined) core.failHead(error)
}

const startConnect = (core: PoolCore): void => {
  const token = beginConnect(core)
  core.runBackground(Effect.flatMap(Effect.exit(open(core, true)), (exit) => connected(core, exit, token)))
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
    core.suspect = false
    core.all.add(conn)
    core.tally.created++
    const now = core.clock.unsafeCurrentTimeMillis()
    if (core.closed) core.closeDetached(conn, "poolClosed")
    else if (core.size > core.config.maxConnections && core.queue.head === undefined) {
      // opened before the pool was made smaller (PgPool.resize), and nobody waits for it
      core.closeDetached(conn, "resized")
    } else {
      core.offer(conn, now, core.idle.length < core.config.maxIdle || core.size <= core.config.minConnections)
      // the host answers: the connects the first one held back
      fill(core)
      topUp(core)
    }
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
 * fits), with its session set up; then the new connection. With `skipKnown`, hosts known to be down or of the
 * wrong role are not tried (the layer's start-up tries them anyway). A failed attempt is counted and logged.
 *
 * @internal
 */
export const open = (core: PoolCore, skipKnown: boolean): Effect.Effect<Physical, ConnectionError> =>
  Effect.uninterruptibleMask((restore) => {
    const policy = core.policy
    const startedAt = core.clock.unsafeCurrentTimeMillis()
    return tryHosts(core.topology, restore, {
      passes: policy.passes,
      candidates: policy.candidates,
      accepts: (server, pass) => server === undefined || policy.accepts(server, pass),
      open: (state) => openOn(core, state, { setSession: true, checkRole: policy.checkRole }),
      skipKnown
    }).pipe(
      Effect.matchEffect({
        onFailure: (failure) => {
          const error = noHostFits(`No host fits ${policy.describe}`, failure, core.config.database)
          if (failure.attempted === 0) return Effect.fail(error)
          core.tally.connectFailures++
          core.consecutiveFailures++
          core.lastFailureAt = core.clock.unsafeCurrentTimeMillis()
          core.lastConnectError = error
          const attempt = core.consecutiveFailures
          return Effect.zipRight(
            Effect.logWarning(`connect failed (attempt ${attempt}): ${error.message}`).pipe(
              Effect.annotateLogs({ ...failureLog(core, error), attempt })
            ),
            Effect.fail(error)
          )
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
