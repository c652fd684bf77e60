import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

const src = fileURLToPath(new URL("./src/", import.meta.url))

export default defineConfig({
  // the examples and the demo import the package by its name, as users do: inside the repo, the sources
  resolve: {
    alias: [
      { find: /^effect-pg-pool$/, replacement: `${src}index.ts` },
      { find: /^effect-pg-pool\/(.*)$/, replacement: `${src}$1.ts` }
    ]
  },
  test: {
    include: ["test/**/*.test.ts", "examples/**/*.test.ts"],
    globalSetup: ["test/support/globalSetup.ts"],
    setupFiles: ["test/support/setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fakeTimers: { toFake: undefined },
    reporters: ["default"]
  }
})
