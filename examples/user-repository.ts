/**
 * A piece of application code to test: a repository of users on the pool. The unit test in
 * `user-repository.test.ts` runs it on `PgPoolTest.layer` (no database), the integration test in
 * `user-repository.integration.test.ts` on a real throwaway PostgreSQL (`PgPoolTest.layerEmbedded`).
 */
import { Context, Data, Effect, Layer } from "effect"
import { PgPool, type PgPoolError as Errors, Transaction } from "effect-pg-pool"

type PgPoolError = Errors.PoolError | Errors.QueryError

export interface User {
  readonly id: number
  readonly email: string
}

export class UserNotFound extends Data.TaggedError("UserNotFound")<{ readonly id: number }> {}
export class EmailTaken extends Data.TaggedError("EmailTaken")<{ readonly email: string }> {}

export class UserRepository extends Context.Tag("examples/UserRepository")<UserRepository, {
  readonly create: (email: string) => Effect.Effect<User, EmailTaken | PgPoolError>
  readonly find: (id: number) => Effect.Effect<User, UserNotFound | PgPoolError>
  readonly rename: (id: number, email: string) => Effect.Effect<User, UserNotFound | EmailTaken | PgPoolError>
}>() {}

const toUser = (row: PgPool.Row): User => ({ id: Number(row.id), email: String(row.email) })

/** A unique violation on the email column means the email is taken; every other error stays as it is. */
const emailTaken = (email: string) => (error: PgPoolError): Effect.Effect<never, EmailTaken | PgPoolError> =>
  error._tag === "QueryError" && error.code === "23505" ? Effect.fail(new EmailTaken({ email })) : Effect.fail(error)

export const UserRepositoryLive = Layer.effect(
  UserRepository,
  Effect.map(PgPool.PgPool, (pool) =>
    UserRepository.of({
      create: (email) =>
        pool.query("insert into users (email) values ($1) returning id, email", [email]).pipe(
          Effect.map((rows) => toUser(rows[0]!)),
          Effect.catchAll(emailTaken(email))
        ),
      find: (id) =>
        Effect.flatMap(pool.query("select id, email from users where id = $1", [id]), (rows) =>
          rows.length === 0 ? Effect.fail(new UserNotFound({ id })) : Effect.succeed(toUser(rows[0]!))),
      rename: (id, email) =>
        Transaction.withTransaction(Effect.gen(function*() {
          const rows = yield* PgPool.query("update users set email = $2 where id = $1 returning id, email", [id, email])
          if (rows.length === 0) {
            return yield* Effect.fail(new UserNotFound({ id }))
          }
          return toUser(rows[0]!)
        })).pipe(
          Effect.catchIf((e): e is PgPoolError =>
            e._tag === "QueryError", emailTaken(email)),
          Effect.provideService(PgPool.PgPool, pool)
        )
    }))
)

export const createTable = PgPool.query(
  "create table if not exists users (id serial primary key, email text unique not null)"
)
