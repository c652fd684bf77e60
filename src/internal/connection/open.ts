/**
 * Opening connections on the hosts of a pool: one host within `connectTimeout` (TCP, TLS, authentication,
 * then `setSession` and the server's role when asked), and the one host loop that the pool, `listen` and the
 * topology's probe share. Whether a failure is worth retrying travels in the error (`retryable`).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Connector from "../../Connector.js"
import { ConnectionError, type QueryError } from "../../PgPoolError.js"
import { connectOptions, type ResolvedConfig } from "../config/resolve.js"
import type { HostState, ServerRole } from "./hosts.js"
import type { Topology } from "./topology.js"

/** What opening connections needs. @internal */
export interface Opener {
  readonly config: ResolvedConfig
  readonly connector: Connector.Connector
}

/**
 * The driver's report that a connection was lost outside of any statement, kept until someone is there to
 * hear it (the pool's connection once it is made, the listener once it keeps the connection).
 *
 * @internal
 */
class LossSignal {
  seen: ConnectionError | undefined = undefined
  target: ((error: ConnectionError) => void) | undefined = undefined
  readonly report = (error: ConnectionError): void => {
    if (this.target !== undefined) this.target(error)
    else if (this.seen === undefined) this.seen = error
  }
  attach(target: (error: ConnectionError) => void): void {
    this.target = target
    const seen = this.seen
    this.seen = undefined
    if (seen !== undefined) target(seen)
  }
}

/** A connection just opened, in a Scope of its own (closing it closes the connection). @internal */
export interface Opened {
  readonly driver: Connector.Connection
  readonly scope: Scope.CloseableScope
  /** The server's role, when it was read. */
  readonly server: ServerRole | undefined
  /** Where the driver reports the loss of this connection: attach to hear it (a loss before is kept). */
  readonly loss: LossSignal
}

/** The statement that tells what a server is. @internal */
const roleQuery = "select pg_is_in_recovery() as in_recovery, current_setting('transaction_read_only') as read_only"

/** @internal */
const queryRole = (driver: Connector.Connection): Effect.Effect<ServerRole, ConnectionError | QueryError> =>
  Effect.map(Connector.query(driver, roleQuery), (result) => {
    const row = result.rows[0] ?? {}
    const inRecovery = row.in_recovery === true || row.in_recovery === "t"
    return { role: inRecovery ? "standby" : "primary", readOnly: inRecovery || row.read_only === "on" }
  })

const setSession = (
  driver: Connector.Connection,
  statements: ReadonlyArray<string>,
  options: Connector.ConnectOptions
): Effect.Effect<void, ConnectionError> =>
  statements.length === 0 ? Effect.void : Effect.forEach(statements, (text) => Connector.query(driver, text), {
    discard: true
  }).pipe(
    Effect.mapError((error) =>
      error._tag === "ConnectionError" ? error : new ConnectionError({
        message: `setSession statement failed (${options.host}:${options.port}/${options.database}): ${error.message}`,
        cause: error,
        host: options.host,
        port: options.port,
        database: options.database,
        code: error.code
      })
    )
  )

const readRole = (
  driver: Connector.Connection,
  state: HostState,
  database: string
): Effect.Effect<ServerRole, ConnectionError> =>
  Effect.mapError(queryRole(driver), (error) =>
    error._tag === "ConnectionError" ? error : new ConnectionError({
      message: `Cannot read the role of ${state.key}: ${error.message}`,
      cause: error,
      host: state.host.host,
      port: state.host.port,
      database
    }))

/**
 * Connects to one host within `connectTimeout`: TCP, TLS, authentication, then the `setSession` statements
 * and the server's role when asked. The connection is in a Scope of its own, closed when this fails.
 *
 * @internal
 */
export const openOn = (
  opener: Opener,
  state: HostState,
  steps: { readonly setSession: boolean; readonly checkRole: boolean }
): Effect.Effect<Opened, ConnectionError> => {
  const config = opener.config
  const host = state.host
  const loss = new LossSignal()
  return Effect.flatMap(
    Scope.make(),
    (scope) =>
      Effect.flatMap(
        config.credentials === undefined ? Effect.succeed({}) : config.credentials.get,
        (credentials) => {
          const options = connectOptions(config, host, credentials)
          return Effect.flatMap(
            Effect.map(opener.connector.connect(options, loss.report), (driver) => config.pooler.watch(driver)),
            (driver) =>
              Effect.zipRight(
                steps.setSession ? setSession(driver, config.setSession, options) : Effect.void,
                Effect.map(
                  steps.checkRole ? readRole(driver, state, config.database) : Effect.succeed(undefined),
                  (server): Opened => ({ driver, scope, server, loss })
                )
              )
          )
        }
      ).pipe(
        Scope.extend(scope),
        Effect.timeoutFail({
          duration: config.connectTimeout,
          onTimeout: () =>
            new ConnectionError({
              message: `Cannot connect (${host.host}:${host.port}/${config.database}): connectTimeout of ${
                Duration.format(config.connectTimeout)
              } ran out`,
              host: host.host,
              port: host.port,
              database: config.database
            })
        }),
        Effect.onExit((exit) => Exit.isFailure(exit) ? Scope.close(scope, exit) : Effect.void)
      )
  )
}

/** Why no host served: the failure of each (first pass), the last connect error, how many had the wrong role. @internal */
export interface HostsFailure {
  readonly failures: ReadonlyArray<string>
  readonly last: ConnectionError | undefined
  readonly mismatches: number
  /** Some host did not answer in a way that may go away (see `isTransientConnectError`). */
  readonly transient: boolean
  /** How many connects were tried (0: every host was known to be down or of the wrong role). */
  readonly attempted: number
  /** The failed connects of the hosts passed over as down, since each was last up. */
  readonly downFailures: number
}

/**
 * The host loop: the candidates in order, pass after pass, until one connects and is accepted. Each host's
 * outcome is marked in the topology (up with its role, or down); a host whose server is not accepted is closed
 * again. With `skipKnown`, a host known to be down, or known to have a role the loop does not accept, is not
 * tried at all (the topology probes down hosts and rechecks roles, one attempt at a time, whatever the rate of
 * requests). Only the connects run through `restore` (interruptible): the caller holds the connection returned
 * from the first step after it.
 *
 * @internal
 */
export const tryHosts = (
  topology: Topology | undefined,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
  loop: {
    readonly passes: number
    readonly candidates: () => ReadonlyArray<HostState>
    readonly accepts: (server: ServerRole | undefined, pass: number) => boolean
    readonly open: (state: HostState) => Effect.Effect<Opened, ConnectionError>
    readonly skipKnown: boolean
  }
): Effect.Effect<{ readonly opened: Opened; readonly state: HostState }, HostsFailure> =>
  Effect.gen(function*() {
    const failures: Array<string> = []
    let last: ConnectionError | undefined
    let mismatches = 0
    let transient = false
    let attempted = 0
    let downFailures = 0
    for (let pass = 0; pass < loop.passes; pass++) {
      for (const state of loop.candidates()) {
        if (loop.skipKnown && state.leftToProbe) {
          last = state.lastError ?? last
          transient ||= state.lastError === undefined || isTransientConnectError(state.lastError)
          if (pass === 0) {
            downFailures += state.failures
            failures.push(state.unreachable)
          }
          continue
        }
        if (
          loop.skipKnown && state.role !== undefined &&
          !loop.accepts({ role: state.role, readOnly: state.readOnly ?? false }, pass)
        ) {
          mismatches++
          if (pass === 0) failures.push(`${state.key} is a ${state.role}${state.readOnly ? " (read-only)" : ""}`)
          continue
        }
        attempted++
        const attempt = yield* Effect.exit(restore(loop.open(state)))
        if (Exit.isFailure(attempt)) {
          const failure = Cause.failureOption(attempt.cause)
          if (Option.isNone(failure)) return yield* Effect.failCause(Cause.stripFailures(attempt.cause))
          last = failure.value
          transient ||= isTransientConnectError(last)
          if (pass === 0) failures.push(last.message)
          // a host that did not answer is down; one that answered "no" (a password, TLS) is not probed
          if (isTransientConnectError(last)) topology?.markDown(state, last)
          continue
        }
        const opened = attempt.value
        const server = opened.server
        if (server !== undefined) topology?.markUp(state, server)
        if (!loop.accepts(server, pass)) {
          yield* Scope.close(opened.scope, Exit.void)
          mismatches++
          if (pass === 0) failures.push(`${state.key} is a ${server!.role}${server!.readOnly ? " (read-only)" : ""}`)
          continue
        }
        return { opened, state }
      }
    }
    return yield* Effect.fail({ failures, last, mismatches, transient, attempted, downFailures })
  })

/**
 * The error of a host loop that found no host: the connect error itself when there was one host and it did not
 * answer, else the failures of each host, with the last failure's SQLSTATE and the failed connects of the hosts
 * known to be down. When some host answered with the wrong role, retrying now will not change it (a failover
 * takes its time): `retryable` false.
 *
 * @internal
 */
export const noHostFits = (what: string, failure: HostsFailure, database: string): ConnectionError => {
  const { downFailures, failures, last, mismatches } = failure
  if (failures.length === 1 && last !== undefined && mismatches === 0 && downFailures === 0) return last
  return new ConnectionError({
    message: `${what}: ${failures.join("; ")}`,
    cause: last,
    host: last?.host,
    port: last?.port,
    database: last?.database ?? database,
    code: last?.code,
    ...(downFailures > 0 ? { attempts: downFailures } : {}),
    ...(mismatches > 0 ? { retryable: false } : {})
  })
}

const transientConnectCode = (code: string): boolean =>
  code.startsWith("08") || code.startsWith("53") || code.startsWith("57P")

/**
 * A connect failure worth retrying: network errors and the server's "not now" answers. A wrong password, a
 * missing database, a failing `setSession` statement or a TLS mismatch will not heal by retrying.
 *
 * @internal
 */
export const isTransientConnectError = (error: ConnectionError): boolean => {
  if (error.retryable !== undefined) return error.retryable
  if (error.code !== undefined) return transientConnectCode(error.code)
  const cause = error.cause as { readonly code?: unknown; readonly message?: unknown } | undefined
  const code = typeof cause?.code === "string" ? cause.code : ""
  const message = typeof cause?.message === "string" ? cause.message : ""
  return !(code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL") || code.includes("CERT") ||
    /\b(ssl|tls|certificate)\b/i.test(message))
}
