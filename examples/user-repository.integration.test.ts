/**
 * An integration test of the same code on a real, throwaway PostgreSQL (`PgPoolTest.layerEmbedded`): no
 * Docker, no installed server; the server is stopped and its data deleted when the layer is released.
 *
 *   npx vitest run examples/user-repository.integration.test.ts
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { PgPoolTest } from "effect-pg-pool"
import { createTable, EmailTaken, UserNotFound, UserRepository, UserRepositoryLive } from "./user-repository.js"

const IntegrationLive = Layer.provideMerge(UserRepositoryLive, PgPoolTest.layerEmbedded())

describe("UserRepository (integration, real PostgreSQL)", () => {
  it.layer(IntegrationLive, { timeout: "60 seconds" })((it) => {
    it.effect("creates, finds and renames users; the database enforces unique emails", () =>
      Effect.gen(function*() {
        yield* createTable
        const users = yield* UserRepository
        const ada = yield* users.create("ada@example.com")
        assert.deepStrictEqual(yield* users.find(ada.id), ada)
        const taken = yield* Effect.flip(users.create("ada@example.com"))
        assert.deepStrictEqual(taken, new EmailTaken({ email: "ada@example.com" }))
        const renamed = yield* users.rename(ada.id, "countess@example.com")
        assert.strictEqual(renamed.email, "countess@example.com")
        const missing = yield* Effect.flip(users.rename(999, "nobody@example.com"))
        assert.deepStrictEqual(missing, new UserNotFound({ id: 999 }))
      }))
  })
})
