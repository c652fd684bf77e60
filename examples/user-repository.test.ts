/**
 * A unit test of application code with `PgPoolTest.layer`: the real pool on a fake server whose answers
 * the test scripts. No database, deterministic.
 *
 *   npx vitest run examples/user-repository.test.ts
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { PgPool, PgPoolTest } from "effect-pg-pool"
import { EmailTaken, UserNotFound, UserRepository, UserRepositoryLive } from "./user-repository.js"

const TestLive = Layer.provideMerge(UserRepositoryLive, PgPoolTest.layer())

describe("UserRepository (unit, fake server)", () => {
  it.effect("finds a user", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("from users where id", (statement) => ({
        rows: statement.params[0] === 1 ? [{ id: 1, email: "ada@example.com" }] : []
      }))
      const users = yield* UserRepository
      assert.deepStrictEqual(yield* users.find(1), { id: 1, email: "ada@example.com" })
      const missing = yield* Effect.flip(users.find(2))
      assert.deepStrictEqual(missing, new UserNotFound({ id: 2 }))
    }).pipe(Effect.provide(TestLive)))

  it.effect("maps a unique violation to EmailTaken", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("insert into users", {
        error: { code: "23505", message: "duplicate key value violates unique constraint \"users_email_key\"" }
      })
      const users = yield* UserRepository
      const error = yield* Effect.flip(users.create("ada@example.com"))
      assert.deepStrictEqual(error, new EmailTaken({ email: "ada@example.com" }))
    }).pipe(Effect.provide(TestLive)))

  it.effect("renames in a transaction, rolled back when the user does not exist", () =>
    Effect.gen(function*() {
      const server = yield* PgPoolTest.Controller
      yield* server.when("update users", { rows: [] })
      const users = yield* UserRepository
      const commands = Effect.map(server.statements, (log) => log.map((s) => s.text.split(" ")[0]))
      // on a connection of its own (withConnection), so that the log can be read before the connection goes back
      // to the pool: the pool's return would roll an open transaction back by itself, the ROLLBACK must be the
      // transaction's own
      const error = yield* PgPool.withConnection(Effect.gen(function*() {
        const error = yield* Effect.flip(users.rename(9, "x@example.com"))
        assert.deepStrictEqual(yield* commands, ["BEGIN", "update", "ROLLBACK"])
        assert.deepStrictEqual((yield* server.backends).map((b) => b.transactionStatus), ["idle"])
        return error
      }))
      assert.deepStrictEqual(error, new UserNotFound({ id: 9 }))
      assert.deepStrictEqual(yield* commands, ["BEGIN", "update", "ROLLBACK"])
    }).pipe(Effect.provide(TestLive)))
})
