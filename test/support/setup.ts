/**
 * Runs before each test file: creates a fresh database for the file and drops it afterwards.
 */
import { afterAll, inject } from "vitest"
import { createTestDatabase, dropTestDatabase } from "./db.js"

const admin = inject("pgAdminUrl")
await createTestDatabase(admin)
afterAll(() => dropTestDatabase())
