// Fails on an import cycle between modules, as the effect monorepo's scripts/circular.mjs does (madge).
// Only imports that exist at run time count: `import type`, `import { type X }` when every name is a type,
// `export type ... from`, and dynamic `import()` (loaded lazily, when the cycle has long been resolved) may form
// cycles. An import madge cannot resolve to a file of ours is an error too, so a cycle cannot hide behind it.
import madge from "madge"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const directories = ["src", "test", "examples", "bench", "demo", "scripts"]

const result = await madge(directories, {
  baseDir: root,
  fileExtensions: ["ts", "mts", "cts", "mjs", "cjs"],
  excludeRegExp: [/\.d\.ts$/, /(^|\/)node_modules\//],
  tsConfig: `${root}tsconfig.json`,
  detectiveOptions: {
    ts: { skipTypeImports: true, skipAsyncImports: true },
    es6: { skipTypeImports: true, skipAsyncImports: true }
  }
})

const unresolved = result.warnings().skipped.filter((path) => path.startsWith("."))
const cycles = result.circular()
if (unresolved.length > 0) {
  console.error(`Imports that could not be resolved:\n${unresolved.map((path) => `  ${path}`).join("\n")}`)
}
if (cycles.length > 0) {
  console.error(`Circular dependencies found (value imports):\n${cycles.map((c) => `  ${c.join(" -> ")}`).join("\n")}`)
}
if (unresolved.length > 0 || cycles.length > 0) process.exit(1)
console.log(`No circular dependencies in ${Object.keys(result.obj()).length} modules.`)
