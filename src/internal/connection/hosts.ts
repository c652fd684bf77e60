/**
 * The hosts of a pool and what each server is: its role (primary or standby, read-only or not) as last seen,
 * whether it answers, and the policies that say which hosts a pool's new connections may go to (libpq's
 * `target_session_attrs` and `load_balance_hosts`) and whether an open connection still fits. No I/O here.
 *
 * @internal
 */
import type { HostPort, ResolvedConfig, TargetSessionAttrs } from "../config/resolve.js"
import type { Topology } from "./topology.js"

/** @internal */
export type Role = "primary" | "standby"

/** What is known of one host: written only by the `Topology` (or, with one host, never). @internal */
export class HostState {
  role: Role | undefined = undefined
  readOnly: boolean | undefined = undefined
  down = false
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

/** The policy of the pool for ordinary work: every host, `target_session_attrs`. @internal */
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
