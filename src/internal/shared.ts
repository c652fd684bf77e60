/**
 * One evaluation at a time, shared: the callers that come while it runs wait for its outcome instead of
 * starting their own; the next caller after it ends starts a new one.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"

/**
 * `effect`, shared while it runs. It runs uninterruptibly, so that every caller waiting for it gets its
 * outcome (a caller interrupted while waiting just stops waiting).
 *
 * @internal
 */
export const sharedWhileRunning = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> => {
  let inFlight: Deferred.Deferred<A, E> | undefined
  return Effect.suspend(() => {
    if (inFlight !== undefined) return Deferred.await(inFlight)
    const done = Deferred.unsafeMake<A, E>(FiberId.none)
    inFlight = done
    return Effect.uninterruptible(Effect.flatMap(Effect.exit(effect), (exit) => {
      inFlight = undefined
      Deferred.unsafeDone(done, exit)
      return exit
    }))
  })
}
