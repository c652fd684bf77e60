/**
 * Several hosts: what each server is (primary or standby, read-only or not), which hosts a new connection
 * may go to (libpq's `target_session_attrs` and `load_balance_hosts`), and the probing of hosts that are
 * down (per the `reconnect` schedule) or whose role may have changed (every `roleCheckInterval`).
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Schedule from "effect/Schedule"
import * as Connector from "../Connector.js"
import { ConnectionError, type QueryError } from "../PgPoolError.js"
import type { HostPort, ResolvedConfig, TargetSessionAttrs } from "./config.js"
import * as config_ from "./config.js"

/** @internal */
export type Role = "primary" | "standby"

/** What is known of one host. */
/** @internal */
export class HostState {
  role: Role | undefined = undefined
  readOnly: boolean | undefined = undefined
  down = false
  lastError: ConnectionError | undefined = undefined
  probe: Fiber.RuntimeFiber<void> | undefined = undefined
  readonly key: string
  constructor(readonly host: HostPort) {
    this.key = `${host.host}:${host.port}`
  }
  get label(): string {
    return this.key
  }
}

/** @internal */
export interface ServerRole {
  readonly role: Role
  readonly readOnly: boolean
}

/** The statement that tells what a server is. */
/** @internal */
export const roleQuery =
  "select pg_is_in_recovery() as in_recovery, current_setting('transaction_read_only') as read_only"

/** @internal */
export const queryRole = (driver: Connector.Connection): Effect.Effect<ServerRole, ConnectionError | QueryError> =>
  Effect.map(Connector.query(driver, roleQuery), (result) => {
    const row = result.rows[0] ?? {}
    const inRecovery = row.in_recovery === true || row.in_recovery === "t"
    return { role: inRecovery ? "standby" : "primary", readOnly: inRecovery || row.read_only === "on" }
  })

/** Does a server with this role satisfy `target_session_attrs` (for prefer-standby: its first pass)? */
/** @internal */
export const accepts = (attrs: TargetSessionAttrs, server: ServerRole, pass: number): boolean => {
  switch (attrs) {
    case "any":
      return true
    case "read-write":
      return !server.readOnly
    case "read-only":
      return server.readOnly
    case "primary":
      return server.role === "primary"
    case "standby":
      return server.role === "standby"
    case "prefer-standby":
      return pass > 0 || server.role === "standby"
  }
}

/**
 * Which hosts a pool's new connections may go to, and whether an open connection is still on a fitting
 * server. `passes` are tried in order (prefer-standby: standbys first, then any host).
 *
 * @internal
 */
export interface HostPolicy {
  readonly checkRole: boolean
  readonly candidates: () => ReadonlyArray<HostState>
  readonly passes: number
  readonly accepts: (server: ServerRole, pass: number) => boolean
  /** For an open connection: false when its server no longer fits (a failover changed roles). */
  readonly keeps: ((state: HostState) => boolean) | undefined
  /** Connect failures that are definitive for this round: every host answered, none fits. */
  readonly describe: string
}

/** @internal */
export class Topology {
  readonly states: ReadonlyArray<HostState>
  constructor(
    readonly config: ResolvedConfig,
    readonly connector: Connector.Connector,
    readonly runBackground: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
  ) {
    this.states = config.hosts.map((host) => new HostState(host))
  }

  state(host: HostPort): HostState {
    return this.states.find((s) => s.host === host) ?? this.states.find((s) => s.key === `${host.host}:${host.port}`)!
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
    state.role = server.role
    state.readOnly = server.readOnly
    state.down = false
    state.lastError = undefined
    if (changed) {
      this.runBackground(
        Effect.logWarning(`host ${state.label} is now a ${server.role}`).pipe(
          Effect.annotateLogs({ pool: this.config.name, host: state.host.host, port: state.host.port, role: server.role })
        )
      )
    }
  }

  /** A host failed to answer: mark it down and probe it per the reconnect schedule until it answers. */
  markDown(state: HostState, error: ConnectionError): void {
    state.lastError = error
    if (state.down) return
    state.down = true
    state.probe = this.runBackground(
      this.probe(state).pipe(
        Effect.retry({ schedule: this.config.reconnect }),
        Effect.ignore,
        Effect.ensuring(Effect.sync(() => {
          state.probe = undefined
        }))
      )
    )
    this.runBackground(
      Effect.logWarning(`host ${state.label} is down: ${error.message}`).pipe(
        Effect.annotateLogs({ pool: this.config.name, host: state.host.host, port: state.host.port })
      )
    )
  }

  /** One look at a host on a short-lived connection: is it up, and what is it? */
  probe(state: HostState): Effect.Effect<void, ConnectionError> {
    const options = config_.connectOptions(this.config, state.host)
    return Effect.scoped(
      Effect.flatMap(
        this.connector.connect(options, () => {}),
        (driver) =>
          Effect.mapError(
            queryRole(driver),
            (error) =>
              error._tag === "ConnectionError" ? error : new ConnectionError({
                message: `Cannot read the role of ${state.label}: ${error.message}`,
                cause: error,
                host: state.host.host,
                port: state.host.port
              })
          )
      )
    ).pipe(
      Effect.timeoutFail({
        duration: this.config.connectTimeout,
        onTimeout: () =>
          new ConnectionError({
            message: `Cannot connect (${state.label}): connectTimeout of ${
              Duration.format(this.config.connectTimeout)
            } ran out`,
            host: state.host.host,
            port: state.host.port
          })
      }),
      Effect.tapBoth({
        onFailure: (error) => Effect.sync(() => this.markDown(state, error)),
        onSuccess: (server) => Effect.sync(() => this.markUp(state, server))
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
    ).pipe(Effect.repeat(Schedule.spaced(Duration.millis(this.config.roleCheckInterval))), Effect.zipRight(Effect.never))
  }
}

/** The policy of the pool for ordinary work: every host, `target_session_attrs`. */
/** @internal */
export const mainPolicy = (config: ResolvedConfig, topology: Topology | undefined): HostPolicy => {
  const attrs = config.targetSessionAttrs
  if (topology === undefined) {
    const only = new HostState(config.hosts[0]!)
    return {
      checkRole: attrs !== "any",
      candidates: () => [only],
      passes: attrs === "prefer-standby" ? 2 : 1,
      accepts: (server, pass) => accepts(attrs, server, pass),
      keeps: undefined,
      describe: `target_session_attrs=${attrs}`
    }
  }
  return {
    checkRole: true,
    candidates: () => topology.ordered(topology.states),
    passes: attrs === "prefer-standby" ? 2 : 1,
    accepts: (server, pass) => accepts(attrs, server, pass),
    keeps: attrs === "any" || attrs === "prefer-standby"
      ? undefined
      : (state) => state.role === undefined || accepts(attrs, { role: state.role, readOnly: state.readOnly ?? false }, 0),
    describe: `target_session_attrs=${attrs}`
  }
}

/** The policy of a read pool: one host, which must be a standby. */
/** @internal */
export const standbyPolicy = (state: HostState): HostPolicy => ({
  checkRole: true,
  candidates: () => [state],
  passes: 1,
  accepts: (server) => server.role === "standby",
  keeps: (s) => s.role !== "primary",
  describe: "a standby"
})
