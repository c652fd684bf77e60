/// <reference path="./pg-lib.d.ts" />
/**
 * One statement as a node-postgres "submittable" (the interface pg-cursor uses): it writes the statement on
 * the client's connection and reads the answer messages itself, without pg's `Query` and `Result` objects
 * (an EventEmitter, per-query parser tables, rows built by object spread). The column layout of the last
 * statement of a connection is kept, so a statement that returns the same columns again reuses its parsers.
 *
 * @internal
 */
import type pg from "pg"
import pgUtils from "pg/lib/utils.js"
import type * as Connector from "../Connector.js"

/** A RowDescription field, as pg-protocol parses it. */
interface WireField {
  readonly name: string
  readonly dataTypeID: number
  readonly format: string
}

interface PgConnection {
  readonly stream: { cork?: () => void; uncork?: () => void }
  query(text: string): void
  parse(query: { text: string }): void
  bind(config: { values: ReadonlyArray<unknown>; valueMapper: (value: unknown) => unknown }): void
  describe(msg: { type: "P"; name: string }): void
  execute(config: { portal: string }): void
  sync(): void
  close(msg: { type: "S"; name: string }): void
  sendCopyFail(message: string): void
}

type Parser = (value: string) => unknown

/** The columns of a result and their type parsers. @internal */
export interface Shape {
  readonly fields: ReadonlyArray<Connector.FieldInfo>
  readonly names: ReadonlyArray<string>
  readonly parsers: ReadonlyArray<Parser>
}

/** A per-connection memory of the last result shape. @internal */
export interface ShapeCache {
  last: Shape | undefined
}

const matchCommand = /^([A-Za-z]+)(?: (\d+))?(?: (\d+))?/

const sameShape = (shape: Shape, fields: ReadonlyArray<WireField>): boolean => {
  if (shape.fields.length !== fields.length) return false
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i]!
    if (field.format !== "text" && field.format !== undefined) return false
    if (shape.names[i] !== field.name || shape.fields[i]!.dataTypeID !== field.dataTypeID) return false
  }
  return true
}

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

/** @internal */
export class Statement {
  results: Array<Connector.QueryResult> | undefined = undefined
  shape: Shape | undefined = undefined
  rows: Array<Connector.Row> = []
  parseError: Error | undefined = undefined
  finished = false
  /** Results of prefix statements still to be skipped. */
  skip = 0
  constructor(
    readonly text: string,
    readonly values: ReadonlyArray<unknown> | undefined,
    readonly rowMode: "array" | undefined,
    readonly types: { getTypeParser(oid: number, format: string): Parser },
    readonly cache: ShapeCache,
    readonly done: Done,
    readonly prefix: ReadonlyArray<string> | undefined = undefined
  ) {}

  submit(connection: PgConnection): null {
    const values = this.values
    const prefix = this.prefix
    if (prefix === undefined && (values === undefined || values.length === 0)) {
      connection.query(this.text)
      return null
    }
    connection.stream.cork?.()
    try {
      if (prefix !== undefined) {
        for (const text of prefix) {
          connection.parse({ text })
          connection.bind({ values: [], valueMapper: pgUtils.prepareValue })
          connection.execute({ portal: "" })
        }
        this.skip = prefix.length
      }
      connection.parse({ text: this.text })
      try {
        connection.bind({ values: values ?? [], valueMapper: pgUtils.prepareValue })
      } catch (error) {
        connection.close({ type: "S", name: "" })
        connection.sync()
        this.handleError(
          new ClientSideError("22023", `A parameter cannot be sent: ${(error as Error).message ?? String(error)}`, error)
        )
        return null
      }
      connection.describe({ type: "P", name: "" })
      connection.execute({ portal: "" })
      connection.sync()
    } finally {
      connection.stream.uncork?.()
    }
    return null
  }

  handleRowDescription(msg: { readonly fields: ReadonlyArray<WireField> }): void {
    const cached = this.cache.last
    if (cached !== undefined && sameShape(cached, msg.fields)) {
      this.shape = cached
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
  }

  handleDataRow(msg: { readonly fields: ReadonlyArray<string | null> }): void {
    if (this.parseError !== undefined) return
    const shape = this.shape!
    const raw = msg.fields
    const parsers = shape.parsers
    try {
      if (this.rowMode === "array") {
        const row = new Array<unknown>(raw.length)
        for (let i = 0; i < raw.length; i++) {
          const value = raw[i]!
          row[i] = value === null ? null : parsers[i]!(value)
        }
        this.rows.push(row as unknown as Connector.Row)
      } else {
        const names = shape.names
        const row: Record<string, unknown> = {}
        for (let i = 0; i < raw.length; i++) {
          const value = raw[i]!
          row[names[i]!] = value === null ? null : parsers[i]!(value)
        }
        this.rows.push(row)
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
    const match = matchCommand.exec(msg.text)
    const command = match?.[1] ?? ""
    const rowCount = match?.[3] !== undefined
      ? parseInt(match[3], 10)
      : match?.[2] !== undefined
      ? parseInt(match[2], 10)
      : null
    const result: Connector.QueryResult = {
      rows: this.rows,
      fields: this.shape?.fields ?? [],
      command,
      rowCount
    }
    ;(this.results ??= []).push(result)
    this.rows = []
    this.shape = undefined
  }

  handleEmptyQuery(): void {}

  handlePortalSuspended(): void {}

  handleError(error: Error): void {
    this.finish(error, undefined)
  }

  finish(error: Error | null, result: Connector.QueryResult | undefined): void {
    if (this.finished) return
    this.finished = true
    this.done(error, result)
  }

  handleReadyForQuery(): void {
    if (this.parseError !== undefined) return this.finish(this.parseError, undefined)
    const results = this.results
    if (results === undefined) return this.finish(null, { rows: [], fields: [], command: "", rowCount: null })
    if (results.length === 1) return this.finish(null, results[0]!)
    return this.finish(null, { ...results[results.length - 1]!, results })
  }

  handleCopyInResponse(connection: PgConnection): void {
    connection.sendCopyFail("COPY is not supported by effect-pg-pool statements")
  }

  handleCopyData(): void {}
}

/** The client's type parsers (with `setTypeParser` overrides). @internal */
export const typesOf = (client: pg.Client): { getTypeParser(oid: number, format: string): Parser } =>
  (client as unknown as { readonly _types: { getTypeParser(oid: number, format: string): Parser } })._types
