/**
 * Read routing over several hosts: read-only work goes to a standby chosen by the balancing policy, each
 * standby having a pool of its own; ordinary work goes to the pool of the host that fits
 * `target_session_attrs`. With no healthy standby, reads fall back to that pool (or fail). Work sent to a
 * standby that cannot connect (it went away since the last role check) never started, so it is sent on.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import { ConnectionError } from "../../PgPoolError.js"
import type { ResolvedConfig } from "../config/resolve.js"
import type { HostState } from "../connection/hosts.js"
import type { PoolCore } from "../pool/core.js"
import type { Replay } from "./readYourWrites.js"

/** @internal */
export interface ReadPool {
  readonly state: HostState
  readonly core: PoolCore
  /** How far the standby has replayed, as last read (for read-your-writes). */
  readonly replay: Replay
}

const ReadPoolOf: unique symbol = Symbol.for("effect-pg-pool/PgPool/ReadPoolOf")

/**
 * A connect failure of the read pool `core`, marked as such on the error itself (a symbol-keyed field, not
 * enumerable: equality, JSON and logs do not see it), so the router can tell it from the work's own failures.
 *
 * @internal
 */
export const markReroutable = (core: PoolCore) => (error: ConnectionError): ConnectionError => {
  Object.defineProperty(error, ReadPoolOf, { value: core, enumerable: false, configurable: true })
  return error
}

/** A connect failure of the read pool `target` (also as the cause of the SqlClient's SqlError). */
const isReroutable = (target: PoolCore) => (error: unknown): boolean => {
  if (typeof error !== "object" || error === null) return false
  if ((error as { [ReadPoolOf]?: unknown })[ReadPoolOf] === target) return true
  const cause = (error as { cause?: unknown }).cause
  return typeof cause === "object" && cause !== null && (cause as { [ReadPoolOf]?: unknown })[ReadPoolOf] === target
}

/** @internal */
export class Router {
  next = 0
  constructor(readonly main: PoolCore, readonly reads: ReadonlyArray<ReadPool>, readonly config: ResolvedConfig) {}

  /** The pool for read-only work now, or undefined when no standby is healthy and there is no fallback. */
  pick(): PoolCore | undefined {
    const healthy = this.healthy()
    if (healthy.length === 0) return this.config.readFallback ? this.main : undefined
    return this.pickFrom(healthy)
  }

  private healthy(): ReadonlyArray<ReadPool> {
    return this.reads.filter((read) => read.state.role === "standby" && !read.state.down)
  }

  /**
   * The pool for read-only work that must see everything up to the WAL position `target`: a healthy standby
   * that has replayed it (their positions read again while none has, up to `timeout` ms), else the pool for
   * ordinary work, which sees it already. With no healthy standby, as `pick`.
   */
  caughtUp(target: bigint, timeout: number): Effect.Effect<PoolCore | undefined> {
    return Effect.flatMap(Clock.currentTimeMillis, (start) => {
      const attempt: Effect.Effect<PoolCore | undefined> = Effect.suspend(() => {
        const healthy = this.healthy()
        if (healthy.length === 0) return Effect.succeed(this.config.readFallback ? this.main : undefined)
        const ready = healthy.filter((read) => read.replay.replayed >= target)
        if (ready.length > 0) return Effect.succeed(this.pickFrom(ready))
        return Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const left = start + timeout - now
          if (left <= 0) return Effect.succeed(this.main)
          return Effect.flatMap(
            Effect.forEach(healthy, (read) => read.replay.refresh, { concurrency: "unbounded", discard: true }),
            () =>
              healthy.some((read) => read.replay.replayed >= target)
                ? attempt
                : Effect.zipRight(Effect.sleep(Math.min(REPLAY_POLL, left)), attempt)
          )
        })
      })
      return attempt
    })
  }

  private pickFrom(healthy: ReadonlyArray<ReadPool>): PoolCore {
    switch (this.config.readBalancing) {
      case "round-robin":
        return healthy[this.next++ % healthy.length]!.core
      case "random":
        return healthy[Math.floor(Math.random() * healthy.length)]!.core
      case "least-busy": {
        const start = this.next++ % healthy.length
        let best = healthy[start]!
        for (let i = 1; i < healthy.length; i++) {
          const candidate = healthy[(start + i) % healthy.length]!
          if (load(candidate.core) < load(best.core)) best = candidate
        }
        return best.core
      }
    }
  }

  noStandby(): ConnectionError {
    return new ConnectionError({
      message: `No healthy standby for read-only work (readFallback is off): ${
        this.reads.map((read) => `${read.state.key} ${read.state.down ? "down" : read.state.role ?? "unknown"}`).join(
          ", "
        )
      }`
    })
  }

  /**
   * Runs `f` on `target` (a pool the router picked; `none` when there was none). When a standby's read pool
   * cannot connect, the work, which never started, goes where the router points now: to another standby, or
   * to the fallback.
   */
  runOn<A, E, R, E2>(
    target: PoolCore | undefined,
    f: (target: PoolCore) => Effect.Effect<A, E, R>,
    none: () => Effect.Effect<never, E2>
  ): Effect.Effect<A, E | E2, R> {
    if (target === undefined) return none()
    if (target === this.main) return f(target)
    return Effect.catchIf(f(target), isReroutable(target), (): Effect.Effect<A, E | E2, R> => {
      const again = this.pick()
      return again === undefined ? none() : f(again)
    })
  }
}

/** How often a read waiting for a standby to replay reads the standbys' positions again (ms). */
const REPLAY_POLL = 5

const load = (core: PoolCore): number => core.inUse + core.waiting + core.pending
