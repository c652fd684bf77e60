/**
 * The live connector over node-postgres. This is the only module of the package that imports `pg`.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import PgCursor from "pg-cursor"
import type * as Connector from "../../Connector.js"
import { ConnectionError, QueryError } from "../../PgPoolError.js"
import { unsendableStatement } from "./limits.js"
import {
  ClientSideError,
  makeStatementCache,
  prepareParameter,
  Statement,
  typesOf,
  unsendableError
} from "./statement.js"
import * as tls from "./tls.js"

const CLOSE_TIMEOUT = Duration.seconds(2)
const DEFAULT_PREPARE_THRESHOLD = 5
const DEFAULT_STATEMENT_CACHE_SIZE = 100
const CANCEL_TIMEOUT = Duration.seconds(5)

interface Target {
  readonly host: string
  readonly port: number
  readonly database: string
}

/** @internal */
const isDatabaseError = (u: unknown): u is pg.DatabaseError =>
  u instanceof pg.DatabaseError ||
  (typeof u === "object" && u !== null && "severity" in u && typeof (u as { code?: unknown }).code === "string")

const connectionLostCodes = new Set(["57P01", "57P02", "57P03", "57P05"])

/** How long after a CancelRequest a 57014 of a statement it was not meant for is taken for that request's (ms). */
const STRAY_CANCEL_WINDOW = 5_000

/**
 * True when an error reported by the driver means that the connection itself is unusable, as opposed to a
 * statement that failed on a healthy connection.
 *
 * @internal
 */
const isConnectionFailure = (cause: unknown): boolean => {
  if (cause instanceof ClientSideError) return false
  if (!isDatabaseError(cause)) return true
  const code = cause.code ?? ""
  // a protocol violation at ERROR level (a Bind with the wrong number of parameters) leaves the session usable
  return cause.severity === "FATAL" || cause.severity === "PANIC" ||
    (code.startsWith("08") && !(code === "08P01" && cause.severity === "ERROR")) || connectionLostCodes.has(code)
}

const describe = (cause: unknown): string => {
  if (typeof cause === "object" && cause !== null && "message" in cause && typeof cause.message === "string") {
    const code = (cause as { code?: unknown }).code
    return typeof code === "string" && !cause.message.includes(code) ? `${cause.message} (${code})` : cause.message
  }
  return String(cause)
}

/** @internal */
const toQueryError = (cause: pg.DatabaseError): QueryError =>
  new QueryError({
    message: `${cause.message} (SQLSTATE ${cause.code})`,
    code: cause.code ?? "XX000",
    severity: cause.severity,
    detail: cause.detail,
    hint: cause.hint,
    position: cause.position === undefined ? undefined : Number(cause.position),
    schema: cause.schema,
    table: cause.table,
    column: cause.column,
    constraint: cause.constraint,
    where: cause.where,
    cause
  })

/** @internal */
const toConnectionError = (target: Target, what: string, cause: unknown, safeToRetry = false): ConnectionError =>
  new ConnectionError({
    message: `${what} (${target.host}:${target.port}/${target.database}): ${describe(cause)}`,
    cause,
    host: target.host,
    port: target.port,
    database: target.database,
    code: isDatabaseError(cause) ? cause.code : undefined,
    ...(safeToRetry ? { safeToRetry } : {})
  })

/** What a connect failure means, in plain words, where the server's message alone does not say it. */
const connectHint = (cause: unknown, user: string): string | undefined => {
  if (cause instanceof MissingPasswordError) {
    return "configure one: password, a password in the URL, or PGPASSWORD for PgPoolLive; not retried"
  }
  if (!isDatabaseError(cause)) return undefined
  switch (cause.code) {
    case "28P01":
      return `the server rejected the password of user "${user}"; not retried`
    case "28000":
      return `the server does not let user "${user}" in (no such role, or refused by pg_hba.conf); not retried`
    case "3D000":
      return "no such database on this server; not retried"
    default:
      return undefined
  }
}

/** A failed connect, saying what failed: TLS, authentication, the network. @internal */
const toConnectError = (
  target: Target,
  options: Connector.ConnectOptions,
  cause: unknown
): ConnectionError => {
  const tlsFailure = tls.describeTlsFailure(cause, target.host, tls.modeOf(options.ssl))
  const hint = tlsFailure === undefined ? connectHint(cause, options.user) : undefined
  return new ConnectionError({
    message: `Cannot connect (${target.host}:${target.port}/${target.database}): ${tlsFailure ?? describe(cause)}${
      hint === undefined ? "" : ` (${hint})`
    }`,
    cause: tlsFailure === undefined ? cause : tls.plainTlsCause(cause),
    host: target.host,
    port: target.port,
    database: target.database,
    code: isDatabaseError(cause) ? cause.code : undefined,
    ...(tlsFailure !== undefined || hint !== undefined ? { retryable: false } : {})
  })
}

/** A statement's failure; `statement` (when given) tells whether a lost connection's statement never ran. */
const toStatementError = (
  target: Target,
  cause: unknown,
  statement?: Statement | undefined
): QueryError | ConnectionError =>
  cause instanceof ClientSideError
    ? new QueryError({ message: `${cause.message} (SQLSTATE ${cause.code})`, code: cause.code, cause: cause.cause })
    : isConnectionFailure(cause)
    ? statement !== undefined && statement.neverRan(cause as Error)
      ? toConnectionError(target, "Connection lost before the statement ran", cause, true)
      : toConnectionError(target, "Connection lost", cause)
    : toQueryError(cause as pg.DatabaseError)

/**
 * The handle of a pipelined statement. Its cancel is made only when asked for: an Effect and a closure per
 * statement, made up front, measured 10-12 µs of client CPU per statement (garbage collection), a third of
 * what a `SELECT 1` costs.
 */
class PipelinedHandle implements Connector.InFlight {
  constructor(
    private readonly statement: Statement,
    private readonly cancelOf: (statement: Statement) => Effect.Effect<void>
  ) {}
  get cancel(): Effect.Effect<void> {
    return Effect.suspend(() => this.cancelOf(this.statement))
  }
}

/** The server asked for a password and none was configured. @internal */
class MissingPasswordError extends Error {
  constructor() {
    super("the server asked for a password and none was configured")
    this.name = "MissingPasswordError"
  }
}

/** The startup `options`: libpq's `options` followed by `-c name=value` for each run-time parameter. */
const startupOptions = (options: Connector.ConnectOptions): string | undefined => {
  const parts: Array<string> = []
  if (options.options !== undefined && options.options.trim() !== "") parts.push(options.options.trim())
  for (const [name, value] of Object.entries(options.parameters)) {
    parts.push(`-c ${name}=${value.replace(/([\\ ])/g, "\\$1")}`)
  }
  return parts.length === 0 ? undefined : parts.join(" ")
}

/**
 * The driver's settings, every one given so that pg reads nothing from the environment behind the
 * configuration (`PGPASSWORD`, `~/.pgpass`, `PGSSLMODE`, `PGAPPNAME`, `PGOPTIONS`, `PGCLIENTENCODING`,
 * `PGSSLNEGOTIATION`; pg falls back to them for every value left out or falsy).
 */
const clientConfig = (options: Connector.ConnectOptions, ssl: tls.Attempt): pg.ClientConfig => {
  const password = options.password
  const config: pg.ClientConfig & Record<string, unknown> = {
    host: options.host,
    port: options.port,
    database: options.database,
    user: options.user,
    // a function, so that pg never looks for PGPASSWORD or ~/.pgpass; called only when the server asks
    password: password === undefined
      ? () => Promise.reject(new MissingPasswordError())
      : () => Redacted.value(password),
    ssl,
    keepAlive: true,
    binary: false,
    ...(options.types === undefined ? {} : { types: options.types as pg.CustomTypesConfig }),
    client_encoding: "utf8",
    sslnegotiation: "postgres"
  }
  return config
}

/** What pg took from the environment anyway (its falsy-means-unset rule): set back to exactly the options. */
const pinStartup = (client: pg.Client, options: Connector.ConnectOptions): void => {
  const internals = client as unknown as {
    connectionParameters: Record<string, unknown>
    replication: unknown
    binary: boolean
  }
  const params = internals.connectionParameters
  params.application_name = options.applicationName
  params.fallback_application_name = undefined
  params.options = startupOptions(options)
  params.replication = undefined
  internals.replication = undefined
  internals.binary = false
}

const transactionStatus = (status: string): Connector.TransactionStatus =>
  status === "I" ? "idle" : status === "T" ? "transaction" : status === "E" ? "failed" : "unknown"

interface CancelConnection {
  readonly stream: { destroy(): void }
  connect(port: number, host: string): void
  cancel(pid: number, secretKey: number): void
  requestSsl(): void
  on(event: string, listener: (...args: Array<unknown>) => void): void
}

interface ClientState {
  connected: boolean
  lost: boolean
  closing: boolean
  /** What ended the connection first (the server's FATAL, a socket error): said by the statements after it. */
  lostBy?: unknown
}

interface PgClientInternals {
  readonly connection: {
    readonly stream: {
      readonly errored: unknown
      readonly writable: boolean
      readonly writableCorked: number
      write(buffer: Buffer): boolean
      destroy(error?: Error): void
      cork(): void
      uncork(): void
    }
    on(event: "readyForQuery" | "parseComplete" | "bindComplete" | "closeComplete", listener: () => void): void
    prependListener(event: "readyForQuery", listener: (message: { readonly status?: string }) => void): void
  }
  readyForQuery: boolean
  /** The statement whose answers pg is reading (written by pg, or made so by the pipeline). */
  /** The statement whose answers pg is reading (`activeQuery` before pg 8.17). */
  _activeQuery?: unknown
  activeQuery?: unknown
  /** The statements pg has not written yet (`queryQueue` before pg 8.17). */
  readonly _queryQueue?: ReadonlyArray<unknown>
  readonly queryQueue?: ReadonlyArray<unknown>
  readonly processID: number | null
  readonly secretKey: number | null
}

/**
 * A CancelRequest on a new socket, over TLS with the session's settings when the session used TLS (libpq
 * does the same since PostgreSQL 17; a cancel key is as good as a session's password).
 */
const sendCancel = (
  target: Target,
  ssl: tls.Attempt,
  pid: number,
  secretKey: number
): Effect.Effect<void, ConnectionError> =>
  Effect.interruptible(Effect.async<void, ConnectionError>((resume) => {
    const con = new pg.Connection({ ssl } as pg.ConnectionConfig) as unknown as CancelConnection
    let done = false
    const finish = (error?: unknown) => {
      if (done) return
      done = true
      con.stream.destroy()
      resume(error === undefined ? Effect.void : Effect.fail(toConnectionError(target, "Cancel request failed", error)))
    }
    con.on("connect", () => {
      if (ssl === false) con.cancel(pid, secretKey)
      else con.requestSsl()
    })
    con.on("sslconnect", () => {
      con.cancel(pid, secretKey)
    })
    con.on("end", () => finish())
    con.on("error", (error: unknown) => finish(error))
    con.connect(target.port, target.host)
    return Effect.sync(() => finish())
  })).pipe(
    Effect.timeoutFail({
      duration: CANCEL_TIMEOUT,
      onTimeout: () => toConnectionError(target, "Cancel request failed", new Error("timed out"))
    })
  )

const makeConnection = (
  client: pg.Client,
  target: Target,
  state: ClientState,
  options: Connector.ConnectOptions,
  ssl: tls.Attempt
): Connector.Connection => {
  const internals = client as unknown as PgClientInternals
  // pg 8.17 renamed its fields (the old names became deprecated getters): read whichever this pg has
  const modern = "_activeQuery" in internals
  const activeQuery = (): unknown => modern ? internals._activeQuery : internals.activeQuery
  const setActiveQuery = (query: unknown): void => {
    if (modern) internals._activeQuery = query
    else internals.activeQuery = query
  }
  const queued = (): number => (modern ? internals._queryQueue : internals.queryQueue)?.length ?? 0
  let inFlight = 0
  let idleWaiters: Array<() => void> = []
  const settle = () => {
    inFlight--
    if (inFlight === 0 && idleWaiters.length > 0) {
      const waiters = idleWaiters
      idleWaiters = []
      for (const wake of waiters) wake()
    }
  }
  const backendPid = internals.processID ?? 0
  const secretKey = internals.secretKey ?? 0
  const types = typesOf(client)
  const cache = makeStatementCache(
    options.statementCache?.threshold ?? DEFAULT_PREPARE_THRESHOLD,
    options.statementCache?.capacity ?? DEFAULT_STATEMENT_CACHE_SIZE,
    options.statementCache?.pooler
  )
  // pg reports a statement's error on ErrorResponse, before the ReadyForQuery that carries the transaction
  // status: an error is passed on only once that ReadyForQuery has been read (or the connection has ended).
  let afterReady: Array<() => void> = []
  const flushReady = () => {
    if (afterReady.length === 0) return
    const pending = afterReady
    afterReady = []
    for (const fn of pending) fn()
  }
  // the transaction status of the last ReadyForQuery, read before pg hands the message to the running statement
  // (pg keeps it itself only from 8.21); a connection is handed over after its first ReadyForQuery, "I"
  let txStatus = "I"
  internals.connection.prependListener("readyForQuery", (message) => {
    txStatus = message.status ?? txStatus
  })
  internals.connection.on("readyForQuery", flushReady)
  client.on("end", flushReady)
  // the first answers to a statement over the extended protocol, which pg does not pass on to the statement:
  // marked on it, so that a lost connection's statement that was answered is never taken for one that never ran
  // (the statement pg is reading answers for: with pipelining, statements written after it are in flight too)
  const answered = () => {
    const active = activeQuery()
    if (active instanceof Statement) active.answered()
  }
  internals.connection.on("parseComplete", answered)
  internals.connection.on("bindComplete", answered)
  internals.connection.on("closeComplete", answered)
  const whenReady = (fn: () => void) => {
    if (internals.readyForQuery || state.lost) fn()
    else afterReady.push(fn)
  }
  // pipelining (sendPipelined): the statements written behind pg's active query, in order. pg knows only its
  // active query; when the ReadyForQuery of one has been read (pg has finished it), the next one here is made
  // pg's active query, so the answers that follow reach it. While any statement is here, every statement is
  // written behind it, never through pg's own queue (pg would take the next ReadyForQuery for its own).
  const behind: Array<Statement> = []
  /** When this connection last sent a CancelRequest (performance.now()), to recognise one that landed late. */
  let lastCancel = -Infinity
  /** The FATAL the server sent before ending the connection: the statements behind it never ran. */
  let fatal: Error | undefined
  let corked = false
  const stream = internals.connection.stream
  /** The statements written in this turn, held back by the cork: if the write at its end is refused, none left. */
  const turn: Array<Statement> = []
  const uncork = () => {
    corked = false
    const sound = stream.errored == null
    stream.uncork()
    // refused at once by the system (a reset socket): nothing of the turn's write left (see Statement's `send`)
    if (sound && stream.errored != null) { for (const statement of turn) statement.unsent() }
    turn.length = 0
  }
  /** Holds this turn's writes back, to go out in one write at its end. */
  const corkTurn = () => {
    if (corked) return
    corked = true
    stream.cork()
    process.nextTick(uncork)
  }
  internals.connection.on("readyForQuery", () => {
    // pg may have started a statement of its own meanwhile (one sent from a callback of the statement that just
    // finished, while nothing was behind): it was written before the ones here, which wait for its end
    if (activeQuery() != null || !internals.readyForQuery) return
    const next = behind.shift()
    if (next === undefined) return
    setActiveQuery(next)
    internals.readyForQuery = false
    next.reachedHead()
  })
  const failBehind = (cause: unknown) => {
    const error = fatal ?? cause
    for (const statement of behind.splice(0)) {
      statement.handleError(error as Error)
      statement.reachedHead()
    }
  }
  client.on("end", () => failBehind(new Error("Connection terminated unexpectedly")))
  client.on("error", (error: unknown) => failBehind(error))
  const cancelNow = Effect.suspend(() => {
    if (state.lost) return Effect.void
    lastCancel = performance.now()
    return Effect.catchAllCause(sendCancel(target, ssl, backendPid, secretKey), () => Effect.void)
  })
  /** Cancels exactly `statement`, a pipelined one (see `Connection.sendPipelined`). */
  const cancelPipelined = (statement: Statement): Effect.Effect<void> => {
    if (statement.finished || state.lost) return Effect.void
    statement.cancelRequested = true
    if (activeQuery() === statement) return cancelNow
    // not the server's yet: the CancelRequest waits until the statements ahead of it have finished
    return Effect.async<void>((resume) => {
      statement.onHead = () => resume(statement.finished ? Effect.void : cancelNow)
    })
  }
  /** Writes `statement` behind the statements in flight (one write per turn of the event loop). */
  const writeBehind = (statement: Statement) => {
    if (state.lost) {
      // the connection is gone (its end may have come already): nothing more is written, nothing would answer
      return statement.handleError((fatal ?? new Error("Connection terminated: the statement was not sent")) as Error)
    }
    corkTurn()
    statement.submit(internals.connection as unknown as Parameters<Statement["submit"]>[0])
    // a statement not written (the socket is gone) gets no ReadyForQuery: the connection's end fails it
    if (statement.wrote) behind.push(statement)
    else if (!statement.finished) statement.handleError(new Error("Connection terminated: the statement was not sent"))
  }
  const submit = (
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    prefix: ReadonlyArray<string> | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: Connector.QueryResult | undefined) => void,
    resent: boolean,
    pipelined = false
  ): Statement => {
    // written behind statements in flight: always while any statement is behind; a pipelined one also when pg
    // is busy with its own (and has none queued)
    const writtenBehind = behind.length > 0 ||
      (pipelined && !internals.readyForQuery && queued() === 0)
    const statement: Statement = new Statement(
      text,
      params,
      rowMode,
      types,
      cache,
      (failure, result) => {
        if (failure) {
          // refused by pg because the connection had failed already ("not queryable"): it says what ended it (the
          // server's FATAL and its SQLSTATE, or the socket's error)
          const lostBy = fatal ?? state.lostBy
          const error = isConnectionFailure(failure) && !isDatabaseError(failure) && lostBy !== undefined
            ? lostBy as Error
            : failure
          if (isConnectionFailure(error)) {
            state.lost = true
            state.lostBy ??= error
            if ((error as { readonly severity?: unknown }).severity === "FATAL") fatal ??= error
          }
          // a statement of an open transaction is never safe to send again alone: the transaction is lost with it
          const mapped = toStatementError(target, error, txStatus === "I" ? statement : undefined)
          whenReady(() => {
            // a prepared statement gone stale did not run: outside a transaction it is sent again, as text; as the
            // first statement of a transaction (after its BEGIN) the transaction is rolled back and begun again
            if (statement.stale && !resent && !state.lost) {
              const status = txStatus
              if (prefix === undefined && status === "I") {
                return void submit(text, params, rowMode, prefix, callback, true, pipelined)
              }
              if (prefix !== undefined && status === "E") {
                return void submit(text, params, rowMode, ["ROLLBACK", ...prefix], callback, true)
              }
            }
            // a CancelRequest meant for the statement before it that reached it instead (the server had finished
            // that one): cancelled in its own implicit transaction, it had no effect, so it is sent again
            if (
              mapped.code === "57014" && !statement.cancelRequested && statement.alone && !state.lost &&
              performance.now() - lastCancel < STRAY_CANCEL_WINDOW && error.message.includes("user request")
            ) {
              return void submit(text, params, rowMode, prefix, callback, resent, true)
            }
            settle()
            callback(mapped, undefined)
          })
          return
        }
        settle()
        callback(undefined, result)
      },
      prefix,
      writtenBehind
    )
    if (writtenBehind) {
      writeBehind(statement)
    } else {
      // corked too: a statement written behind it in this turn (the next checkout's, behind a COMMIT handed
      // over, see `sendBehind`) goes out in the same write
      corkTurn()
      client.query(statement as unknown as pg.Submittable)
    }
    // (written within this turn's cork: corkTurn ran above for every statement that was written)
    if (statement.wrote) turn.push(statement)
    return statement
  }
  return {
    backendPid,
    send: (text, params, rowMode, callback) => {
      inFlight++
      submit(text, params, rowMode, undefined, callback, false)
    },
    sendAfter: (prefix, text, params, rowMode, callback) => {
      inFlight++
      submit(text, params, rowMode, prefix, callback, false)
    },
    sendPipelined: (text, params, rowMode, callback) => {
      inFlight++
      return new PipelinedHandle(submit(text, params, rowMode, undefined, callback, false, true), cancelPipelined)
    },
    sendBehind: (prefix, text, params, rowMode, callback) => {
      inFlight++
      const statement = submit(text, params, rowMode, prefix.length === 0 ? undefined : prefix, callback, false, true)
      return new PipelinedHandle(statement, cancelPipelined)
    },
    cursor: (text, params, rowMode) => {
      // serialised here, as a statement's are: pg-cursor would serialise them when pg sends it, which may be in
      // an event handler of the socket, where a throw (a circular object, an array holding itself) ends the
      // process; what a statement refuses is refused here the same way
      const refused = unsendableStatement(text, params)
      if (refused !== undefined) return { read: () => Effect.fail(refused), close: Effect.void }
      let values: Array<unknown> | undefined
      try {
        values = params?.map(prepareParameter)
      } catch (error) {
        const failed = toStatementError(target, unsendableError(error))
        return { read: () => Effect.fail(failed), close: Effect.void }
      }
      const cursor = new PgCursor(text, values, rowMode ? { rowMode } : undefined)
      let open = true
      /** A read is out: the server may be running the statement. */
      let reading = false
      inFlight++
      client.query(cursor)
      const closed = () => {
        if (open) {
          open = false
          settle()
        }
      }
      const closeCursor = Effect.async<void>((resume) => {
        if (!open) return resume(Effect.void)
        // pg-cursor's close waits for a ReadyForQuery, which never comes on a connection that is gone (the
        // server ended it while no read was out): the connection's end finishes the close too
        let finished = false
        const finish = () => {
          if (finished) return
          finished = true
          client.removeListener("end", finish)
          closed()
          resume(Effect.void)
        }
        if (state.lost) return finish()
        client.on("end", finish)
        cursor.close(finish)
      })
      return {
        read: (rows) =>
          Effect.async<ReadonlyArray<Connector.Row>, QueryError | ConnectionError>((resume) => {
            reading = true
            cursor.read(rows, (error, result) => {
              reading = false
              if (error) {
                closed()
                resume(Effect.fail(toStatementError(target, error)))
              } else {
                resume(Effect.succeed(result))
              }
            })
          }),
        // a read still out (the stream was interrupted while the server ran its statement) is cancelled first,
        // or the close would wait for the statement to finish
        close: Effect.suspend(() =>
          reading && open && !state.lost
            ? Effect.zipRight(
              Effect.catchAllCause(sendCancel(target, ssl, backendPid, secretKey), () => Effect.void),
              closeCursor
            )
            : closeCursor
        )
      }
    },
    transactionStatus: () => transactionStatus(txStatus),
    isBusy: () => inFlight > 0,
    awaitIdle: Effect.async<void>((resume) => {
      if (inFlight === 0) return resume(Effect.void)
      const wake = () => resume(Effect.void)
      idleWaiters.push(wake)
      return Effect.sync(() => {
        idleWaiters = idleWaiters.filter((w) => w !== wake)
      })
    }),
    isBroken: () => state.lost,
    probe: () => {
      if (state.lost || !stream.writable) return false
      // a held-back write (corked) would not reach the system now: nothing to learn
      if (stream.writableCorked > 0) return true
      stream.write(NOTHING)
      return stream.errored == null
    },
    cancel: Effect.suspend(() => inFlight > 0 ? sendCancel(target, ssl, backendPid, secretKey) : Effect.void),
    onNotification: (handler) => {
      client.removeAllListeners("notification")
      client.on(
        "notification",
        (message: pg.Notification) =>
          handler({ channel: message.channel, payload: message.payload ?? "", processId: message.processId })
      )
    }
  }
}

const closeClient = (client: pg.Client, state: ClientState): Effect.Effect<void> => {
  const destroy = Effect.catchAllDefect(
    Effect.sync(() => (client as unknown as PgClientInternals).connection.stream.destroy()),
    () => Effect.void
  )
  return Effect.interruptible(Effect.async<void>((resume) => {
    state.closing = true
    state.lost = true
    client.end(() => resume(Effect.void))
  })).pipe(
    Effect.timeoutTo({ duration: CLOSE_TIMEOUT, onSuccess: () => Effect.void, onTimeout: () => destroy }),
    Effect.flatten,
    // a defect, or the wait cut off (it runs in the timeout's child fiber, which an interruption of the fiber
    // closing the connection reaches even in a finalizer): the socket is destroyed
    Effect.catchAllCause(() => destroy)
  )
}

/** The probe's write (see `Connection.probe`): the system refuses even this at once on a socket the peer reset. */
const NOTHING = Buffer.alloc(0)

/** One connect attempt, with or without TLS, whose client is closed when the given Scope closes. */
const connectOnce = (
  options: Connector.ConnectOptions,
  ssl: tls.Attempt,
  onLost: (error: ConnectionError) => void
): Effect.Effect<Connector.Connection, { readonly raw: unknown; readonly error: ConnectionError }, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const state: ClientState = { connected: false, lost: false, closing: false }
      const client = new pg.Client(clientConfig(options, ssl))
      pinStartup(client, options)
      const target: Target = { host: options.host, port: options.port, database: options.database }
      const lost = (cause: unknown) => {
        state.lostBy ??= cause
        if (state.lost) return
        state.lost = true
        if (state.connected && !state.closing) onLost(toConnectionError(target, "Connection lost", cause))
      }
      client.on("error", lost)
      client.on("end", () => lost(new Error("Connection ended")))
      return { client, state, target }
    }),
    ({ client, state }) => closeClient(client, state)
  ).pipe(
    Effect.flatMap(({ client, state, target }) =>
      Effect.async<Connector.Connection, { readonly raw: unknown; readonly error: ConnectionError }>((resume) => {
        client.connect((error: Error | undefined) => {
          if (error) {
            state.lost = true
            resume(Effect.fail({ raw: error, error: toConnectError(target, options, error) }))
          } else {
            state.connected = true
            resume(Effect.succeed(makeConnection(client, target, state, options, ssl)))
          }
        })
        return Effect.sync(() => {
          state.lost = true
          ;(client as unknown as PgClientInternals).connection.stream.destroy()
        })
      }).pipe(
        Effect.timeoutFail({
          duration: options.connectTimeout,
          onTimeout: () => {
            const raw = new Error(`connect timed out after ${Duration.format(options.connectTimeout)}`)
            return { raw, error: toConnectionError(target, "Cannot connect", raw) }
          }
        })
      )
    )
  )

/** An attempt in a Scope of its own: closed at once when it fails, else when the caller's Scope closes. */
const attempt = (
  options: Connector.ConnectOptions,
  ssl: tls.Attempt,
  onLost: (error: ConnectionError) => void
): Effect.Effect<Connector.Connection, { readonly raw: unknown; readonly error: ConnectionError }, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Scope.make(), (inner) =>
      restore(Scope.extend(connectOnce(options, ssl, onLost), inner)).pipe(
        Effect.onExit((exit) => Exit.isFailure(exit) ? Scope.close(inner, exit) : Effect.void),
        Effect.tap(() => Effect.addFinalizer((exit) => Scope.close(inner, exit)))
      ))
  )

/** @internal */
export const make: Connector.Connector = {
  connect: (options, onLost) =>
    Effect.flatMap(
      Effect.mapError(tls.attempts(options.ssl), (cause) =>
        toConnectError({ host: options.host, port: options.port, database: options.database }, options, cause)),
      (attempts) => {
        const [first, second] = attempts
        const once = attempt(options, first!, onLost)
        const both = second === undefined ? once : Effect.catchIf(
          once,
          (failure) =>
            tls.fallsBack(failure.raw),
          () => attempt(options, second, onLost)
        )
        return Effect.mapError(both, (failure) => failure.error)
      }
    )
}
