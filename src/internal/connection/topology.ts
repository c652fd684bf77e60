/**
 * The hosts of a pool (one or several): the hosts' states as last seen, the order a new connection tries them in (libpq's
 * `load_balance_hosts`), and the probing of hosts that are down (per the `reconnect` schedule) or whose role
 * may have changed (every `roleCheckInterval`). It is the only writer of `HostState`.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type * as Connector from "../../Connector.js"
import type { ConnectionError } from "../../PgPoolError.js"
import { isCredentialFailure, type ResolvedConfig } from "../config/resolve.js"
import { HostState, type ServerRole } from "./hosts.js"
import { openOn } from "./open.js"

/** @internal */
export class Topology {
  readonly states: ReadonlyArray<HostState>
  /** Called when a host that was down answers again (the pools start the connects their waiters need). */
  readonly upListeners: Array<() => void> = []
  /** Called for every failed probe (the tally of the pool for ordinary work counts them as connect failures). */
  readonly probeFailureListeners: Array<(error: ConnectionError) => void> = []
  /** Resumed at the next change of a down host: it answered, or its probe loop ended. */
  private readonly changeListeners = new Set<() => void>()
  constructor(
    readonly config: ResolvedConfig,
    readonly connector: Connector.Connector,
    readonly runBackground: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
  ) {
    this.states = config.hosts.map((host) => new HostState(host))
  }

  /** Hosts in the order a connect tries them: up hosts first (in order or shuffled), down ones last. */
  ordered(states: ReadonlyArray<HostState>): ReadonlyArray<HostState> {
    const list = states.slice()
    if (this.config.loadBalanceHosts === "random") {
      for (let i = list.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1))
        ;[list[i], list[j]] = [list[j]!, list[i]!]
      }
    }
    return [...list.filter((s) => !s.down), ...list.filter((s) => s.down)]
  }

  markUp(state: HostState, server: ServerRole): void {
    const changed = state.role !== undefined && state.role !== server.role
    const wasDown = state.down
    state.role = server.role
    state.readOnly = server.readOnly
    state.down = false
    state.lastError = undefined
    state.failures = 0
    if (wasDown) {
      for (const listener of this.upListeners) listener()
      this.notifyChange()
    }
    if (changed) {
      this.runBackground(
        Effect.logWarning(`host ${state.key} is now a ${server.role}`).pipe(
          Effect.annotateLogs({
            pool: this.config.name,
            host: state.host.host,
            port: state.host.port,
            role: server.role
          })
        )
      )
    }
  }

  /**
   * A host failed to answer: mark it down, and probe it on the reconnect Schedule, one attempt at a time for
   * every pool of the service, until it answers or the Schedule ends. Meanwhile the pools try no connect to it
   * (after the Schedule ends, the next connect a pool needs tries it, and a failure starts a new probe loop).
   */
  markDown(state: HostState, error: ConnectionError): void {
    state.lastError = error
    state.failures++
    if (state.probing) {
      // a probe of a host known to be down failed again: routine until it answers (its Warning was logged)
      this.runBackground(
        Effect.logDebug(`host ${state.key} still down (${state.failures} failed connects): ${error.message}`).pipe(
          Effect.annotateLogs({
            pool: this.config.name,
            host: state.host.host,
            port: state.host.port,
            attempt: state.failures
          })
        )
      )
      return
    }
    const wasDown = state.down
    state.down = true
    state.probing = true
    this.runBackground(this.probeLoop(state))
    if (wasDown) return
    const warning = isCredentialFailure(error)
      // nothing was sent to the host: its credentials Effect failed, with the cause the message points to
      ? Effect.logWarning(
        `no connect to host ${state.key}: ${error.message}; asked again on the reconnect schedule`,
        Cause.fail(error)
      )
      : Effect.logWarning(`host ${state.key} is down: ${error.message}`)
    this.runBackground(
      warning.pipe(Effect.annotateLogs({ pool: this.config.name, host: state.host.host, port: state.host.port }))
    )
  }

  /** Waits for the next change of a down host (it answered, or its probe loop ended), or returns `"now"` if `ready`. */
  waitChange(ready: () => boolean): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (ready()) return resume(Effect.void)
      const listener = () => {
        this.changeListeners.delete(listener)
        resume(Effect.void)
      }
      this.changeListeners.add(listener)
      return Effect.sync(() => this.changeListeners.delete(listener))
    })
  }

  private notifyChange(): void {
    for (const listener of [...this.changeListeners]) listener()
  }

  /** Probes a down host after each delay of the reconnect Schedule until it answers or the Schedule ends. */
  private probeLoop(state: HostState): Effect.Effect<void> {
    return Effect.flatMap(Schedule.driver(this.config.reconnect), (driver) => {
      const step: Effect.Effect<void> = Effect.matchEffect(driver.next(state.lastError), {
        onFailure: () => Effect.void,
        onSuccess: () => Effect.flatMap(Effect.exit(this.probe(state)), () => state.down ? step : Effect.void)
      })
      return step
    }).pipe(Effect.ensuring(Effect.sync(() => {
      state.probing = false
      this.notifyChange()
    })))
  }

  /** One look at a host on a short-lived connection (no `setSession`): is it up, and what is it? */
  probe(state: HostState): Effect.Effect<void, ConnectionError> {
    return openOn(this, state, { setSession: false, checkRole: true }).pipe(
      Effect.tapBoth({
        onFailure: (error) =>
          Effect.sync(() => {
            for (const listener of this.probeFailureListeners) listener(error)
            this.markDown(state, error)
          }),
        onSuccess: (opened) =>
          Effect.zipRight(
            Scope.close(opened.scope, Exit.void),
            Effect.sync(() => this.markUp(state, opened.server!))
          )
      }),
      Effect.asVoid
    )
  }

  /** Every `roleCheckInterval`: look at each host that is up (roles change at failover). */
  get recheck(): Effect.Effect<never> {
    return Effect.forEach(
      this.states.filter((s) => !s.down),
      (state) => Effect.ignore(this.probe(state)),
      { concurrency: "unbounded", discard: true }
    ).pipe(
      Effect.repeat(Schedule.spaced(Duration.millis(this.config.roleCheckInterval))),
      Effect.zipRight(Effect.never)
    )
  }
}
