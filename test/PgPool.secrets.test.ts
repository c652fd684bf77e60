/**
 * No part of a password leaks (issue 16 point 2): a marker password in well-formed and malformed URLs and
 * configs (unencoded `@`, `:` and `/` in it, a wrong host, a port nobody listens on, a wrong password against
 * the real test server, `PgPoolLive` through `ConfigProvider.fromMap`), and every channel a pool writes to
 * captured: the error (message, fields, `String()`, `JSON.stringify`, `util.inspect`, `Cause.pretty` of the
 * failure), every log line at `LogLevel.All` with its annotations, spans and cause, the attributes and events of
 * every span of a recording tracer, the name, description and tags of every metric of the registry, and
 * `PgPool.stats` whenever the pool builds. The marker must be in none of them.
 *
 * Two roles are created on the test server with marker passwords, so that the well-formed cases really
 * connect (the password went all the way through) and the channels of a working pool are captured too.
 */
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  ConfigError,
  ConfigProvider,
  Context,
  Effect,
  Exit,
  Layer,
  Logger,
  LogLevel,
  Metric,
  MetricState,
  Option,
  Redacted,
  Schedule,
  Tracer
} from "effect"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as util from "node:util"
import { PgPoolLive } from "../src/index.js"
import * as PgPool from "../src/PgPool.js"
import { adminQuery, testServer } from "./support/db.js"

/** In every password of this file, in every part of it between the characters a URL splits at. */
const marker = "Qk4-LEAK-MARKER-z8"
const suffix = Math.random().toString(36).slice(2, 8)
/** A role whose password has `@`, `:` and `/` in it. */
const slashRole = `leak_slash_${suffix}`
const slashPassword = `${marker}a@${marker}b:${marker}c/${marker}d`
/** A role whose password has `@` and `:` but no `/` (it can be given unencoded in a URL). */
const atRole = `leak_at_${suffix}`
const atPassword = `${marker}e@${marker}f:${marker}g`
const wrongPassword = `${marker}-wrong@x:y/z`

// ---------------------------------------------------------------------------------------------------------
// capturing every channel
// ---------------------------------------------------------------------------------------------------------

/** JSON that survives cycles, bigints, Maps and Sets. */
const json = (value: unknown): string => {
  const seen = new WeakSet<object>()
  try {
    return JSON.stringify(value, (_key, v: unknown) => {
      if (typeof v === "bigint") return v.toString()
      if (v instanceof Map) return [...v.entries()]
      if (v instanceof Set) return [...v]
      if (typeof v === "object" && v !== null) {
        if (seen.has(v)) return "[cycle]"
        seen.add(v)
      }
      return v
    }) ?? String(value)
  } catch (thrown) {
    return `[not serializable: ${String(thrown)}]`
  }
}

/** A span kept by the recording tracer: everything the pool put on it. */
class RecordedSpan implements Tracer.Span {
  readonly _tag = "Span"
  readonly traceId = "trace"
  readonly sampled = true
  status: Tracer.SpanStatus
  readonly attributes = new Map<string, unknown>()
  readonly events: Array<readonly [string, Record<string, unknown> | undefined]> = []
  readonly links: Array<Tracer.SpanLink>
  exit: Exit.Exit<unknown, unknown> | undefined = undefined
  constructor(
    readonly name: string,
    readonly spanId: string,
    readonly parent: Option.Option<Tracer.AnySpan>,
    readonly context: Context.Context<never>,
    links: ReadonlyArray<Tracer.SpanLink>,
    startTime: bigint,
    readonly kind: Tracer.SpanKind
  ) {
    this.status = { _tag: "Started", startTime }
    this.links = [...links]
  }
  end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    this.status = { _tag: "Ended", startTime: this.status.startTime, endTime, exit }
    this.exit = exit
  }
  attribute(key: string, value: unknown): void {
    this.attributes.set(key, value)
  }
  event(name: string, _startTime: bigint, attributes?: Record<string, unknown>): void {
    this.events.push([name, attributes])
  }
  addLinks(links: ReadonlyArray<Tracer.SpanLink>): void {
    for (const link of links) this.links.push(link)
  }
}

interface Capture {
  /** Every text a channel produced, with the channel's name. */
  readonly texts: Array<readonly [string, string]>
  readonly spans: Array<RecordedSpan>
  logLines: number
}

const capture = (): Capture => ({ texts: [], spans: [], logLines: 0 })

/** A logger at `LogLevel.All` that keeps every line: message, level, annotations, log spans and cause. */
const loggerLayer = (into: Capture) =>
  Layer.merge(
    Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ annotations, cause, logLevel, message, spans }) => {
        into.logLines++
        const messages = Array.isArray(message) ? message : [message]
        const line = [
          logLevel.label,
          ...messages.map((m) => typeof m === "string" ? m : `${json(m)} ${util.inspect(m, { depth: 10 })}`),
          json(Object.fromEntries(annotations)),
          util.inspect(Object.fromEntries(annotations), { depth: 10 }),
          json([...spans].map((s) => s.label)),
          Cause.isEmpty(cause) ? "" : Cause.pretty(cause, { renderErrorCause: true })
        ].join(" ")
        into.texts.push(["log", line])
      })
    ),
    Logger.minimumLogLevel(LogLevel.All)
  )

const tracerOf = (into: Capture) =>
  Tracer.make({
    span: (name, parent, context, links, startTime, kind) => {
      const span = new RecordedSpan(name, `span-${into.spans.length + 1}`, parent, context, links, startTime, kind)
      into.spans.push(span)
      return span
    },
    context: (f) => f()
  })

/** Every text of an error a user may see: message, each field, String, JSON, inspect. */
const errorTexts = (error: unknown): Array<readonly [string, string]> => {
  const texts: Array<readonly [string, string]> = [["String(error)", String(error)]]
  try {
    texts.push(["JSON.stringify(error)", JSON.stringify(error) ?? ""])
  } catch (thrown) {
    // a throwing JSON.stringify is a failure of its own (checked by the caller through this text)
    texts.push(["JSON.stringify(error) threw", String(thrown)])
  }
  texts.push(["util.inspect(error)", util.inspect(error, { depth: 10 })])
  if (typeof error === "object" && error !== null) {
    const fields = error as Record<string, unknown>
    texts.push(["error.message", String(fields.message)])
    for (const key of Object.keys(fields)) texts.push([`error.${key}`, `${json(fields[key])} ${String(fields[key])}`])
    if (fields.cause !== undefined) texts.push(["util.inspect(error.cause)", util.inspect(fields.cause, { depth: 10 })])
  }
  return texts
}

/** The names, descriptions and tags of every metric of the registry, and the keys of frequency metrics. */
const metricTexts = Effect.map(Metric.snapshot, (pairs) =>
  pairs.map((pair) => {
    const key = pair.metricKey
    const occurrences = MetricState.isFrequencyState(pair.metricState) ? [...pair.metricState.occurrences.keys()] : []
    return json({
      name: key.name,
      description: Option.getOrUndefined(key.description),
      tags: key.tags.map((t) => [t.key, t.value]),
      occurrences
    })
  }))

/** How a case ends: the layer builds (and its statement succeeds or not), or fails with a ConfigError or ConnectionError. */
type Outcome = "connects" | "builds, statement fails" | "ConfigError" | "ConnectionError"

interface Case {
  readonly name: string
  readonly layer: Layer.Layer<PgPool.PgPool, unknown>
  readonly outcome: Outcome
}

/**
 * Builds the case's layer with every channel captured; when it builds, reads `PgPool.stats`, runs a statement
 * inside a span, reads the stats again. Returns the texts and the outcome.
 */
const runCase = (c: Case) =>
  Effect.gen(function*() {
    const into = capture()
    const exit = yield* Effect.exit(
      Effect.scoped(Effect.gen(function*() {
        const pool = Context.get(yield* Layer.build(c.layer), PgPool.PgPool)
        into.texts.push(["PgPool.stats after the build", json(yield* pool.stats)])
        const statement = yield* Effect.exit(
          pool.query("select current_user as who").pipe(Effect.withSpan("request"))
        )
        into.texts.push(["PgPool.stats after a statement", json(yield* pool.stats)])
        return statement
      }))
    ).pipe(
      Effect.withTracer(tracerOf(into)),
      Effect.provide(loggerLayer(into))
    )
    const failures: Array<Cause.Cause<unknown>> = []
    let outcome: Outcome
    if (Exit.isFailure(exit)) {
      failures.push(exit.cause)
      const error = Cause.failureOption(exit.cause)
      outcome = Option.isSome(error) && ConfigError.isConfigError(error.value)
        ? "ConfigError"
        : Option.isSome(error) && (error.value as { _tag?: unknown })._tag === "ConnectionError"
        ? "ConnectionError"
        : assert.fail(
          `${c.name}: the layer failed with neither ConfigError nor ConnectionError: ${Cause.pretty(exit.cause)}`
        )
    } else if (Exit.isFailure(exit.value)) {
      failures.push(exit.value.cause)
      outcome = "builds, statement fails"
    } else {
      outcome = "connects"
    }
    for (const cause of failures) {
      into.texts.push(["Cause.pretty", Cause.pretty(cause, { renderErrorCause: true })])
      into.texts.push(["Cause.pretty (plain)", Cause.pretty(cause)])
      for (const error of [...Cause.failures(cause), ...Cause.defects(cause)]) {
        for (const text of errorTexts(error)) into.texts.push(text)
      }
    }
    for (const span of into.spans) {
      into.texts.push([
        `span ${span.name}`,
        json({ name: span.name, attributes: span.attributes, events: span.events, links: span.links.length })
      ])
      if (span.exit !== undefined && Exit.isFailure(span.exit)) {
        into.texts.push([`span ${span.name} exit`, Cause.pretty(span.exit.cause, { renderErrorCause: true })])
      }
    }
    for (const text of yield* metricTexts) into.texts.push(["metric", text])
    return { into, outcome, exit }
  })

/** Where the marker was found: `case: channel: text` (text cut short). */
const leaksOf = (c: Case, texts: ReadonlyArray<readonly [string, string]>): Array<string> =>
  texts.filter(([, text]) => text.includes(marker) || text.includes("JSON.stringify(error) threw")).map((
    [channel, text]
  ) => `${c.name}: ${channel}: ${text.slice(0, 400)}`)

// ---------------------------------------------------------------------------------------------------------
// the cases
// ---------------------------------------------------------------------------------------------------------

/** A port on which nothing listens: the OS gives a free one, which is closed again. */
const closedPort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** Fail fast: two reconnects 10 ms apart, a connect timeout of 3 s. */
const fast: PgPool.Config = {
  reconnect: Schedule.recurs(2).pipe(Schedule.addDelay(() => "10 millis")),
  connectTimeout: "3 seconds"
}

const poolLayer = (config: PgPool.Config) => PgPool.layer({ maxConnections: 1, ...fast, ...config })

const live = (entries: ReadonlyArray<readonly [string, string]>) =>
  Layer.provide(
    PgPoolLive,
    Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["PGPOOL_MAX_CONNECTIONS", "1"], ...entries])))
  )

const cases = (deadPort: number, keyFile: string): ReadonlyArray<Case> => {
  const { database, host, port } = testServer()
  const at = `${host}:${port}`
  const e = encodeURIComponent
  return [
    // well-formed, connecting: the password went through
    {
      name: "URL, password percent-encoded",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@${at}/${database}` }),
      outcome: "connects"
    },
    {
      name: "URL as Redacted, password percent-encoded",
      layer: poolLayer({ url: Redacted.make(`postgres://${slashRole}:${e(slashPassword)}@${at}/${database}`) }),
      outcome: "connects"
    },
    {
      name: "URL, unencoded @ and : in the password (split at the last @)",
      layer: poolLayer({ url: `postgres://${atRole}:${atPassword}@${at}/${database}` }),
      outcome: "connects"
    },
    {
      name: "URL, password as ?password=",
      layer: poolLayer({ url: `postgres://${slashRole}@${at}/${database}?password=${e(slashPassword)}` }),
      outcome: "connects"
    },
    {
      name: "config fields, password Redacted",
      layer: poolLayer({ host, port, database, user: slashRole, password: Redacted.make(slashPassword) }),
      outcome: "connects"
    },
    {
      name: "PgPoolLive: DATABASE_URL, password percent-encoded",
      layer: live([["DATABASE_URL", `postgres://${slashRole}:${e(slashPassword)}@${at}/${database}`]]),
      outcome: "connects"
    },
    {
      name: "PgPoolLive: DATABASE_URL without a password, PGPASSWORD",
      layer: live([["DATABASE_URL", `postgres://${slashRole}@${at}/${database}`], ["PGPASSWORD", slashPassword]]),
      outcome: "connects"
    },
    {
      name: "PgPoolLive: PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE",
      layer: live([
        ["PGHOST", host],
        ["PGPORT", String(port)],
        ["PGUSER", atRole],
        ["PGPASSWORD", atPassword],
        ["PGDATABASE", database]
      ]),
      outcome: "connects"
    },
    // wrong password against the real server
    {
      name: "URL, wrong password (percent-encoded)",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(wrongPassword)}@${at}/${database}` }),
      outcome: "ConnectionError"
    },
    {
      name: "URL, unencoded @ and : in a wrong password",
      layer: poolLayer({ url: `postgres://${slashRole}:${atPassword}@${at}/${database}` }),
      outcome: "ConnectionError"
    },
    {
      name: "config fields, wrong password",
      layer: poolLayer({ host, port, database, user: atRole, password: Redacted.make(wrongPassword) }),
      outcome: "ConnectionError"
    },
    {
      name: "lazy pool, wrong password: builds, the statement fails",
      layer: poolLayer({ host, port, database, user: atRole, password: Redacted.make(wrongPassword), lazy: true }),
      outcome: "builds, statement fails"
    },
    {
      name: "PgPoolLive: PGPASSWORD wrong",
      layer: live([
        ["DATABASE_URL", `postgres://${atRole}@${at}/${database}`],
        ["PGPASSWORD", wrongPassword]
      ]),
      outcome: "ConnectionError"
    },
    // wrong host, wrong port
    {
      name: "URL, a host that does not exist",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@no-such-host.invalid:${port}/${database}` }),
      outcome: "ConnectionError"
    },
    {
      name: "URL, a port nobody listens on",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@127.0.0.1:${deadPort}/${database}` }),
      outcome: "ConnectionError"
    },
    {
      name: "URL with unencoded @ and :, a port nobody listens on",
      layer: poolLayer({ url: `postgres://${atRole}:${atPassword}@127.0.0.1:${deadPort}/${database}` }),
      outcome: "ConnectionError"
    },
    {
      name: "lazy pool, a port nobody listens on: builds, the statement fails",
      layer: poolLayer({
        host: "127.0.0.1",
        port: deadPort,
        database,
        user: atRole,
        password: Redacted.make(atPassword),
        lazy: true,
        acquireTimeout: "2 seconds"
      }),
      outcome: "builds, statement fails"
    },
    {
      name: "PgPoolLive: PGPASSWORD, a port nobody listens on",
      layer: live([
        ["PGHOST", "127.0.0.1"],
        ["PGPORT", String(deadPort)],
        ["PGUSER", atRole],
        ["PGPASSWORD", atPassword],
        ["PGDATABASE", database],
        ["PGCONNECT_TIMEOUT", "3"]
      ]),
      outcome: "ConnectionError"
    },
    // malformed
    {
      name: "URL, unencoded @ : / in the password",
      layer: poolLayer({ url: `postgres://${slashRole}:${slashPassword}@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, unencoded / in the password after an @ (the part after / would be the database)",
      layer: poolLayer({ url: `postgres://${slashRole}:1@x/${marker}h@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, unencoded / in the password after digits (user:digits would be a host and port)",
      layer: poolLayer({ url: `postgres://${slashRole}:12/${marker}i@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, unencoded ? in the password (the rest would be the query)",
      layer: poolLayer({ url: `postgres://${slashRole}:?${marker}j@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, unencoded ? and = in the password (the rest would be a parameter, unknown)",
      layer: poolLayer({ url: `postgres://${slashRole}:?${marker}m=1@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, unencoded # in the password (the rest would be a fragment)",
      layer: poolLayer({ url: `postgres://${slashRole}:12#${marker}k@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, not postgres://",
      layer: poolLayer({ url: `postgres:/${slashRole}:${slashPassword}@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, another scheme",
      layer: poolLayer({ url: `mysql://${slashRole}:${e(slashPassword)}@${at}/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, a port that is not a number",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@${host}:port/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, a port out of range",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@${host}:99999/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, an unclosed [",
      layer: poolLayer({ url: `postgres://${slashRole}:${atPassword}@[::1/${database}` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, a parameter this pool does not support",
      layer: poolLayer({
        url: `postgres://${slashRole}:${e(slashPassword)}@${at}/${database}?passwd=${e(slashPassword)}`
      }),
      outcome: "ConfigError"
    },
    {
      name: "URL, an invalid sslmode",
      layer: poolLayer({ url: `postgres://${slashRole}:${e(slashPassword)}@${at}/${database}?sslmode=sometimes` }),
      outcome: "ConfigError"
    },
    {
      name: "URL, sslpassword with an unreadable key, against a server without TLS",
      layer: poolLayer({
        url: `postgres://${slashRole}:${e(slashPassword)}@${at}/${database}?sslmode=require&sslkey=${
          e(keyFile)
        }&sslpassword=${e(slashPassword)}`
      }),
      outcome: "ConnectionError"
    },
    {
      name: "config: password given as a plain string",
      layer: poolLayer({
        host,
        port,
        database,
        user: slashRole,
        password: slashPassword as unknown as Redacted.Redacted
      }),
      outcome: "ConfigError"
    },
    {
      name: "PgPoolLive: DATABASE_URL with unencoded @ : / in the password",
      layer: live([["DATABASE_URL", `postgres://${slashRole}:${slashPassword}@${at}/${database}`]]),
      outcome: "ConfigError"
    },
    {
      name: "PgPoolLive: DATABASE_URL with an unencoded / after an @, and PGPASSWORD",
      layer: live([
        ["DATABASE_URL", `postgres://${slashRole}:1@x/${marker}l@${at}/${database}`],
        ["PGPASSWORD", slashPassword]
      ]),
      outcome: "ConfigError"
    },
    {
      name: "PgPoolLive: DATABASE_URL not a URL, PGPASSWORD",
      layer: live([["DATABASE_URL", `${slashRole}:${slashPassword}@${at}`], ["PGPASSWORD", slashPassword]]),
      outcome: "ConfigError"
    },
    {
      name: "PgPoolLive: PGPASSWORD with an invalid PGPORT",
      layer: live([["PGHOST", host], ["PGPORT", "port"], ["PGPASSWORD", slashPassword]]),
      outcome: "ConfigError"
    }
  ]
}

describe("no part of a password in any output", () => {
  it.live(
    "a marker password in well-formed and malformed URLs and configs: in no error, log, span, metric or stats",
    () =>
      Effect.gen(function*() {
        const deadPort = yield* closedPort
        const keyFile = path.join(os.tmpdir(), `effect-pg-pool-no-such-key-${suffix}.key`)
        assert.isFalse(fs.existsSync(keyFile))
        const literal = (text: string) => `'${text.replace(/'/g, "''")}'`
        yield* Effect.acquireRelease(
          Effect.forEach(
            [[slashRole, slashPassword], [atRole, atPassword]] as const,
            ([role, password]) => adminQuery(`create role ${role} login password ${literal(password)}`),
            { discard: true }
          ),
          () =>
            Effect.forEach([slashRole, atRole], (role) => Effect.ignore(adminQuery(`drop role if exists ${role}`)), {
              discard: true
            })
        )
        const all = cases(deadPort, keyFile)
        assert.isAtLeast(all.length, 12)
        const outcomes: Array<string> = []
        const leaks: Array<string> = []
        let logLines = 0
        let spans = 0
        for (const c of all) {
          const { exit, into, outcome } = yield* runCase(c)
          outcomes.push(`${c.name}: ${outcome}`)
          for (const leak of leaksOf(c, into.texts)) leaks.push(leak)
          if (outcome !== c.outcome) {
            outcomes.push(`  expected ${c.outcome}: ${Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "built"}`)
            continue
          }
          if (outcome === "connects") {
            const rows = Exit.isSuccess(exit) && Exit.isSuccess(exit.value) ? exit.value.value : []
            assert.include([slashRole, atRole], rows[0]?.who, `${c.name}: ${json(rows)}`)
            // the pool's own channels were really captured: the connection log and the statement's span
            assert.isAbove(into.logLines, 0, `${c.name}: no log line captured`)
            assert.isTrue(into.spans.some((s) => s.name === "PgPool.query"), `${c.name}: no PgPool.query span`)
          }
          logLines += into.logLines
          spans += into.spans.length
        }
        assert.deepStrictEqual(leaks, [], leaks.join("\n\n"))
        assert.deepStrictEqual(outcomes.filter((o) => o.startsWith("  expected")), [], outcomes.join("\n"))
        // and the metrics: the pools' names are among the tags
        const metrics = yield* metricTexts
        assert.isTrue(metrics.some((m) => m.includes(`${slashRole}@`)), "no metric of the pools")
        assert.isAbove(logLines, all.length, outcomes.join("\n"))
        assert.isAbove(spans, 0)
      }).pipe(Effect.scoped),
    { timeout: 120_000 }
  )
})
