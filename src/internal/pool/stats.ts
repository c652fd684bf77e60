/**
 * What the pool tells about itself: the `stats` snapshot (one pool, and several hosts added up), the events
 * it counts, the annotations of its log lines, the rate-limited warning of a limit hit, and the error of a
 * waiter whose acquire timeout ran out, which says whether the pool was full or the database did not answer.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as PgPool from "../../PgPool.js"
import { ConnectionError, PoolExhaustedError } from "../../PgPoolError.js"
import type { Physical } from "../connection/physical.js"
import type { PoolCore } from "./core.js"
import type { Waiter } from "./waiters.js"

/** @internal */
const emptyReasons = (): Record<PgPool.CloseReason, number> => ({
  idle: 0,
  lifetime: 0,
  maxUsage: 0,
  maxIdle: 0,
  broken: 0,
  invalidated: 0,
  unpooled: 0,
  reset: 0,
  busy: 0,
  role: 0,
  poolClosed: 0,
  resized: 0,
  drained: 0
})

/** Events counted since the pool started (what cannot be derived from the connections' states). @internal */
export class Tally {
  created = 0
  closed = 0
  readonly closedByReason = emptyReasons()
  acquired = 0
  timeouts = 0
  shed = 0
  pipelined = 0
  /** Connections given to the next waiter with their transaction's COMMIT still out (see `handOver`). */
  handedOver = 0
  connectFailures = 0
}

/** The stats of one pool. @internal */
export const snapshot = (core: PoolCore): PgPool.PoolStats => ({
  size: core.size,
  idle: core.idle.length,
  inUse: core.inUse,
  waiting: core.waiting,
  pending: core.pending,
  maxConnections: core.config.maxConnections,
  created: core.tally.created,
  closed: core.tally.closed,
  closedByReason: { ...core.tally.closedByReason },
  acquired: core.tally.acquired,
  timeouts: core.tally.timeouts,
  shed: core.tally.shed,
  pipelined: core.tally.pipelined,
  connectFailures: core.tally.connectFailures,
  hosts: core.hostStats()
})

/** The stats of a pool of several hosts: the pool for ordinary work and the read pools, added up. @internal */
export const aggregate = (main: PoolCore, cores: ReadonlyArray<PoolCore>): PgPool.PoolStats => {
  const all = cores.map(snapshot)
  const sum = (f: (stats: PgPool.PoolStats) => number) => all.reduce((total, stats) => total + f(stats), 0)
  const closedByReason = emptyReasons()
  for (const stats of all) {
    for (const [reason, count] of Object.entries(stats.closedByReason)) {
      closedByReason[reason as PgPool.CloseReason] += count
    }
  }
  return {
    size: sum((s) => s.size),
    idle: sum((s) => s.idle),
    inUse: sum((s) => s.inUse),
    waiting: sum((s) => s.waiting),
    pending: sum((s) => s.pending),
    maxConnections: main.config.maxConnections,
    created: sum((s) => s.created),
    closed: sum((s) => s.closed),
    closedByReason,
    acquired: sum((s) => s.acquired),
    timeouts: sum((s) => s.timeouts),
    shed: sum((s) => s.shed),
    pipelined: sum((s) => s.pipelined),
    connectFailures: sum((s) => s.connectFailures),
    hosts: hostStats(main, cores)
  }
}

/**
 * Connections per host and role, derived from the connections' states, across the pool for ordinary work
 * (`main`) and the read pools (`forReads` counts those).
 *
 * @internal
 */
export const hostStats = (main: PoolCore, cores: ReadonlyArray<PoolCore>): ReadonlyArray<PgPool.HostStats> => {
  const states = main.topology.states
  if (states.length === 0) {
    const host = main.config.hosts[0]!
    return [{ host: host.host, port: host.port, role: "unknown", up: true, size: 0, idle: 0, inUse: 0, forReads: 0 }]
  }
  return states.map((state) => {
    let size = 0
    let idle = 0
    let inUse = 0
    let forReads = 0
    for (const core of cores) {
      for (const conn of core.all) {
        if (conn.server.key !== state.key || conn.state === "closing") continue
        size++
        if (conn.state === "idle") idle++
        else if (conn.state === "busy") inUse++
        if (core !== main) forReads++
      }
    }
    return {
      host: state.host.host,
      port: state.host.port,
      role: state.role ?? "unknown",
      up: !state.down,
      size,
      idle,
      inUse,
      forReads
    }
  })
}

/** The annotations of every log line about one connection: the pool, the server, the backend. @internal */
export const connectionLog = (core: PoolCore, conn: Physical): Record<string, unknown> => ({
  pool: core.config.name,
  host: conn.server.host.host,
  port: conn.server.host.port,
  backendPid: conn.driver.backendPid
})

/** The annotations of a log line about a failed connect. @internal */
export const failureLog = (core: PoolCore, error: ConnectionError): Record<string, unknown> => ({
  pool: core.config.name,
  host: error.host ?? "",
  port: error.port ?? 0,
  // a SQLSTATE only when the server sent one (a refused or dropped connect has none: no empty `code=`)
  ...(error.code === undefined ? {} : { code: error.code })
})

/** Logs a limit that was hit at most once a second, with the number of similar events left out. @internal */
export class LimitLog {
  last = -Infinity
  suppressed = 0
  constructor(readonly pool: string) {}
  log(error: PoolExhaustedError | ConnectionError, now: number): Effect.Effect<void> {
    if (now - this.last < 1000) {
      this.suppressed++
      return Effect.void
    }
    this.last = now
    const suppressed = this.suppressed
    this.suppressed = 0
    return Effect.logWarning(error.message).pipe(
      Effect.annotateLogs(
        suppressed > 0
          ? { pool: this.pool, error: error._tag, suppressedSimilar: suppressed }
          : { pool: this.pool, error: error._tag }
      )
    )
  }
}

/**
 * The error of a waiter whose acquire timeout ran out: the database did not answer (connects kept failing,
 * or one has been in flight for at least half of the wait), or the pool was full.
 *
 * @internal
 */
export const timeoutError = (core: PoolCore, waiter: Waiter, now: number): ConnectionError | PoolExhaustedError => {
  const waited = now - waiter.enqueuedAt
  const last = core.lastConnectError
  const failing = core.consecutiveFailures > 0 && last !== undefined &&
    (core.pending > 0 || core.lastFailureAt >= waiter.enqueuedAt)
  if (failing) {
    return new ConnectionError({
      message:
        `No connection within the acquire timeout (waited ${waited} ms): connecting kept failing (${core.consecutiveFailures} attempts), last: ${last.message}`,
      cause: last,
      host: last.host,
      port: last.port,
      database: last.database,
      code: last.code,
      attempts: core.consecutiveFailures
    })
  }
  if (core.connectingSince(now - waited / 2)) {
    const host = core.policy.candidates()[0]?.host ?? core.config.hosts[0]!
    return new ConnectionError({
      message:
        `No connection within the acquire timeout (waited ${waited} ms): opening a connection to ${host.host}:${host.port}/${core.config.database} is still in progress`,
      host: host.host,
      port: host.port,
      database: core.config.database,
      attempts: core.consecutiveFailures
    })
  }
  return new PoolExhaustedError({ reason: "acquireTimeout", stats: snapshot(core), waitedMillis: waited })
}
