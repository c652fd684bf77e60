/**
 * The hosts of a pool and what each server is: its role (primary or standby, read-only or not) as last seen,
 * whether it answers, and the policies that say which hosts a pool's new connections may go to (libpq's
 * `target_session_attrs` and `load_balance_hosts`) and whether an open connection still fits. No I/O here.
 *
 * @internal
 */
import type { ConnectionError } from "../../PgPoolError.js"
import { isCredentialFailure } from "../config/resolve.js"
import type { HostPort, ResolvedConfig, TargetSessionAttrs } from "../config/resolve.js"
import type { Topology } from "./topology.js"

/** @internal */
export type Role = "primary" | "standby"

/** What is known of one host: written only by the `Topology` (or, with one host, never). @internal */
export class HostState {
  role: Role | undefined = undefined
  readOnly: boolean | undefined = undefined
  /** It did not answer: no connect is tried until its probe (one at a time, on the reconnect Schedule) gets in. */
  down = false
  /** Its probe loop runs (until it answers or the reconnect Schedule ends): connects leave it to the probe. */
  probing = false
  /** Why it is down. */
  lastError: ConnectionError | undefined = undefined
  /** Failed connects since it was last up (the pools' and the probe's). */
  failures = 0
  /** Down and being probed: connects leave it to the probe. */
  get leftToProbe(): boolean {
    return this.down && this.probing
  }
  /**
   * Why no connect goes to it now, for errors: it did not answer, or (nothing sent to it) the credentials
   * Effect failed, which is not the host's doing; either way it is tried again on the reconnect Schedule.
   */
  get unreachable(): string {
    const error = this.lastError
    return error !== undefined && isCredentialFailure(error)
      ? `${this.key} not tried (${this.failures} connects could not get their credentials; asked again on the reconnect schedule): ${error.message}`
      : `${this.key} is down (${this.failures} failed connects; probed on the reconnect schedule): ${
        error?.message ?? "no answer"
      }`
  }
  /** `host:port`, the host's name in logs, errors and stats. */
  readonly key: string
  constructor(readonly host: HostPort) {
    this.key = `${host.host}:${host.port}`
  }
}

/** @internal */
export interface ServerRole {
  readonly role: Role
  readonly readOnly: boolean
}

/** Does a server with this role satisfy `target_session_attrs` (for prefer-standby: its first pass)? @internal */
const accepts = (attrs: TargetSessionAttrs, server: ServerRole, pass: number): boolean => {
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
  /** What the policy asks for, in the error when no host fits. */
  readonly describe: string
}

/**
 * The policy of the pool for ordinary work: every host, `target_session_attrs`. Roles are read (at each connect
 * and by the topology's checks) when there are several hosts or `target_session_attrs` asks for a role.
 *
 * @internal
 */
export const mainPolicy = (config: ResolvedConfig, topology: Topology): HostPolicy => {
  const attrs = config.targetSessionAttrs
  const several = topology.states.length > 1
  return {
    checkRole: several || attrs !== "any",
    candidates: () => several ? topology.ordered(topology.states) : topology.states,
    passes: attrs === "prefer-standby" ? 2 : 1,
    accepts: (server, pass) => accepts(attrs, server, pass),
    keeps: !several || attrs === "any" || attrs === "prefer-standby"
      ? undefined
      : (state) =>
        state.role === undefined || accepts(attrs, { role: state.role, readOnly: state.readOnly ?? false }, 0),
    describe: `target_session_attrs=${attrs}`
  }
}

/** The policy of a read pool: one host, which must be a standby. @internal */
export const standbyPolicy = (state: HostState): HostPolicy => ({
  checkRole: true,
  candidates: () => [state],
  passes: 1,
  accepts: (server) => server.role === "standby",
  keeps: (s) => s.role !== "primary",
  describe: "a standby"
})
