/**
 * An in-memory PostgreSQL stand-in behind the `Connector` tag: the real pool, transactions and SqlClient
 * run on it. It answers statements from scripted handlers, understands transaction control (BEGIN, COMMIT,
 * ROLLBACK, SAVEPOINT, DISCARD ALL, SET) well enough for the transaction status and `reset` to behave as on a
 * real server, and can be made slow, refuse connections, drop connections or "restart". Time passes through
 * Effect's Clock, so it is deterministic under TestClock.
 *
 * A transaction keeps the modes of its BEGIN (or SET TRANSACTION) for its life: `current_setting` and `SHOW`
 * of `transaction_isolation`, `transaction_read_only` and `transaction_deferrable` answer them, and a write
 * (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, ...) in a read-only transaction fails with SQLSTATE 25006.
 * Outside a transaction they answer the `default_transaction_*` settings. Not modelled: SET TRANSACTION after
 * the first statement (PostgreSQL refuses it), writes to temporary tables (allowed there), data-modifying CTEs
 * and `SELECT ... FOR UPDATE` (refused there).
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Connector from "../../Connector.js"
import { ConnectionError, QueryError } from "../../PgPoolError.js"
import type * as PgPoolTest from "../../PgPoolTest.js"
import { MAX_DEPTH, unsendableParameter, unsendableStatement } from "../connector/limits.js"

type Callback = (error: QueryError | ConnectionError | undefined, result: Connector.QueryResult | undefined) => void

const result = (
  command: string,
  rows: ReadonlyArray<Connector.Row> = [],
  fields?: ReadonlyArray<Connector.FieldInfo>
): Connector.QueryResult => ({
  command,
  rows,
  rowCount: rows.length,
  fields: fields ?? (rows[0] === undefined ? [] : Object.keys(rows[0]).map((name) => ({ name, dataTypeID: 25 })))
})

const queryError = (code: string, message: string, extra: Partial<QueryError> = {}) =>
  new QueryError({ message: `${message} (SQLSTATE ${code})`, code, severity: "ERROR", ...extra })

const commandOf = (text: string): string => {
  const word = /^\s*(\w+)/.exec(text)?.[1]?.toUpperCase() ?? ""
  switch (word) {
    case "INSERT":
      return "INSERT 0 0"
    case "":
      return ""
    default:
      return word
  }
}

const quoted = (value: string) => value.replace(/^['"]|['"]$/g, "")

/**
 * The settings in libpq's `options` (`-c name=value`, `-cname=value`, `--name=value`; a backslash escapes a
 * space), as the server reads them at startup.
 */
const optionSettings = (options: string): Array<[string, string]> => {
  const words: Array<string> = []
  let word = ""
  for (let i = 0; i < options.length; i++) {
    const c = options[i]!
    if (c === "\\" && i + 1 < options.length) word += options[++i]
    else if (c === " " || c === "\t") {
      if (word !== "") words.push(word)
      word = ""
    } else word += c
  }
  if (word !== "") words.push(word)
  const settings: Array<[string, string]> = []
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!
    const setting = w === "-c"
      ? words[++i]
      : w.startsWith("-c")
      ? w.slice(2)
      : w.startsWith("--")
      ? w.slice(2)
      : undefined
    const eq = setting?.indexOf("=") ?? -1
    if (setting !== undefined && eq > 0) settings.push([setting.slice(0, eq).replace(/-/g, "_"), setting.slice(eq + 1)])
  }
  return settings
}

const defaultSettings: Readonly<Record<string, string>> = {
  statement_timeout: "0",
  lock_timeout: "0",
  idle_in_transaction_session_timeout: "0",
  application_name: "",
  search_path: "\"$user\", public",
  TimeZone: "UTC",
  default_transaction_isolation: "read committed",
  default_transaction_read_only: "off",
  default_transaction_deferrable: "off",
  transaction_isolation: "read committed",
  transaction_read_only: "off",
  transaction_deferrable: "off",
  server_version: "18.0"
}

/** The characteristics of a transaction, as `current_setting` and `SHOW` name them. */
const characteristics = ["transaction_isolation", "transaction_read_only", "transaction_deferrable"] as const

/**
 * Reads the transaction modes of `BEGIN`, `START TRANSACTION` and `SET TRANSACTION` (ISOLATION LEVEL ...,
 * READ ONLY / READ WRITE, [NOT] DEFERRABLE) as setting values.
 */
const transactionModes = (modes: string): Map<string, string> => {
  const found = new Map<string, string>()
  const isolation = /\bISOLATION\s+LEVEL\s+(SERIALIZABLE|REPEATABLE\s+READ|READ\s+COMMITTED|READ\s+UNCOMMITTED)\b/i
    .exec(modes)
  if (isolation !== null) found.set("transaction_isolation", isolation[1]!.toLowerCase().replace(/\s+/g, " "))
  const rest = isolation === null ? modes : modes.replace(isolation[0], "")
  const access = /\bREAD\s+(ONLY|WRITE)\b/i.exec(rest)
  if (access !== null) found.set("transaction_read_only", access[1]!.toUpperCase() === "ONLY" ? "on" : "off")
  const deferrable = /\b(NOT\s+)?DEFERRABLE\b/i.exec(rest)
  if (deferrable !== null) found.set("transaction_deferrable", deferrable[1] === undefined ? "on" : "off")
  return found
}

/** Statements that write, refused in a read-only transaction (SQLSTATE 25006), as PostgreSQL names them. */
const writeCommand = (text: string): string | undefined => {
  const words = text.trim().split(/\s+/, 6).map((word) => word.toUpperCase())
  const first = words[0] ?? ""
  switch (first) {
    case "INSERT":
    case "UPDATE":
    case "DELETE":
    case "MERGE":
    case "TRUNCATE":
    case "GRANT":
    case "REVOKE":
    case "COMMENT":
    case "REINDEX":
    case "CLUSTER":
    case "REFRESH":
      return first === "REFRESH" ? "REFRESH MATERIALIZED VIEW" : first
    case "CREATE":
    case "DROP":
    case "ALTER": {
      const object = words.slice(1).filter((word) => word !== "OR" && word !== "REPLACE" && word !== "UNIQUE")
      const kind = object[0] === "MATERIALIZED" ? `${object[0]} ${object[1] ?? ""}` : object[0] ?? ""
      return `${first} ${kind}`.trim()
    }
    default:
      return undefined
  }
}

/**
 * The first parameter the real connector or server would refuse, as they word it: one with no PostgreSQL value
 * (`unsendableParameter`, 22023), then, in it or in the arrays it holds, an object without `toPostgres` that JSON
 * cannot write (a circular one, 22023), or a string holding a NUL, which no PostgreSQL text can (22021). The fake
 * keeps parameters as they are: these are the serialisation failures it models.
 */
const unsendable = (params: ReadonlyArray<unknown> | undefined): QueryError | undefined => {
  for (const [index, value] of (params ?? []).entries()) {
    const why = unsendableParameter(value, index)
    const refused = why === undefined ? unwritable(value, 0) : cannotSend(why)
    if (refused !== undefined) return refused
  }
  return undefined
}

const cannotSend = (why: string, cause?: unknown) =>
  new QueryError({ message: `A parameter cannot be sent: ${why} (SQLSTATE 22023)`, code: "22023", cause })

const unwritable = (value: unknown, depth: number): QueryError | undefined => {
  if (typeof value === "string") {
    return value.includes("\0") ? queryError("22021", "invalid byte sequence for encoding \"UTF8\": 0x00") : undefined
  }
  if (Array.isArray(value)) {
    // no deeper than the real connector's check looks
    for (const element of depth < MAX_DEPTH ? value : []) {
      const refused = unwritable(element, depth + 1)
      if (refused !== undefined) return refused
    }
    return undefined
  }
  if (
    typeof value !== "object" || value === null || value instanceof Date || ArrayBuffer.isView(value) ||
    typeof (value as { toPostgres?: unknown }).toPostgres === "function"
  ) return undefined
  try {
    JSON.stringify(value)
    return undefined
  } catch (error) {
    return cannotSend((error as Error).message, error)
  }
}

/**
 * Statements exempt from the scripted latency (`setLatency`): transaction control and the pool's reset
 * statements, which the pool runs where nothing can interrupt them (the ROLLBACK of an interrupted
 * transaction, the reset of a returned connection). With latency on them, interrupting a transaction under
 * TestClock would wait for a clock that only the test can move.
 */
const controlStatement = /^\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|DISCARD\s+ALL)\b/i

/**
 * A refused connect, worded as the real connector words it: the server's message and SQLSTATE, and for a
 * refusal retrying cannot mend (a wrong password, a role or database that does not exist) what it means, with
 * `retryable: false`.
 */
const refusedError = (refusal: PgPoolTest.Refusal, options: Connector.ConnectOptions): ConnectionError => {
  const { code } = refusal
  const final = code === undefined ? undefined : finalRefusals[code]
  const message = refusal.message ?? final?.message(options) ?? "connection refused"
  return new ConnectionError({
    message: `Cannot connect (${options.host}:${options.port}/${options.database}): ${message}${
      code === undefined || message.includes(code) ? "" : ` (${code})`
    }${final === undefined ? "" : ` (${final.hint(options)})`}`,
    host: options.host,
    port: options.port,
    database: options.database,
    code,
    ...(final === undefined ? {} : { retryable: false })
  })
}

const finalRefusals: Readonly<
  Record<string, {
    readonly message: (options: Connector.ConnectOptions) => string
    readonly hint: (options: Connector.ConnectOptions) => string
  }>
> = {
  "28P01": {
    message: (options) => `password authentication failed for user "${options.user}"`,
    hint: (options) => `the server rejected the password of user "${options.user}"; not retried`
  },
  "28000": {
    message: (options) => `role "${options.user}" does not exist`,
    hint: (options) =>
      `the server does not let user "${options.user}" in (no such role, or refused by pg_hba.conf); not retried`
  },
  "3D000": {
    message: (options) => `database "${options.database}" does not exist`,
    hint: () => "no such database on this server; not retried"
  }
}

/** @internal */
export class FakeBackend implements Connector.Connection {
  status: "idle" | "transaction" | "failed" = "idle"
  readonly settings = new Map<string, string>()
  readonly savepoints: Array<string> = []
  /**
   * The settings as the transaction found them, and the session-level SETs it made: a ROLLBACK returns to the
   * first, a COMMIT keeps the second (and drops what SET LOCAL changed), as PostgreSQL does.
   */
  txStart: Map<string, string> | undefined = undefined
  readonly txSession = new Map<string, string>()
  /** The same at each savepoint (parallel to `savepoints`): ROLLBACK TO returns to it. */
  readonly savepointStates: Array<{ readonly settings: Map<string, string>; readonly session: Map<string, string> }> =
    []
  readonly listening = new Set<string>()
  inFlight: { readonly callback: Callback; fiber: Fiber.RuntimeFiber<void> | undefined } | undefined = undefined
  idleWaiters: Array<() => void> = []
  lost = false
  closed = false
  /** What ended the connection: the server's message and SQLSTATE, which the statements after it repeat. */
  lostBy: { readonly reason: string; readonly code: string | undefined } | undefined = undefined
  notificationHandler: ((notification: Connector.Notification) => void) | undefined = undefined

  constructor(
    readonly server: FakeServer,
    readonly backendPid: number,
    readonly onLost: (error: ConnectionError) => void,
    readonly options: Connector.ConnectOptions
  ) {
    this.resetSettings()
  }

  /** The session defaults: PostgreSQL's, then the startup parameters (what `RESET ALL` returns to). */
  resetSettings(): void {
    this.settings.clear()
    for (const [name, value] of Object.entries(defaultSettings)) this.settings.set(name, value)
    for (const [name, value] of optionSettings(this.options.options ?? "")) this.settings.set(name, value)
    for (const [name, value] of Object.entries(this.options.parameters)) this.settings.set(name, value)
    if (this.options.applicationName !== undefined) this.settings.set("application_name", this.options.applicationName)
  }

  send(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: Callback
  ): void {
    if (this.lost || this.closed) {
      // it never reached the server, so it is safe to send again, as a real connection reports it; not when a
      // transaction was open: that is lost with the connection. As the real connector, it says what ended the
      // connection (the server's message and SQLSTATE)
      const lostBy = this.lostBy
      const error = lostBy === undefined
        ? this.lostError("Connection lost", undefined, this.status === "idle")
        : this.lostError(`Connection lost: ${lostBy.reason}`, lostBy.code, this.status === "idle")
      return queueMicrotask(() => callback(error, undefined))
    }
    // refused before it is sent, as the real connector refuses it
    const refused = unsendableStatement(text, params) ?? unsendable(params)
    if (refused !== undefined) return queueMicrotask(() => callback(refused, undefined))
    const record = { backendPid: this.backendPid, text, params: params ?? [], transactionStatus: this.status }
    this.server.log.push(record)
    const outcome = this.answer(text, params ?? [])
    const finish = (error: QueryError | ConnectionError | undefined, res: Connector.QueryResult | undefined) => {
      this.inFlight = undefined
      if (error !== undefined && error._tag === "QueryError" && this.status === "transaction") this.status = "failed"
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const wake of waiters) wake()
      const shaped = res !== undefined && rowMode === "array"
        ? { ...res, rows: res.rows.map((row) => Object.values(row)) as unknown as ReadonlyArray<Connector.Row> }
        : res
      callback(error, shaped)
    }
    const delay = (this.exemptFromLatency(text) ? 0 : this.server.latency) + outcome.delay
    const entry: { readonly callback: Callback; fiber: Fiber.RuntimeFiber<void> | undefined } = {
      callback: finish,
      fiber: undefined
    }
    this.inFlight = entry
    const deliver = () => {
      if (this.inFlight !== entry) return
      if (outcome.error !== undefined) {
        finish(outcome.error, undefined)
        // a scripted error of class 08 or 57P ends the connection, as the server's FATAL does
        if (outcome.error._tag === "ConnectionError") this.lose(outcome.error, outcome.reason ?? "")
      } else {
        outcome.apply?.()
        finish(undefined, outcome.result)
      }
    }
    if (delay <= 0) {
      queueMicrotask(deliver)
    } else {
      entry.fiber = this.server.run(Effect.sleep(Duration.millis(delay)).pipe(Effect.zipRight(Effect.sync(deliver))))
    }
  }

  exemptFromLatency(text: string): boolean {
    return controlStatement.test(text) || this.server.resetStatements.has(text)
  }

  /** Starts a transaction with its modes; the others come from the `default_transaction_*` settings. */
  beginTransaction(modes: string): void {
    this.status = "transaction"
    this.txStart = new Map(this.settings)
    this.txSession.clear()
    for (const name of characteristics) {
      this.settings.set(name, this.settings.get(`default_${name}`) ?? defaultSettings[name]!)
    }
    this.setTransactionModes(modes)
  }

  setTransactionModes(modes: string): void {
    for (const [name, value] of transactionModes(modes)) this.settings.set(name, value)
  }

  /**
   * The end of a transaction: its settings are undone (all of them on a rollback, those of SET LOCAL on a
   * commit) and the characteristics return to the session defaults.
   */
  endTransaction(committed: boolean): void {
    this.status = "idle"
    this.savepoints.length = 0
    this.savepointStates.length = 0
    if (this.txStart !== undefined) {
      this.restoreSettings(this.txStart)
      if (committed) { for (const [name, value] of this.txSession) this.settings.set(name, value) }
    }
    this.txStart = undefined
    this.txSession.clear()
    for (const name of characteristics) {
      this.settings.set(name, this.settings.get(`default_${name}`) ?? defaultSettings[name]!)
    }
  }

  restoreSettings(settings: ReadonlyMap<string, string>): void {
    this.settings.clear()
    for (const [name, value] of settings) this.settings.set(name, value)
  }

  cursor(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined
  ): Connector.Cursor {
    let rows: Array<Connector.Row> | undefined
    let failure: QueryError | ConnectionError | undefined
    const load = Effect.async<void>((resume) => {
      if (rows !== undefined || failure !== undefined) return resume(Effect.void)
      this.send(text, params, rowMode, (error, res) => {
        failure = error
        rows = res === undefined ? [] : [...res.rows]
        resume(Effect.void)
      })
    })
    return {
      read: (count) =>
        Effect.flatMap(
          load,
          () => failure !== undefined ? Effect.fail(failure) : Effect.succeed(rows!.splice(0, count))
        ),
      close: Effect.sync(() => {
        rows = []
      })
    }
  }

  transactionStatus(): Connector.TransactionStatus {
    if (this.inFlight !== undefined) return "unknown"
    return this.status
  }

  isBusy(): boolean {
    return this.inFlight !== undefined
  }

  get awaitIdle(): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.inFlight === undefined) return resume(Effect.void)
      const wake = () => resume(Effect.void)
      this.idleWaiters.push(wake)
      return Effect.sync(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== wake)
      })
    })
  }

  isBroken(): boolean {
    return this.lost || this.closed
  }

  get cancel(): Effect.Effect<void, ConnectionError> {
    return Effect.sync(() => {
      const entry = this.inFlight
      if (entry === undefined) return
      this.server.cancels++
      if (entry.fiber !== undefined) this.server.run(Fiber.interruptFork(entry.fiber))
      entry.callback(queryError("57014", "canceling statement due to user request"), undefined)
    })
  }

  onNotification(handler: (notification: Connector.Notification) => void): void {
    this.notificationHandler = handler
  }

  lostError(message: string, code?: string, safeToRetry = false): ConnectionError {
    return new ConnectionError({
      message: `${message} (fake backend ${this.backendPid})`,
      host: this.options.host,
      port: this.options.port,
      database: this.options.database,
      code,
      ...(safeToRetry ? { safeToRetry } : {})
    })
  }

  /** The server side drops this connection (terminate, crash, network loss). */
  drop(code = "57P01"): void {
    if (this.lost || this.closed) return
    const reason = "terminating connection due to administrator command"
    const error = this.lostError(reason, code)
    const entry = this.inFlight
    if (entry !== undefined) {
      if (entry.fiber !== undefined) this.server.run(Fiber.interruptFork(entry.fiber))
      entry.callback(error, undefined)
    }
    this.lose(error, reason)
  }

  /** The connection is gone, ended by `error` (whose `reason` and code the statements after it repeat). */
  lose(error: ConnectionError, reason: string): void {
    if (this.lost || this.closed) return
    this.lost = true
    this.lostBy = { reason, code: error.code }
    this.server.backends.delete(this.backendPid)
    this.onLost(error)
  }

  close(): void {
    this.closed = true
    this.server.backends.delete(this.backendPid)
  }

  answer(text: string, params: ReadonlyArray<unknown>): Outcome {
    const statement: PgPoolTest.Statement = {
      backendPid: this.backendPid,
      text,
      params,
      transactionStatus: this.status,
      settings: this.settings
    }
    const control = this.transactionControl(text)
    if (control !== undefined) return control
    if (this.status === "failed") {
      return {
        delay: 0,
        error: queryError("25P02", "current transaction is aborted, commands ignored until end of transaction block")
      }
    }
    if (this.settings.get("transaction_read_only") === "on") {
      const write = writeCommand(text)
      if (write !== undefined) {
        return { delay: 0, error: queryError("25006", `cannot execute ${write} in a read-only transaction`) }
      }
    }
    for (const handler of this.server.handlers) {
      const response = handler(statement)
      if (response !== undefined) return this.fromResponse(response, text)
    }
    return this.builtin(text, params)
  }

  fromResponse(response: PgPoolTest.Response, text: string): Outcome {
    const delay = response.delay === undefined ? 0 : Duration.toMillis(Duration.decode(response.delay))
    if (response.error !== undefined) {
      const { code, message, ...extra } = response.error
      if (code.startsWith("57P") || code.startsWith("08")) {
        return { delay, error: this.lostError(message, code), apply: undefined, reason: message }
      }
      return { delay, error: queryError(code, message, extra) }
    }
    return { delay, result: result(response.command ?? commandOf(text), response.rows ?? []) }
  }

  transactionControl(text: string): Outcome | undefined {
    const t = text.trim().replace(/;$/, "").toUpperCase()
    const begin = /^(?:BEGIN|START\s+TRANSACTION)\b(.*)$/s.exec(t)
    if (begin !== null) {
      return {
        delay: 0,
        result: result(/^BEGIN/.test(t) ? "BEGIN" : "START TRANSACTION"),
        apply: () => {
          if (this.status === "idle") this.beginTransaction(begin[1]!)
        }
      }
    }
    if (/^(COMMIT|END)\b/.test(t)) {
      const failed = this.status === "failed"
      return {
        delay: 0,
        result: result(failed ? "ROLLBACK" : "COMMIT"),
        apply: () => this.endTransaction(!failed)
      }
    }
    if (/^ROLLBACK\s+TO\b/.test(t)) {
      const name = /^ROLLBACK\s+TO\s+(?:SAVEPOINT\s+)?(\S+)/.exec(t)?.[1] ?? ""
      if (!this.savepoints.includes(name)) {
        return { delay: 0, error: queryError("3B001", `savepoint "${name.toLowerCase()}" does not exist`) }
      }
      return {
        delay: 0,
        result: result("ROLLBACK"),
        apply: () => {
          this.status = "transaction"
          const at = this.savepoints.indexOf(name)
          const state = this.savepointStates[at]
          if (state !== undefined) {
            this.restoreSettings(state.settings)
            this.txSession.clear()
            for (const [key, value] of state.session) this.txSession.set(key, value)
          }
          this.savepoints.splice(at + 1)
          this.savepointStates.splice(at + 1)
        }
      }
    }
    if (/^(ROLLBACK|ABORT)\b/.test(t)) {
      return {
        delay: 0,
        result: result("ROLLBACK"),
        apply: () => this.endTransaction(false)
      }
    }
    if (/^SAVEPOINT\b/.test(t)) {
      if (this.status === "idle") {
        return { delay: 0, error: queryError("25P01", "SAVEPOINT can only be used in transaction blocks") }
      }
      if (this.status === "failed") return undefined
      const name = t.split(/\s+/)[1] ?? ""
      return {
        delay: 0,
        result: result("SAVEPOINT"),
        apply: () => {
          this.savepoints.push(name)
          this.savepointStates.push({ settings: new Map(this.settings), session: new Map(this.txSession) })
        }
      }
    }
    if (/^RELEASE\b/.test(t)) {
      if (this.status === "failed") return undefined
      const name = /^RELEASE\s+(?:SAVEPOINT\s+)?(\S+)/.exec(t)?.[1] ?? ""
      if (!this.savepoints.includes(name)) {
        return { delay: 0, error: queryError("3B001", `savepoint "${name.toLowerCase()}" does not exist`) }
      }
      return {
        delay: 0,
        result: result("RELEASE"),
        apply: () => {
          const at = this.savepoints.indexOf(name)
          this.savepoints.splice(at)
          this.savepointStates.splice(at)
        }
      }
    }
    if (/^DISCARD\s+ALL\b/.test(t)) {
      if (this.status !== "idle") {
        return { delay: 0, error: queryError("25001", "DISCARD ALL cannot run inside a transaction block") }
      }
      return {
        delay: 0,
        result: result("DISCARD ALL"),
        apply: () => {
          this.resetSettings()
          this.listening.clear()
        }
      }
    }
    return undefined
  }

  builtin(text: string, params: ReadonlyArray<unknown>): Outcome {
    const t = text.trim().replace(/;$/, "")
    const setTransaction = /^SET\s+TRANSACTION\b(.*)$/is.exec(t)
    if (setTransaction !== null) {
      return {
        delay: 0,
        result: result("SET"),
        apply: () => {
          if (this.status === "transaction") this.setTransactionModes(setTransaction[1]!)
        }
      }
    }
    const show = /^SHOW\s+("?)([\w.]+)\1$/i.exec(t)
    if (show !== null) {
      const name = this.settingName(show[2]!)
      return { delay: 0, result: result("SHOW", [{ [name]: this.settings.get(name) ?? "" }]) }
    }
    const set = /^SET\s+(?:SESSION\s+|LOCAL\s+)?(?:(TIME\s+ZONE)\s+(.+)|([\w.]+)\s*(?:=|TO)\s*(.+))$/i.exec(t)
    if (set !== null) {
      const name = set[1] !== undefined ? "TimeZone" : set[3]!
      const value = quoted((set[2] ?? set[4] ?? "").trim())
      const local = /^SET\s+LOCAL\b/i.test(t)
      return {
        delay: 0,
        result: result("SET"),
        apply: () => {
          // SET LOCAL outside a transaction: a WARNING on a real server, and no effect
          if (local && this.status === "idle") return
          this.settings.set(name, value)
          if (!local && this.status !== "idle") this.txSession.set(name, value)
          const characteristic = /^default_(transaction_\w+)$/.exec(name)?.[1]
          if (characteristic !== undefined && this.status === "idle") this.settings.set(characteristic, value)
        }
      }
    }
    const listen = /^(UNLISTEN|LISTEN)\s+"?([^"]+)"?$/i.exec(t)
    if (listen !== null) {
      const channel = listen[2]!
      const unlisten = listen[1]!.toUpperCase() === "UNLISTEN"
      return {
        delay: 0,
        result: result(unlisten ? "UNLISTEN" : "LISTEN"),
        apply: () => unlisten ? this.listening.delete(channel) : this.listening.add(channel)
      }
    }
    if (/pg_notify\(/i.test(t)) {
      const [channel, payload] = params.map(String)
      return {
        delay: 0,
        result: result("SELECT", [{ pg_notify: "" }]),
        apply: () => this.server.notify(channel ?? "", payload ?? "", this.backendPid)
      }
    }
    const sleep = /pg_sleep\(\s*([\d.]+)\s*\)/i.exec(t)
    const delay = sleep === null ? 0 : Number(sleep[1]) * 1000
    const select = /^select\s+(.+?)\s*$/is.exec(t)
    if (select === null) return { delay, result: result(commandOf(t)) }
    const row: Record<string, unknown> = {}
    for (const [index, part] of splitColumns(select[1]!).entries()) {
      const alias = /\s+as\s+("?)([\w?]+)\1\s*$/i.exec(part)
      const expression = alias === null ? part.trim() : part.slice(0, alias.index).trim()
      const value = this.evaluate(expression, params)
      const name = alias?.[2] ?? defaultName(expression, index)
      row[name] = value
    }
    return { delay, result: result("SELECT", [row]) }
  }

  /** Setting names are case-insensitive: the name as the settings spell it (`timezone` is `TimeZone`). */
  settingName(name: string): string {
    if (this.settings.has(name)) return name
    const lower = name.toLowerCase()
    for (const known of this.settings.keys()) if (known.toLowerCase() === lower) return known
    return lower
  }

  evaluate(expression: string, params: ReadonlyArray<unknown>): unknown {
    const e = expression.trim()
    if (/^pg_backend_pid\(\)$/i.test(e)) return this.backendPid
    const setting = /^current_setting\('([^']+)'\)$/i.exec(e)
    if (setting !== null) return this.settings.get(this.settingName(setting[1]!)) ?? ""
    if (/^pg_sleep\(/i.test(e)) return ""
    const param = /^\$(\d+)(?:::\w+)?$/.exec(e)
    if (param !== null) return params[Number(param[1]) - 1]
    if (/^-?\d+$/.test(e)) return Number(e)
    if (/^'.*'$/.test(e)) return e.slice(1, -1)
    if (/^(true|false)$/i.test(e)) return e.toLowerCase() === "true"
    if (/^null$/i.test(e)) return null
    return null
  }
}

const splitColumns = (list: string): Array<string> => {
  const parts: Array<string> = []
  let depth = 0
  let quote = false
  let current = ""
  for (const char of list.replace(/\s+from\s+.*$/is, "")) {
    if (char === "'") quote = !quote
    if (!quote && char === "(") depth++
    if (!quote && char === ")") depth--
    if (!quote && depth === 0 && char === ",") {
      parts.push(current)
      current = ""
    } else {
      current += char
    }
  }
  if (current.trim() !== "") parts.push(current)
  return parts
}

const defaultName = (expression: string, _index: number): string => {
  const call = /^(\w+)\(/.exec(expression)
  return call !== null ? call[1]!.toLowerCase() : "?column?"
}

interface Outcome {
  readonly delay: number
  readonly result?: Connector.QueryResult | undefined
  readonly error?: QueryError | ConnectionError | undefined
  readonly apply?: (() => void) | undefined
  /** The server's message of an error that ends the connection (class 08, 57P). */
  readonly reason?: string | undefined
}

/** @internal */
export class FakeServer {
  readonly backends = new Map<number, FakeBackend>()
  readonly log: Array<PgPoolTest.StatementRecord> = []
  handlers: Array<(statement: PgPoolTest.Statement) => PgPoolTest.Response | undefined> = []
  latency = 0
  connectLatency = 0
  /** The pool's `setSession` statements, which `reset: "full"` runs again on return: exempt from latency. */
  resetStatements: ReadonlySet<string> = new Set()
  refusing: PgPoolTest.Refusal | undefined = undefined
  nextPid = 10_000
  connects = 0
  cancels = 0

  constructor(readonly run: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>) {}

  notify(channel: string, payload: string, from: number): void {
    for (const backend of this.backends.values()) {
      if (backend.listening.has(channel)) {
        const handler = backend.notificationHandler
        if (handler !== undefined) queueMicrotask(() => handler({ channel, payload, processId: from }))
      }
    }
  }

  readonly connector: Connector.Connector = {
    // the latency is waited for outside the acquisition, so that a connect timeout or the closing of the pool
    // can interrupt a slow connect, as with the live connector
    connect: (options, onLost) =>
      Effect.suspend(() => {
        this.connects++
        const refusal = this.refusing
        const open = Effect.acquireRelease(
          Effect.suspend(() => {
            if (refusal !== undefined) return Effect.fail(refusedError(refusal, options))
            const backend = new FakeBackend(this, this.nextPid++, onLost, options)
            this.backends.set(backend.backendPid, backend)
            return Effect.succeed(backend)
          }),
          (backend) => Effect.sync(() => backend.close())
        )
        return this.connectLatency > 0 ? Effect.zipRight(Effect.sleep(this.connectLatency), open) : open
      })
  }
}
