/**
 * One statement as a node-postgres "submittable" (the interface pg-cursor uses): it writes the statement on
 * the client's connection and reads the answer messages itself, without pg's `Query` and `Result` objects
 * (an EventEmitter, per-query parser tables, rows built by object spread). The column layout of the last
 * statement of a connection is kept, so a statement that returns the same columns again reuses its parsers.
 *
 * @internal
 */
import { createHash } from "node:crypto"
import type pg from "pg"
import { serialize } from "pg-protocol"
import pgUtils from "pg/lib/utils.js"
import type * as Connector from "../../Connector.js"
import { unsendableParameter } from "./limits.js"
import { needsSimpleQuery } from "./text.js"

/** A RowDescription field, as pg-protocol parses it. */
interface WireField {
  readonly name: string
  readonly dataTypeID: number
  readonly format: string
}

/** What a statement uses of pg's connection: its socket, the simple query, COPY's refusal. */
interface PgConnection {
  /** `errored`: Node's socket error, set at once when a write is refused by the system (see `send`). */
  readonly stream: { readonly writable: boolean; readonly errored: unknown; write(buffer: Buffer): boolean }
  query(text: string): void
  sendCopyFail(message: string): void
}

type Parser = (value: string) => unknown

/**
 * A parameter as pg serialises it, after refusing what has no PostgreSQL value (see `unsendableParameter`);
 * throws what cannot be sent.
 *
 * @internal
 */
export const prepareParameter = (value: unknown, index: number): unknown => {
  const why = unsendableParameter(value, index)
  if (why !== undefined) throw new TypeError(why)
  // node-postgres writes -0 as "0" (String(-0)): a float column would store +0
  if (value === 0 && Object.is(value, -0)) return "-0"
  return pgUtils.prepareValue(value)
}

/** The columns of a result and their type parsers. @internal */
export interface Shape {
  readonly fields: ReadonlyArray<Connector.FieldInfo>
  readonly names: ReadonlyArray<string>
  readonly parsers: ReadonlyArray<Parser>
}

/** Fixed messages of the extended protocol: the unnamed portal's Describe and Execute (all rows), Sync. */
const DESCRIBE_PORTAL = serialize.describe({ type: "P", name: "" })
const EXECUTE = serialize.execute({ portal: "" })
const SYNC = serialize.sync()
const EXECUTE_SYNC = Buffer.concat([EXECUTE, SYNC])
const BIND_NOTHING = serialize.bind({ values: [] })

/**
 * A statement prepared on the server by the statement cache: its name, the number of parameters it was prepared
 * with, and its result columns (none: NoData).
 */
interface Prepared {
  readonly name: string
  readonly params: number
  readonly shape: Shape | undefined
  /** The cache's tick when it was last used (the least recently used is evicted). */
  used: number
  /** Bind, Execute and Sync of a run without parameters: the whole write, built once. */
  readonly run: Buffer | undefined
}

/**
 * What a connection remembers of its statements: the shape of the last result, and the statement cache of
 * automatic preparation (as pgx, Npgsql and psycopg 3 do). A text that ran `threshold` times on the connection
 * as one statement is prepared under a name of its own (Parse once, Describe once); from then on each run
 * sends only Bind, Execute and Sync, so the server neither parses nor plans it again and the columns are not
 * described again. At most `capacity` statements are kept, the least recently used is closed; a capacity of 0
 * turns preparation off.
 *
 * @internal
 */
export interface StatementCache {
  last: Shape | undefined
  readonly threshold: number
  readonly capacity: number
  /** Prepared statements by text. */
  readonly prepared: Map<string, Prepared>
  /** Counts the uses of prepared statements, for their `used`. */
  tick: number
  /** Texts not prepared yet: how many times each ran successfully as one statement. */
  readonly runs: Map<string, number>
  /** The characters of the texts in `runs`, which is emptied when they pass RUNS_BUDGET. */
  runsChars: number
  /** Names of evicted statements, closed in the next write that uses the extended protocol. */
  closing: Array<string>
  /** The pool's view of a transaction pooler: no statement is prepared (or closed) while it says no. */
  readonly pooler: Connector.PoolerSigns | undefined
}

/** @internal */
export const makeStatementCache = (
  threshold: number,
  capacity: number,
  pooler: Connector.PoolerSigns | undefined = undefined
): StatementCache => ({
  last: undefined,
  threshold,
  capacity,
  pooler,
  prepared: new Map(),
  tick: 0,
  runs: new Map(),
  runsChars: 0,
  closing: []
})

/** Whether statements may be prepared now: a cache, and no transaction pooler in the way. */
const preparing = (cache: StatementCache): boolean =>
  cache.capacity > 0 && (cache.pooler === undefined || cache.pooler.prepare)

/** A statement name of this cache's own that the server says exists already (42P05) or does not exist (26000). */
const namedInError = (error: Error, name: string, code: string): boolean =>
  (error as { readonly code?: unknown }).code === code && error.message.includes(`"${name}"`)

/**
 * The name of a text's prepared statement: the same on every connection, so that a name always means the same
 * text, even behind a proxy that moves a client's statements between server connections.
 */
const preparedName = (text: string): string =>
  `effect_pg_pool_${createHash("sha256").update(text).digest("hex").slice(0, 40)}`

/** Texts longer than this are not prepared (nor counted): long texts are usually one-off, with literals inlined. */
const MAX_PREPARED_TEXT = 16 * 1024
/** How many characters of texts `runs` may hold per connection before it starts afresh. */
const RUNS_BUDGET = 512 * 1024

/**
 * The texts worth preparing: one statement the server plans, by its first keyword (after comments). Utility
 * statements (SET, BEGIN, DISCARD...) have no plan to keep, and `EXECUTE` of an application's own prepared
 * statement reports its command tag but may change its columns without the server noticing.
 */
const preparable = /^(?:\s+|--[^\n]*(?:\n|$)|\/\*[^]*?\*\/)*(?:select|with|values|table|insert|update|delete|merge)\b/i

/**
 * True when the server refused a prepared statement because it no longer runs as prepared, so that the
 * statement did not run: the table changed under it (0A000 from RevalidateCachedQuery: "cached plan must not
 * change result type"), or its name is gone (26000 naming it: a DEALLOCATE the cache did not see). Other errors
 * with these codes (a function may raise either) are the statement's own.
 */
const isStale = (error: Error, name: string): boolean => {
  const { code, routine } = error as { readonly code?: unknown; readonly routine?: unknown }
  if (code === "0A000") {
    return routine === "RevalidateCachedQuery" || error.message.startsWith("cached plan must not change")
  }
  if (code === "26000") return error.message.includes(`"${name}"`)
  return false
}

const enum Mode {
  Plain,
  Preparing,
  Prepared
}

const isLetter = (code: number): boolean => (code >= 65 && code <= 90) || (code >= 97 && code <= 122)
const isDigit = (code: number): boolean => code >= 48 && code <= 57

/**
 * The command of a CommandComplete tag: its leading letters ("SELECT" of "SELECT 1", "CREATE" of
 * "CREATE TABLE"); "" when it starts with none. Read by hand: a regular expression's match array and group
 * strings cost every statement an allocation.
 *
 * @internal
 */
export const commandOf = (tag: string): string => {
  let end = 0
  while (end < tag.length && isLetter(tag.charCodeAt(end))) end++
  return end === tag.length ? tag : tag.slice(0, end)
}

/**
 * The row count of a CommandComplete tag whose command is `commandLength` letters long: the last of at most
 * two numbers after it ("INSERT 0 5": 5, "UPDATE 3": 3), null when none follows ("BEGIN", "CREATE TABLE").
 *
 * @internal
 */
export const rowCountOf = (tag: string, commandLength: number): number | null => {
  if (commandLength === 0) return null
  let count: number | null = null
  let i = commandLength
  for (let numbers = 0; numbers < 2; numbers++) {
    if (tag.charCodeAt(i) !== 32 || !isDigit(tag.charCodeAt(i + 1))) break
    let n = 0
    for (i++; i < tag.length && isDigit(tag.charCodeAt(i)); i++) n = n * 10 + tag.charCodeAt(i) - 48
    count = n
  }
  return count
}

const sameShape = (shape: Shape, fields: ReadonlyArray<WireField>): boolean => {
  if (shape.fields.length !== fields.length) return false
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i]!
    if (field.format !== "text" && field.format !== undefined) return false
    if (shape.names[i] !== field.name || shape.fields[i]!.dataTypeID !== field.dataTypeID) return false
  }
  return true
}

/** Closes the least recently used prepared statement (with the next write). */
const evictLeastRecentlyUsed = (cache: StatementCache): void => {
  let oldest: string | undefined
  let used = Infinity
  for (const [text, entry] of cache.prepared) {
    if (entry.used < used) {
      used = entry.used
      oldest = text
    }
  }
  if (oldest === undefined) return
  cache.closing.push(cache.prepared.get(oldest)!.name)
  cache.prepared.delete(oldest)
}

/**
 * Writes a buffer; false when nothing of it was written (a dead socket is left to pg, which fails the
 * statement when it ends): the socket is no longer writable, or the system refused the write at once (a
 * socket the peer reset, before anything read the reset: ECONNRESET, EPIPE). Node sets the socket's `errored`
 * during `write` only then: a write that could begin completes, or fails later, after part of it went out.
 */
const send = (connection: PgConnection, buffer: Buffer): boolean => {
  const stream = connection.stream
  if (!stream.writable) return false
  stream.write(buffer)
  return stream.errored == null
}

/** Writes the messages as one buffer. */
const write = (connection: PgConnection, parts: ReadonlyArray<Buffer>): boolean =>
  send(connection, parts.length === 1 ? parts[0]! : Buffer.concat(parts))

/**
 * How far a statement got on the wire, for `Statement.neverRan`: not written; written as a simple Query (which
 * the server may be executing without having answered anything yet); written over the extended protocol and
 * not answered yet (the server answers ParseComplete or BindComplete before it executes anything); answered.
 */
const enum Wire {
  NotWritten,
  Simple,
  Extended,
  Answered
}

/**
 * The FATAL errors a server sends to a backend that sits idle, waiting for the client: it was terminated
 * (`pg_terminate_backend`, a fast shutdown: 57P01), the server is crashing (57P02, from servers that send it as
 * a FATAL), the session was idle too long (`idle_session_timeout`: 57P05). Such a backend sends the error and
 * exits without reading anything more.
 */
const idleFatalCodes = new Set(["57P01", "57P02", "57P05"])

/** @internal */
export type Done = (error: Error | null, result: Connector.QueryResult | undefined) => void

/**
 * A failure on the client's side of a statement: a parameter that cannot be serialised, a value a type
 * parser rejects. The connection is fine; the statement fails with this SQLSTATE.
 *
 * @internal
 */
export class ClientSideError extends Error {
  constructor(readonly code: string, message: string, override readonly cause: unknown) {
    super(message)
  }
}

/** The failure of a statement whose parameters could not be serialised (`prepareParameter` threw `error`). @internal */
export const unsendableError = (error: unknown): ClientSideError =>
  new ClientSideError("22023", `A parameter cannot be sent: ${(error as Error).message ?? String(error)}`, error)

/** The fields of a result without columns, shared (frozen). */
const NO_FIELDS: ReadonlyArray<Connector.FieldInfo> = Object.freeze([])

/**
 * A statement's result. A class, not an object literal: V8 tracks the objects of each literal in the code
 * (its allocation site) and, when they are still alive at a young-generation collection, allocates all of
 * that literal's later objects in the old generation, where only a full collection frees them. Results are
 * alive at those moments often enough (a pipelined batch of answers is parsed in one go), and that made the
 * heap grow by hundreds of bytes per statement. Instances of a class have no allocation site.
 */
class Result implements Connector.QueryResult {
  constructor(
    readonly rows: ReadonlyArray<Connector.Row>,
    readonly fields: ReadonlyArray<Connector.FieldInfo>,
    readonly command: string,
    readonly rowCount: number | null
  ) {}
}

/** @internal */
export class Statement {
  /** The first result (see `results`). */
  result: Result | undefined = undefined
  /** Every result, once there are two or more (a text of several statements). */
  results: Array<Connector.QueryResult> | undefined = undefined
  shape: Shape | undefined = undefined
  /** The rows of the result being read, made at its first row. */
  rows: Array<Connector.Row> | undefined = undefined
  parseError: Error | undefined = undefined
  finished = false
  /** Results of prefix statements still to be skipped. */
  skip = 0
  mode = Mode.Plain
  /** The name this statement is prepared under (Preparing, Prepared). */
  preparedName = ""
  /** The columns the server described while preparing. */
  described: Shape | undefined = undefined
  /**
   * Set when the statement failed because its prepared form is stale (see isStale): it did not run, and
   * the cache has forgotten it, so the text can be sent again.
   */
  stale = false
  /** How far the statement got on the wire (see Wire and `neverRan`). */
  wire = Wire.NotWritten
  constructor(
    readonly text: string,
    readonly values: ReadonlyArray<unknown> | undefined,
    readonly rowMode: "array" | undefined,
    readonly types: { getTypeParser(oid: number, format: string): Parser },
    readonly cache: StatementCache,
    readonly done: Done,
    readonly prefix: ReadonlyArray<string> | undefined = undefined,
    /**
     * Written behind statements still in flight (pipelining): never prepared under a name, since another
     * statement in flight may be preparing the same one (it may run as a statement prepared before).
     */
    readonly pipelined = false
  ) {}

  /** Cancelling this statement was asked for (see `Connection.sendPipelined`). */
  cancelRequested = false
  /** Called once the statement is the one whose answers are read (pipelining), or it failed before that. */
  onHead: (() => void) | undefined = undefined

  /** The statement is the one whose answers are read now, or failed before: `onHead`, once. */
  reachedHead(): void {
    const onHead = this.onHead
    this.onHead = undefined
    onHead?.()
  }

  /** Exactly one result came (the statement cache learns only from those). */
  get single(): boolean {
    return this.result !== undefined && this.results === undefined
  }

  /**
   * Adds a row to the result being read. Its array is made at the first row, by `Array.of`: an array literal
   * has an allocation site, which V8 may decide to pretenure (see `Result`), and the rows it holds with it.
   */
  addRow(row: Connector.Row): void {
    const rows = this.rows
    if (rows === undefined) this.rows = Array.of(row)
    else rows.push(row)
  }

  /** Something of the statement was written, so the server will answer it up to a ReadyForQuery. */
  get wrote(): boolean {
    return this.wire !== Wire.NotWritten
  }

  /** It went out over the extended protocol with a Sync of its own: an implicit transaction of its own. */
  get alone(): boolean {
    return this.prefix === undefined && (this.wire === Wire.Extended || this.wire === Wire.Answered)
  }

  submit(connection: PgConnection): null {
    const values = this.values
    const prefix = this.prefix
    const cache = this.cache
    const text = this.text
    if (preparing(cache)) {
      const prepared = cache.prepared.get(text)
      if (prepared !== undefined) {
        prepared.used = ++cache.tick
        // run with another number of parameters than prepared with: sent as text, for the server's own error
        if (prepared.params === (values?.length ?? 0)) {
          this.mode = Mode.Prepared
          this.preparedName = prepared.name
          this.shape = prepared.shape
          // the common case: the same bytes as last time
          if (prepared.run !== undefined && prefix === undefined && cache.closing.length === 0) {
            if (send(connection, prepared.run)) this.written(Wire.Extended)
            return null
          }
        }
      } else if (!this.pipelined && (cache.runs.get(text) ?? 0) >= cache.threshold) {
        this.mode = Mode.Preparing
        this.preparedName = preparedName(text)
      }
    }
    // one statement without parameters goes out over the extended protocol too, whose ParseComplete comes before
    // the statement runs (see neverRan); several statements, and COPY, as a simple Query
    if (
      this.mode === Mode.Plain && prefix === undefined && (values === undefined || values.length === 0) &&
      needsSimpleQuery(text)
    ) {
      if (connection.stream.writable) {
        connection.query(text)
        // (refused at once: see `send`)
        if (connection.stream.errored == null) this.written(Wire.Simple)
      }
      return null
    }
    // every message of the statement in one buffer, one write
    const parts: Array<Buffer> = []
    if (cache.closing.length > 0) {
      // first in the write, so that an error later in it (which skips the rest up to Sync) cannot skip them;
      // never behind a transaction pooler, where a Close would reach another client's server connection
      if (preparing(cache)) { for (const name of cache.closing) parts.push(serialize.close({ type: "S", name })) }
      cache.closing = []
    }
    if (prefix !== undefined) {
      for (const text of prefix) parts.push(serialize.parse({ text }), BIND_NOTHING, EXECUTE)
      this.skip = prefix.length
    }
    const statement = this.preparedName
    let bind: Buffer
    try {
      if (values === undefined || values.length === 0) {
        bind = statement === "" ? BIND_NOTHING : serialize.bind({ statement })
      } else {
        // the values are serialised first: a value whose serialiser throws must not reach pg-protocol's writer,
        // whose shared buffer keeps the bytes of a message cut off by a throw (before pg-protocol 1.15)
        const prepared = values.map(prepareParameter)
        bind = serialize.bind({ statement, values: prepared as Array<string> })
      }
    } catch (error) {
      // the statement is not sent; what comes before it is, so that the answers end with a ReadyForQuery
      parts.push(SYNC)
      write(connection, parts)
      this.handleError(unsendableError(error))
      return null
    }
    if (this.mode === Mode.Prepared) {
      parts.push(bind, EXECUTE_SYNC)
    } else {
      parts.push(serialize.parse({ text, name: statement }), bind, DESCRIBE_PORTAL, EXECUTE_SYNC)
    }
    if (write(connection, parts)) this.written(Wire.Extended)
    return null
  }

  /** The server answered something of the statement (called by the connection for every answer). */
  answered(): void {
    this.wire = Wire.Answered
  }

  /** The statement's messages were written to the socket. */
  written(wire: Wire.Simple | Wire.Extended): void {
    this.wire = wire
  }

  /**
   * The write its messages were held back for (a corked turn) was refused at once by the system: nothing of it
   * left (see `send`).
   */
  unsent(): void {
    if (this.wire !== Wire.Answered) this.wire = Wire.NotWritten
  }

  /**
   * True when the statement, failed with `error`, provably never ran on the server, so that it may be sent again
   * on another connection:
   *
   * - nothing of it was written (the socket was dead already, or pg failed it before its turn);
   * - it went out over the extended protocol, nothing of it was answered, and the error is a FATAL the server
   *   sends to an idle backend. The server answers Parse with ParseComplete (Bind with BindComplete) before it
   *   executes anything, into its output buffer, which it flushes, in order, before the FATAL it sends when
   *   terminated: a FATAL with no answer before it was raised before the statement's first message was
   *   processed. A connection that just ends proves nothing (a killed backend or a broken network loses what
   *   was buffered), nor does a simple Query (a statement without a result, such as an INSERT, answers nothing
   *   before it completes).
   */
  neverRan(error: Error): boolean {
    switch (this.wire) {
      case Wire.NotWritten:
        return true
      case Wire.Extended: {
        const { code, severity } = error as { readonly code?: unknown; readonly severity?: unknown }
        return severity === "FATAL" && typeof code === "string" && idleFatalCodes.has(code)
      }
      default:
        return false
    }
  }

  handleRowDescription(msg: { readonly fields: ReadonlyArray<WireField> }): void {
    const cached = this.cache.last
    if (cached !== undefined && sameShape(cached, msg.fields)) {
      this.shape = cached
      if (this.mode === Mode.Preparing) this.described = cached
      return
    }
    const fields = msg.fields.map((f) => ({ name: f.name, dataTypeID: f.dataTypeID }))
    const shape: Shape = {
      fields,
      names: msg.fields.map((f) => f.name),
      parsers: msg.fields.map((f) => this.types.getTypeParser(f.dataTypeID, f.format || "text"))
    }
    this.cache.last = shape
    this.shape = shape
    if (this.mode === Mode.Preparing) this.described = shape
  }

  handleDataRow(msg: { readonly fields: ReadonlyArray<string | null> }): void {
    if (this.parseError !== undefined) return
    const shape = this.shape
    if (shape === undefined) {
      this.parseError = new ClientSideError("08P01", "A row came without a description of its columns", undefined)
      return
    }
    const raw = msg.fields
    const parsers = shape.parsers
    try {
      if (this.rowMode === "array") {
        const row = new Array<unknown>(raw.length)
        for (let i = 0; i < raw.length; i++) {
          const value = raw[i]!
          row[i] = value === null ? null : parsers[i]!(value)
        }
        this.addRow(row as unknown as Connector.Row)
      } else {
        const names = shape.names
        const row: Record<string, unknown> = {}
        for (let i = 0; i < raw.length; i++) {
          const value = raw[i]!
          row[names[i]!] = value === null ? null : parsers[i]!(value)
        }
        this.addRow(row)
      }
    } catch (error) {
      this.parseError = new ClientSideError(
        "22P02",
        `A value of the result cannot be parsed: ${(error as Error).message ?? String(error)}`,
        error
      )
    }
  }

  handleCommandComplete(msg: { readonly text: string }): void {
    if (this.skip > 0) {
      this.skip--
      return
    }
    const command = commandOf(msg.text)
    const rowCount = rowCountOf(msg.text, command.length)
    const result = new Result(this.rows ?? [], this.shape?.fields ?? NO_FIELDS, command, rowCount)
    if (this.result === undefined) this.result = result
    else (this.results ??= [this.result]).push(result)
    this.rows = undefined
    this.shape = undefined
    if ((command === "DISCARD" || command === "DEALLOCATE") && msg.text.endsWith(" ALL")) {
      // the server dropped every prepared statement of the session; the counts start afresh too, so a pool
      // that resets with DISCARD ALL on every return does not prepare a statement only to lose it each time
      this.cache.prepared.clear()
      this.cache.runs.clear()
      this.cache.runsChars = 0
      this.cache.closing = []
    }
  }

  handleEmptyQuery(): void {}

  handlePortalSuspended(): void {}

  handleError(error: Error): void {
    this.finish(error, undefined)
  }

  finish(error: Error | null, result: Connector.QueryResult | undefined): void {
    if (this.finished) return
    this.finished = true
    if (this.cache.capacity > 0) this.remember(error)
    this.done(error, result)
    // handed on: not held by a statement that may have been moved to the old generation (see `QueryOp.forget`)
    this.result = undefined
    this.results = undefined
    this.rows = undefined
    this.parseError = undefined
  }

  /** Updates the statement cache with the outcome of this statement. */
  remember(error: Error | null): void {
    const cache = this.cache
    const text = this.text
    switch (this.mode) {
      case Mode.Plain: {
        if (error !== null || !this.single) return
        const runs = cache.runs
        const count = runs.get(text)
        if (count !== undefined) {
          runs.set(text, count + 1)
          return
        }
        if (text.length > MAX_PREPARED_TEXT || !preparable.test(text)) return
        // bounded: a flood of distinct texts starts the counts afresh rather than growing the map
        if (runs.size >= cache.capacity * 8 || cache.runsChars + text.length > RUNS_BUDGET) {
          runs.clear()
          cache.runsChars = 0
        }
        runs.set(text, 1)
        cache.runsChars += text.length
        return
      }
      case Mode.Preparing: {
        if (error !== null && namedInError(error, this.preparedName, "42P05")) {
          // a name of this connection's own already on the server: not prepared here, so another client put it
          // on this server connection, which only a transaction pooler does. Nothing ran (the Parse failed)
          this.stale = true
          cache.pooler?.sign(`prepared statement ${this.preparedName} already exists on the server (42P05)`)
          return
        }
        if (error !== null || !this.single) {
          // the Parse may have gone through before the error (closing a missing statement is no error)
          cache.closing.push(this.preparedName)
          return
        }
        if (cache.runs.delete(text)) cache.runsChars -= text.length
        const name = this.preparedName
        const params = this.values?.length ?? 0
        const run = params === 0 ? Buffer.concat([serialize.bind({ statement: name }), EXECUTE_SYNC]) : undefined
        cache.prepared.set(text, { name, params, shape: this.described, used: ++cache.tick, run })
        if (cache.prepared.size > cache.capacity) evictLeastRecentlyUsed(cache)
        return
      }
      case Mode.Prepared: {
        if (error === null || !isStale(error, this.preparedName)) return
        this.stale = true
        if (namedInError(error, this.preparedName, "26000")) {
          // prepared on this connection and gone, with no DEALLOCATE seen: a transaction pooler moved this
          // connection's statements to another server connection (or something ran DEALLOCATE by name)
          cache.pooler?.sign(`prepared statement ${this.preparedName} vanished from the server (26000)`)
        }
        if ((error as { readonly code?: unknown }).code === "26000") {
          // names gone behind the cache's back: forget them all, and close them in case some are still there
          // (closing a missing statement is no error)
          for (const entry of cache.prepared.values()) cache.closing.push(entry.name)
          cache.prepared.clear()
        } else if (cache.prepared.get(text)?.name === this.preparedName) {
          cache.prepared.delete(text)
          cache.closing.push(this.preparedName)
        }
        return
      }
    }
  }

  handleReadyForQuery(): void {
    if (this.parseError !== undefined) return this.finish(this.parseError, undefined)
    const results = this.results
    if (results !== undefined) return this.finish(null, { ...results[results.length - 1]!, results })
    return this.finish(null, this.result ?? new Result([], NO_FIELDS, "", null))
  }

  handleCopyInResponse(connection: PgConnection): void {
    connection.sendCopyFail("COPY is not supported by effect-pg-pool statements")
  }

  handleCopyData(): void {}
}

/** The client's type parsers (with `setTypeParser` overrides). @internal */
export const typesOf = (client: pg.Client): { getTypeParser(oid: number, format: string): Parser } =>
  (client as unknown as { readonly _types: { getTypeParser(oid: number, format: string): Parser } })._types
