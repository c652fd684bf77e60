/**
 * The runnable examples run as the README says (`npx tsx examples/<name>.ts`), each on its own embedded
 * PostgreSQL, and exit 0.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "..")
const tsx = path.join(root, "node_modules", ".bin", "tsx")

const run = (file: string, args: ReadonlyArray<string> = []) =>
  Effect.async<{ code: number; stdout: string; stderr: string }>((resume) => {
    const env = { ...process.env }
    delete env.DATABASE_URL
    const child = execFile(
      tsx,
      [path.join(root, "examples", file), ...args],
      { cwd: root, env, timeout: 60_000 },
      (error, stdout, stderr) => {
        resume(
          Effect.succeed({ code: error === null ? 0 : typeof error.code === "number" ? error.code : 1, stdout, stderr })
        )
      }
    )
    return Effect.sync(() => child.kill())
  })

describe("examples", () => {
  it.live("http-service --once answers its routes", () =>
    Effect.gen(function*() {
      const { code, stderr, stdout } = yield* run("http-service.ts", ["--once"])
      assert.strictEqual(code, 0, stderr)
      assert.include(stdout, "GET /accounts/1 -> 200")
      assert.include(stdout, "POST /transfer?from=1&to=2&amount=5 -> 200")
      assert.include(stdout, "GET /stats -> 200")
    }), 90_000)

  it.live("transactions", () =>
    Effect.gen(function*() {
      const { code, stderr, stdout } = yield* run("transactions.ts")
      assert.strictEqual(code, 0, stderr)
      assert.include(stdout, "rolled back (changed my mind)")
      assert.include(stdout, "total after concurrent transfers: { total: 101 }")
    }), 90_000)

  it.live("sql-client", () =>
    Effect.gen(function*() {
      const { code, stderr, stdout } = yield* run("sql-client.ts")
      assert.strictEqual(code, 0, stderr)
      assert.include(stdout, "streamed rows: 5000")
    }), 90_000)
})
