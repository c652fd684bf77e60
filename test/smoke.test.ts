import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as PgPool from "../src/PgPool.js"
import { testLayer } from "./support/db.js"

describe("smoke", () => {
  it.effect("select 1", () =>
    Effect.gen(function*() {
      const rows = yield* PgPool.query("select 1 as one")
      assert.deepStrictEqual(rows, [{ one: 1 }])
      const stats = yield* PgPool.stats
      assert.strictEqual(stats.inUse, 0)
    }).pipe(Effect.provide(testLayer())))
})
