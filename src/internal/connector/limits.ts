/**
 * What a statement must fit in to be sent at all: the limits of PostgreSQL's wire protocol, checked before a
 * connection is taken for it.
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
