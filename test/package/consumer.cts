// The CommonJS side of the TypeScript consumer (a .cts file under NodeNext resolves the package's require
// condition), type-checked by test/package.test.ts. Not run.
import { Effect, Redacted } from "effect"
import type { PgPoolError } from "effect-pg-pool"
import { PgPool, PgPoolLive, PgPoolSql, Transaction } from "effect-pg-pool"
import PgPoolModule = require("effect-pg-pool/PgPool")

export const program = Transaction.withTransaction(PgPoolModule.query("select $1::int as one", [1])).pipe(
  Effect.catchTag("PoolExhaustedError", (error: PgPoolError.PoolExhaustedError) => Effect.succeed(error.reason)),
  Effect.catchTag("ConnectionError", (error: PgPoolError.ConnectionError) => Effect.succeed(error.message)),
  Effect.provide(PgPool.layer({ url: Redacted.make("postgres://app@localhost/app") }))
)

export const layers = [PgPoolLive, PgPoolSql.layer] as const
