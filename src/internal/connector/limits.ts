/**
 * What a statement must fit in to be sent at all: a string for its text, with no NUL or lone surrogate in it,
 * and an array of at most as many parameters as PostgreSQL's wire protocol can carry (checked before a
 * connection is taken for the statement), and parameters that have a faithful PostgreSQL value (checked where
 * the parameters are serialised).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { QueryError } from "../../PgPoolError.js"

/** The most parameters one statement can carry: the extended protocol counts them in 16 bits. */
const MAX_PARAMETERS = 65_535

/**
 * A `QueryError` for a statement that cannot be sent as it is, else `undefined`: checked before a connection is
 * taken for it, so nothing is sent.
 * - Its text is not a string, or its parameters not an array (a caller without types): 22023.
 * - More parameters than the protocol can carry: 54000 (program_limit_exceeded). Sent anyway, the count would
 *   wrap around: the server would be told of another number of parameters than were sent, and answer with an
 *   error about something else.
 * - A NUL character in its text: 22021, as the server words a NUL in a parameter. The protocol ends the text at
 *   its first NUL: the server would read the rest as the message's other fields and answer with a protocol
 *   error (08P01), or, should the rest read as valid fields, run the text before the NUL alone.
 * - A lone UTF-16 surrogate in its text: 22021 (written as UTF-8, it would be replaced by U+FFFD).
 *
 * @internal
 */
export const unsendableStatement = (
  text: string,
  params: ReadonlyArray<unknown> | undefined
): QueryError | undefined => {
  if (typeof text !== "string") return invalid(`A statement's text must be a string; got ${describe(text)}`)
  if (params !== undefined) {
    if (!Array.isArray(params)) return invalid(`A statement's parameters must be an array; got ${describe(params)}`)
    if (params.length > MAX_PARAMETERS) {
      return new QueryError({
        message: `A statement can carry at most ${MAX_PARAMETERS} parameters (the PostgreSQL protocol counts them ` +
          `in 16 bits); this one has ${params.length}, so it was not sent: pass the values as one array ` +
          `parameter (e.g. "where id = any($1)") or split the statement (SQLSTATE 54000)`,
        code: "54000"
      })
    }
  }
  const nul = text.indexOf("\0")
  if (nul !== -1) {
    return new QueryError({
      message: `A statement's text cannot hold a NUL character (found at offset ${nul}), so it was not sent: ` +
        `PostgreSQL ends a statement's text at its first NUL (SQLSTATE 22021)`,
      code: "22021"
    })
  }
  return wellFormed(text) ? undefined : new QueryError({
    message: `A statement's text cannot hold a lone UTF-16 surrogate, which UTF-8 cannot encode (it would be ` +
      `replaced by U+FFFD), so it was not sent (SQLSTATE 22021)`,
    code: "22021"
  })
}

const invalid = (message: string) =>
  new QueryError({ message: `${message}, so nothing was sent (SQLSTATE 22023)`, code: "22023" })

const describe = (value: unknown): string => {
  if (value === null || value === undefined) return String(value)
  if (Array.isArray(value)) return "an array"
  const type = typeof value
  return `${type === "object" ? "an" : "a"} ${type}`
}

/**
 * Why parameter `$index + 1` cannot be sent, or `undefined`. A function or a symbol has no PostgreSQL value
 * (node-postgres would send its source text or its description: a function passed instead of its result would
 * be stored as code), an invalid Date would go out as the text "0NaN-NaN-NaN...", a string with a lone UTF-16
 * surrogate would have it replaced (UTF-8 cannot encode it), and node-postgres writes the objects JSON cannot
 * write whole as `{}` or worse: an ArrayBuffer (its bytes lost), a Map, a Set, a Promise, an Effect (one passed
 * instead of its result, its `yield*` forgotten). The elements of an array are looked at too.
 *
 * @internal
 */
export const unsendableParameter = (value: unknown, index: number): string | undefined => {
  const why = unsendable(value)
  return why === undefined ? undefined : `parameter $${index + 1} is ${why}`
}

/** Arrays nested deeper are not looked into (an array holding itself would be followed forever). @internal */
export const MAX_DEPTH = 32

const unsendable = (value: unknown, depth = 0): string | undefined => {
  switch (typeof value) {
    case "string":
      return wellFormed(value) ? undefined : `a string holding a lone UTF-16 surrogate, which UTF-8 cannot encode`
    case "function":
      return "a function, which has no PostgreSQL value (was it passed instead of its result?)"
    case "symbol":
      return "a symbol, which has no PostgreSQL value"
    case "object":
      if (value === null) return undefined
      if (value instanceof Date) return Number.isNaN(value.getTime()) ? "an invalid Date" : undefined
      if (Array.isArray(value)) {
        if (depth < MAX_DEPTH) {
          for (const element of value) {
            const why = unsendable(element, depth + 1)
            if (why !== undefined) return `an array holding ${why}`
          }
        }
        return undefined
      }
      return unwritableObject(value)
    default:
      return undefined
  }
}

/** Whether a string has no lone surrogate (a one-byte string cannot hold one: V8 answers those at once). */
const wellFormed = (value: string): boolean => (value as unknown as { isWellFormed(): boolean }).isWellFormed()

/** An object node-postgres would write as JSON, which loses what it is. */
const unwritableObject = (value: object): string | undefined => {
  if (ArrayBuffer.isView(value) || typeof (value as { toPostgres?: unknown }).toPostgres === "function") {
    return undefined
  }
  if (value instanceof ArrayBuffer || value instanceof SharedArrayBuffer) {
    return "an ArrayBuffer, which would be written as {} (pass its bytes: Buffer.from(buffer) or new Uint8Array(buffer))"
  }
  if (value instanceof Map) return "a Map, which JSON writes as {} (convert it first, e.g. Object.fromEntries(map))"
  if (value instanceof Set) return "a Set, which JSON writes as {} (convert it first, e.g. [...set])"
  if (value instanceof WeakMap || value instanceof WeakSet) return "a WeakMap or WeakSet, which has no PostgreSQL value"
  if (value instanceof Promise) return "a Promise (was it passed instead of its result?)"
  if (Option.isOption(value)) return "an Option (pass its value, or null for None: Option.getOrNull)"
  if (Either.isEither(value)) return "an Either (pass its value)"
  if (Effect.isEffect(value)) return "an Effect (was it passed instead of its result? yield* it first)"
  return undefined
}
