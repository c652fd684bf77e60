/**
 * What a statement must fit in to be sent at all: the number of parameters PostgreSQL's wire protocol can carry
 * (checked before a connection is taken for the statement), and the values that have no PostgreSQL value
 * (checked where the parameters are serialised).
 *
 * @internal
 */
import { QueryError } from "../../PgPoolError.js"

/** The most parameters one statement can carry: the extended protocol counts them in 16 bits. */
const MAX_PARAMETERS = 65_535

/**
 * A `QueryError` (SQLSTATE 54000, program_limit_exceeded) for a statement with more parameters than the
 * protocol can carry, else `undefined`. Sent anyway, the count would wrap around: the server would be told of
 * another number of parameters than were sent, and answer with an error about something else.
 *
 * @internal
 */
export const tooManyParameters = (params: ReadonlyArray<unknown> | undefined): QueryError | undefined =>
  params === undefined || params.length <= MAX_PARAMETERS ? undefined : new QueryError({
    message: `A statement can carry at most ${MAX_PARAMETERS} parameters (the PostgreSQL protocol counts them in 16 ` +
      `bits); this one has ${params.length}, so it was not sent: pass the values as one array parameter ` +
      `(e.g. "where id = any($1)") or split the statement (SQLSTATE 54000)`,
    code: "54000"
  })

/**
 * Why parameter `$index + 1` cannot be sent, or `undefined`. A function or a symbol has no PostgreSQL value
 * (node-postgres would send its source text or its description: a function passed instead of its result would
 * be stored as code), and an invalid Date would go out as the text "0NaN-NaN-NaN...". The elements of an
 * array are looked at too.
 *
 * @internal
 */
export const unsendableParameter = (value: unknown, index: number): string | undefined => {
  const why = unsendable(value)
  return why === undefined ? undefined : `parameter $${index + 1} is ${why}`
}

/** Arrays nested deeper are not looked into (an array holding itself would be followed forever). */
const MAX_DEPTH = 32

const unsendable = (value: unknown, depth = 0): string | undefined => {
  switch (typeof value) {
    case "function":
      return "a function, which has no PostgreSQL value (was it passed instead of its result?)"
    case "symbol":
      return "a symbol, which has no PostgreSQL value"
    case "object":
      if (value instanceof Date) return Number.isNaN(value.getTime()) ? "an invalid Date" : undefined
      if (Array.isArray(value) && depth < MAX_DEPTH) {
        for (const element of value) {
          const why = unsendable(element, depth + 1)
          if (why !== undefined) return `an array holding ${why}`
        }
      }
      return undefined
    default:
      return undefined
  }
}
