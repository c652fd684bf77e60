/**
 * Read routing over several hosts: read-only work goes to a standby chosen by the balancing policy, each
 * standby having a pool of its own; ordinary work goes to the pool of the host that fits
 * `target_session_attrs`. With no healthy standby, reads fall back to that pool (or fail).
 *
 * @internal
 */
import { ConnectionError } from "../PgPoolError.js"
import type { ResolvedConfig } from "./config.js"
import type { PoolCore } from "./pool.js"
import type { HostState } from "./topology.js"

/** @internal */
export interface ReadPool {
  readonly state: HostState
  readonly core: PoolCore
}

/** @internal */
export class Router {
  next = 0
  constructor(readonly main: PoolCore, readonly reads: ReadonlyArray<ReadPool>, readonly config: ResolvedConfig) {}

  /** The pool for read-only work now, or undefined when no standby is healthy and there is no fallback. */
  pick(): PoolCore | undefined {
    const healthy = this.reads.filter((read) => read.state.role === "standby" && !read.state.down)
    if (healthy.length === 0) return this.config.readFallback ? this.main : undefined
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
        this.reads.map((read) => `${read.state.label} ${read.state.down ? "down" : read.state.role ?? "unknown"}`).join(", ")
      }`
    })
  }
}

const load = (core: PoolCore): number => core.inUse + core.waiting + core.pending
