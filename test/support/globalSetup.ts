/**
 * Starts one throwaway PostgreSQL for the whole run (unless PG_TEST_URL points at a server) and hands its
 * admin URL to the test files, each of which creates its own fresh database (see setup.ts).
 */
import { Effect, Exit, Redacted, Scope } from "effect"
import type { TestProject } from "vitest/node"
import * as Embedded from "../../src/internal/testing/embedded.js"

declare module "vitest" {
  export interface ProvidedContext {
    pgAdminUrl: string
  }
}

export default async function setup(project: TestProject) {
  const external = process.env.PG_TEST_URL
  if (external !== undefined && external !== "") {
    project.provide("pgAdminUrl", external)
    return
  }
  const scope = Effect.runSync(Scope.make())
  const server = await Effect.runPromise(Scope.extend(Embedded.make(), scope))
  project.provide("pgAdminUrl", Redacted.value(server.url("postgres")))
  return async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
