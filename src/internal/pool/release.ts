/**
 * The return path: a connection comes back from a checkout and is reset per `reset`, handed to the next
 * waiter, kept idle, or closed. It never goes back inside a transaction or with a statement running, and it
 * never stays checked out: every bounded wait on the way back handles being cut off by an interruption.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Ref from "effect/Ref"
import * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import type { Physical } from "../connection/physical.js"
import type { PoolCore } from "./core.js"

/** How long the fiber returning a connection waits for the cancel of its interrupted statement to settle. */
const SETTLE_WAIT = Duration.millis(250)
const RESET_TIMEOUT = Duration.seconds(5)

/**
 * A bounded wait on a path that must finish (returning a connection, closing the pool), with its three
 * outcomes. The wait runs in the timeout's child fiber, which an interruption of the caller reaches even in an
 * uninterruptible region: a wait cut off that way is `cutOff`, not an interruption of the whole path.
 *
 * @internal
 */
export const waitWithin = <A, B>(
  wait: Effect.Effect<A>,
  duration: Duration.DurationInput,
  on: {
    readonly done: () => Effect.Effect<B>
    readonly timedOut: () => Effect.Effect<B>
    readonly cutOff: () => Effect.Effect<B>
  }
): Effect.Effect<B> =>
  Effect.interruptible(wait).pipe(
    Effect.timeoutTo({ duration, onSuccess: () => true, onTimeout: () => false }),
    Effect.matchCauseEffect({ onFailure: on.cutOff, onSuccess: (done) => done ? on.done() : on.timedOut() })
  )

/** Gives a checked-out connection back (reading its usage count when `maxUsage` is set). @internal */
export const release = (core: PoolCore, conn: Physical): Effect.Effect<void> =>
  core.counting
    ? Effect.flatMap(Ref.get(conn.usage), (usage) => releaseWith(core, conn, usage))
    : Effect.suspend(() => releaseWith(core, conn, 0))

/**
 * The whole "may this connection go back?" decision, one gate a line, in this order: a cancel still settling,
 * the leak watch, invalidated, lost or broken, no longer on a fitting server, the pool closed, a statement
 * still running (or forked fibers that outlived the checkout still using it), then a transaction left open (or `reset` asking for more) resets it before `checkin`.
 *
 * @internal
 */
export const releaseWith = (core: PoolCore, conn: Physical, usage: number): Effect.Effect<void> => {
  conn.deferred = undefined
  conn.beginLost = false
  // the COMMIT of the transaction before this checkout, still out (see `handOver`), or the cancel of an
  // interrupted statement: waited for briefly (a round trip on a healthy network), then the return goes on
  if (conn.commitOut !== undefined) return waitThenRelease(core, conn, usage, conn.commitOut.wait)
  if (conn.settling !== undefined) return waitThenRelease(core, conn, usage, Fiber.await(conn.settling))
  if (conn.leakWatch !== undefined) {
    const watch = conn.leakWatch
    conn.leakWatch = undefined
    return Effect.zipRight(Fiber.interruptFork(watch), releaseWith(core, conn, usage))
  }
  if (conn.invalidated) return discard(core, conn, "invalidated")
  if (conn.broken) return discard(core, conn, "broken")
  if (!core.fits(conn)) return discard(core, conn, "role")
  if (core.closed) return discard(core, conn, "poolClosed")
  if (conn.driver.isBusy() || conn.shared) return discard(core, conn, "busy")
  // opened before a PgPool.drain: replaced
  if (conn.createdAt <= core.drainBefore) return discard(core, conn, "drained")
  // the pool was made smaller (PgPool.resize) and this connection is beyond it
  if (core.size > core.config.maxConnections) return discard(core, conn, "resized")
  if (core.config.reset !== "transaction" || conn.driver.transactionStatus() !== "idle") return reset(core, conn, usage)
  return checkin(core, conn, usage)
}

/**
 * Waits for `wait` briefly, then goes on with the return; when it takes longer (or the wait is cut off), the
 * return finishes in the background after it, so that the caller is not held up.
 */
const waitThenRelease = (core: PoolCore, conn: Physical, usage: number, wait: Effect.Effect<unknown>) => {
  const rest = Effect.suspend(() => releaseWith(core, conn, usage))
  const later = () => {
    core.runCloser(Effect.zipRight(wait, rest))
    return Effect.void
  }
  return waitWithin(wait, SETTLE_WAIT, { done: () => rest, timedOut: later, cutOff: later })
}

/**
 * Whether the connection of a transaction about to COMMIT may go to the next waiter while the COMMIT is out
 * (`handOver`): pipelining is on and the driver can write behind it, someone waits, nothing else uses the
 * connection, and every gate of `releaseWith` and `checkin` passes now and will after the COMMIT, which ends
 * the transaction whatever its outcome (`maxUsage` set or `reset` other than "transaction": never).
 *
 * @internal
 */
export const canHandOver = (core: PoolCore, conn: Physical): boolean => {
  const config = core.config
  return core.queue.length > 0 && config.pipelineDepth > 1 && conn.driver.sendBehind !== undefined &&
    conn.alone && conn.settling === undefined && conn.commitOut === undefined &&
    conn.deferred === undefined && !conn.beginLost && !conn.invalidated && !conn.broken && core.fits(conn) &&
    !core.closed && !conn.driver.isBusy() && conn.createdAt > core.drainBefore &&
    core.size <= config.maxConnections && config.reset === "transaction" && config.pooling && !core.counting &&
    core.clock.unsafeCurrentTimeMillis() < conn.expiresAt
}

/**
 * Gives the connection of a transaction whose COMMIT was just sent (`Physical.commitBehind`, after
 * `canHandOver`) to the next waiter at once: its first statement goes out behind the COMMIT, in the same write.
 *
 * @internal
 */
export const handOver = (core: PoolCore, conn: Physical): void => {
  core.tally.handedOver++
  // the checkout ends with its COMMIT: its leak watch stops (in the background; the next checkout has its own)
  const watch = conn.leakWatch
  if (watch !== undefined) {
    conn.leakWatch = undefined
    core.runBackground(Fiber.interrupt(watch))
  }
  // the waiter checked for is still there (nothing ran since): this is only in case it was not
  if (!core.deliver(conn, core.clock.unsafeCurrentTimeMillis())) core.runBackground(release(core, conn))
}

/**
 * Runs the reset statements: ROLLBACK when a transaction is open (always with `reset: "always"`), then
 * `DISCARD ALL` and `setSession` with `reset: "full"`. A reset that failed, timed out or was cut off (the
 * statements run in the timeout's child fiber, which an interruption of the caller reaches even in this
 * uninterruptible region) closes the connection.
 */
const reset = (core: PoolCore, conn: Physical, usage: number): Effect.Effect<void> => {
  const config = core.config
  const driver = conn.driver
  const rollback = config.reset !== "transaction" || driver.transactionStatus() !== "idle" ? ["ROLLBACK"] : []
  const statements = config.reset === "full" ? [...rollback, "DISCARD ALL", ...config.setSession] : rollback
  return Effect.interruptible(Effect.forEach(statements, (text) => Connector.query(driver, text), { discard: true }))
    .pipe(
      Effect.timeout(RESET_TIMEOUT),
      Effect.matchCauseEffect({
        onFailure: () => discard(core, conn, "reset"),
        onSuccess: () =>
          driver.transactionStatus() === "idle" ? checkin(core, conn, usage) : discard(core, conn, "reset")
      }),
      Effect.uninterruptible
    )
}

/** A clean connection back in the pool: closed past `maxUsage` or its lifetime, else to the next waiter or idle. */
const checkin = (core: PoolCore, conn: Physical, usage: number): Effect.Effect<void> => {
  const config = core.config
  if (!config.pooling) return discard(core, conn, "unpooled")
  if (usage >= config.maxUsage) return discard(core, conn, "maxUsage")
  const now = core.clock.unsafeCurrentTimeMillis()
  if (now >= conn.expiresAt) return discard(core, conn, "lifetime")
  // the next waiter first: no connection sits idle while a fiber waits
  if (core.deliver(conn, now)) return Effect.void
  if (core.idle.length >= config.maxIdle) return discard(core, conn, "maxIdle")
  core.putIdle(conn, now)
  if (now - core.idle[0]!.idleSince >= config.idleTimeout && core.size > config.minConnections) purge(core, now)
  return Effect.void
}

/** Closes a checked-out connection instead of returning it. */
const discard = (core: PoolCore, conn: Physical, reason: PgPool.CloseReason): Effect.Effect<void> => {
  core.closeDetached(conn, reason)
  return Effect.void
}

/** Closes idle connections past `idleTimeout` (down to `minConnections`) or past their lifetime. @internal */
export const purge = (core: PoolCore, now: number): number => {
  const config = core.config
  let closed = 0
  for (const conn of core.idle.slice()) {
    if (now >= conn.expiresAt) {
      core.removeIdle(conn)
      core.closeDetached(conn, "lifetime")
      closed++
    } else if (now - conn.idleSince >= config.idleTimeout && core.size > config.minConnections) {
      core.removeIdle(conn)
      core.closeDetached(conn, "idle")
      closed++
    }
  }
  return closed
}
