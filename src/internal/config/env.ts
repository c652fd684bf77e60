/**
 * The configuration from the environment, as libpq reads it, and the pool's `PGPOOL_` knobs.
 *
 * @internal
 */
import * as EffectConfig from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import type * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as HashSet from "effect/HashSet"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { Config, LayerConfig } from "../../PgPool.js"
import { closest } from "./fields.js"
import { resolveSync } from "./resolve.js"
import { isSslMode, libpqSeconds, parseUrl, sslModes } from "./url.js"

const optional = <A>(config: EffectConfig.Config<A>) => EffectConfig.option(config)

/** A duration in an environment variable: a number of milliseconds (`5000`) or a duration (`"5 seconds"`). */
const durationVariable = (field: string): EffectConfig.Config<Duration.Duration> => {
  const name = envName(field)
  return EffectConfig.mapOrFail(EffectConfig.string(name), (text) => {
    const trimmed = text.trim()
    if (/^\d+(\.\d+)?$/.test(trimmed)) return Either.right(Duration.millis(Number(trimmed)))
    // Effect's Duration reads "-5 seconds" as zero: refused, as a negative number of milliseconds is
    const decoded = trimmed.startsWith("-") ? Option.none() : Duration.decodeUnknown(trimmed)
    return Option.isSome(decoded)
      ? Either.right(decoded.value)
      : Either.left(
        ConfigError.InvalidData(
          [],
          `${name} (${field}) must be a non-negative number of milliseconds (5000) or duration such as "5 seconds", ` +
            `got ${JSON.stringify(text)}`
        )
      )
  })
}

/**
 * An integer in an environment variable. Effect's `Config.integer` reads an empty or blank value as 0, which is
 * a valid value of some knobs (`PGPOOL_MAX_USAGE=` would silently mean "no limit"): refused here, as is
 * anything but an integer.
 */
const integerVariable = (field: string): EffectConfig.Config<number> => {
  const name = envName(field)
  return EffectConfig.mapOrFail(
    EffectConfig.string(name),
    (text) =>
      /^\s*[-+]?\d+\s*$/.test(text)
        ? Either.right(Number(text))
        : Either.left(ConfigError.InvalidData([], `${name} (${field}) must be an integer, got ${JSON.stringify(text)}`))
  )
}

/** `PGPOOL_MAX_CONNECTIONS` for `maxConnections`: the knob's name in screaming snake case. @internal */
const envName = (knob: string): string => `PGPOOL_${knob.replace(/([A-Z])/g, "_$1").toUpperCase()}`

const integerKnobs = [
  "minConnections",
  "maxConnections",
  "maxIdle",
  "maxWaiting",
  "maxUsage",
  "prepareThreshold",
  "statementCacheSize",
  "pipelineDepth"
] as const
const durationKnobs = [
  "acquireTimeout",
  "idleTimeout",
  "maxLifetime",
  "maxLifetimeJitter",
  "connectTimeout",
  "drainTimeout",
  "maintenanceInterval",
  "statementTimeout",
  "queryTimeout",
  "leakDetectionThreshold",
  "roleCheckInterval",
  "readYourWritesTimeout"
] as const
const booleanKnobs = [
  "blocking",
  "pooling",
  "lazy",
  "retryLostQueries",
  "metrics",
  "readFallback",
  "shedLoad",
  "readYourWrites"
] as const
const stringKnobs = ["name", "readRouting", "readBalancing", "pooler"] as const

/** Every `PGPOOL_` variable this pool reads. @internal */
const knownPoolVariables: ReadonlySet<string> = new Set([
  ...[...integerKnobs, ...durationKnobs, ...booleanKnobs, ...stringKnobs, "setSession", "reset"].map((k) => envName(k))
])

const walkPoolVariables = (
  flat: ConfigProvider.ConfigProvider.Flat,
  path: ReadonlyArray<string>,
  found: Array<string>,
  depth: number
): Effect.Effect<void> =>
  Effect.flatMap(
    Effect.orElseSucceed(flat.enumerateChildren(path), () => HashSet.empty<string>()),
    (children) => {
      const name = path.join("_")
      if (HashSet.size(children) === 0 || depth > 8) {
        if (name.startsWith("PGPOOL_")) found.push(name)
        return Effect.void
      }
      if (name !== "PGPOOL" && name.startsWith("PGPOOL_") && knownPoolVariables.has(name)) found.push(name)
      const next = [...children].filter((child) => {
        const full = [...path, child].join("_")
        return path.length > 0 || full === "PGPOOL" || full.startsWith("PGPOOL_")
      })
      return Effect.forEach(next, (child) => walkPoolVariables(flat, [...path, child], found, depth + 1), {
        discard: true
      })
    }
  )

/**
 * Fails with a `ConfigError` naming a `PGPOOL_` variable of the configuration provider that this pool does
 * not read (a typo such as `PGPOOL_MAX_CONECTIONS` would otherwise be ignored in silence).
 *
 * @internal
 */
export const checkPoolVariables: Effect.Effect<void, ConfigError.ConfigError> = Effect.configProviderWith((provider) =>
  Effect.suspend(() => {
    const found: Array<string> = []
    return Effect.flatMap(walkPoolVariables(provider.flattened, [], found, 0), () => {
      const unknown = found.map((name) => name.toUpperCase()).find((name) => !knownPoolVariables.has(name))
      if (unknown === undefined) return Effect.void
      const suggestion = closest(unknown, knownPoolVariables)
      return Effect.fail(
        ConfigError.InvalidData(
          [unknown],
          `${unknown} is not a variable of this pool${suggestion === undefined ? "" : `: did you mean ${suggestion}?`}`
        )
      )
    })
  })
)

/** Hosts with their ports: `ports` is one port for all, or a comma-separated list matching `names` (libpq). */
const hostList = (
  names: ReadonlyArray<string>,
  ports: string | undefined
): ReadonlyArray<{ host: string; port?: number }> => {
  const portList = (ports ?? "").split(",").map((p) => p.trim())
  return names.map((host, i) => {
    const port = portList.length === names.length ? portList[i] : portList[0]
    return port === undefined || port === "" ? { host } : { host, port: Number(port) }
  })
}

const dollarQuote = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/

/**
 * Splits `PGPOOL_SET_SESSION` into statements: at `;` and line breaks outside quoted text (`'...'`, `"..."`,
 * `$tag$...$tag$`), each piece trimmed, empty pieces dropped. `set search_path to a, b; set application_name =
 * 'x'` is two statements.
 *
 * @internal
 */
export const splitStatements = (text: string): Array<string> => {
  const statements: Array<string> = []
  let start = 0
  let i = 0
  const cut = (end: number) => {
    const statement = text.slice(start, end).trim()
    if (statement !== "") statements.push(statement)
  }
  while (i < text.length) {
    const c = text[i]!
    if (c === "'" || c === "\"") {
      const end = text.indexOf(c, i + 1)
      i = end === -1 ? text.length : end + 1
    } else if (c === "$" && (i === 0 || !/[A-Za-z0-9_\u0080-\uffff$]/.test(text[i - 1]!))) {
      const tag = dollarQuote.exec(text.slice(i))?.[0]
      if (tag === undefined) {
        i++
      } else {
        const end = text.indexOf(tag, i + tag.length)
        i = end === -1 ? text.length : end + tag.length
      }
    } else if (c === ";" || c === "\n" || c === "\r") {
      cut(i)
      start = ++i
    } else {
      i++
    }
  }
  cut(text.length)
  return statements
}

/**
 * Adds the environment variable a field came from to an invalid-value error of that field, keeping its path.
 */
const namingVariable = (
  error: ConfigError.ConfigError,
  sources: ReadonlyMap<string, string>
): ConfigError.ConfigError => {
  if (error._op !== "InvalidData") return error
  const field = error.path[0]
  const variable = field === undefined ? undefined : sources.get(field)
  return variable === undefined
    ? error
    : ConfigError.InvalidData(error.path, `${error.message} (set by ${variable} in the environment)`)
}

/**
 * The configuration read from the environment, with libpq's rules: `DATABASE_URL`, whose values win, and
 * libpq's variables for whatever the URL does not give (all of them without a URL): `PGHOST` and `PGPORT`
 * (comma-separated for several hosts), `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, `PGAPPNAME`,
 * `PGCONNECT_TIMEOUT`, `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS`. Every pool knob from `PGPOOL_<KNOB>`
 * (`PGPOOL_MAX_CONNECTIONS`, `PGPOOL_ACQUIRE_TIMEOUT="5 seconds"`, `PGPOOL_SET_SESSION` as statements separated
 * by `;` or line breaks, ...). The result is checked: an invalid value fails with a `ConfigError` whose path
 * names the field and whose message names the variable.
 *
 * @internal
 */
export const configFromEnv: EffectConfig.Config<Config> = EffectConfig.all({
  url: optional(EffectConfig.redacted("DATABASE_URL")),
  host: optional(EffectConfig.string("PGHOST")),
  port: optional(EffectConfig.string("PGPORT")),
  database: optional(EffectConfig.string("PGDATABASE")),
  user: optional(EffectConfig.string("PGUSER")),
  password: optional(EffectConfig.redacted("PGPASSWORD")),
  sslmode: optional(EffectConfig.string("PGSSLMODE")),
  sslrootcert: optional(EffectConfig.string("PGSSLROOTCERT")),
  sslcert: optional(EffectConfig.string("PGSSLCERT")),
  sslkey: optional(EffectConfig.string("PGSSLKEY")),
  options: optional(EffectConfig.string("PGOPTIONS")),
  applicationName: optional(EffectConfig.string("PGAPPNAME")),
  connectTimeoutSeconds: optional(EffectConfig.string("PGCONNECT_TIMEOUT")),
  targetSessionAttrs: optional(EffectConfig.string("PGTARGETSESSIONATTRS")),
  loadBalanceHosts: optional(EffectConfig.string("PGLOADBALANCEHOSTS")),
  integers: EffectConfig.all(
    Object.fromEntries(integerKnobs.map((k) => [k, optional(integerVariable(k))]))
  ),
  durations: EffectConfig.all(
    Object.fromEntries(durationKnobs.map((k) => [k, optional(durationVariable(k))]))
  ),
  booleans: EffectConfig.all(
    Object.fromEntries(booleanKnobs.map((k) => [k, optional(EffectConfig.boolean(envName(k)))]))
  ),
  strings: EffectConfig.all(Object.fromEntries(stringKnobs.map((k) => [k, optional(EffectConfig.string(envName(k)))]))),
  setSession: optional(EffectConfig.string(envName("setSession"))),
  reset: optional(EffectConfig.literal("transaction", "always", "full")(envName("reset")))
}).pipe(
  EffectConfig.mapOrFail((env) => {
    const config: Record<string, unknown> = {}
    const sources = new Map<string, string>()
    const set = (field: string, value: unknown, variable: string) => {
      config[field] = value
      sources.set(field, variable)
    }
    for (const group of [env.integers, env.durations, env.booleans, env.strings]) {
      for (const [key, value] of Object.entries(group) as Array<[string, Option.Option<unknown>]>) {
        if (Option.isSome(value)) set(key, value.value, envName(key))
      }
    }
    if (Option.isSome(env.setSession)) {
      const statements = splitStatements(env.setSession.value)
      if (statements.length > 0) set("setSession", statements, envName("setSession"))
    }
    if (Option.isSome(env.reset)) set("reset", env.reset.value, envName("reset"))

    const url = Option.getOrUndefined(env.url)
    const parsed = url === undefined ? undefined : parseUrl(Redacted.value(url))
    if (url !== undefined) set("url", url, "DATABASE_URL")
    /** Whether the URL gives a value (as `?param=` or as the part of the URL it is usually written in). */
    const urlHas = (param: string, part = false): boolean =>
      url !== undefined && (parsed === undefined || part || parsed.params.has(param))
    const urlHosts = parsed?.hosts ?? []

    const hostNames = Option.isSome(env.host) && !urlHas("host", urlHosts.length > 0)
      ? env.host.value.split(",").map((h) => h.trim())
      : undefined
    const ports = Option.isSome(env.port) && !urlHas("port", urlHosts.some((h) => h.port !== undefined))
      ? env.port.value
      : undefined
    if (hostNames !== undefined && hostNames.length > 1) {
      set("hosts", hostList(hostNames, ports), ports === undefined ? "PGHOST" : "PGHOST and PGPORT")
    } else {
      if (hostNames !== undefined) set("host", hostNames[0], "PGHOST")
      const names = hostNames ?? urlHosts.map((h) => h.host || "localhost")
      if (ports !== undefined && names.length > 1 && ports.includes(",")) {
        set("hosts", hostList(names, ports), "PGPORT")
      } else if (ports !== undefined) {
        const port = Number(ports)
        if (ports.trim() === "" || !Number.isInteger(port)) {
          return Either.left(ConfigError.InvalidData(["PGPORT"], "PGPORT must be a port number"))
        }
        set("port", port, "PGPORT")
      }
    }
    if (Option.isSome(env.database) && !urlHas("dbname", parsed?.database !== undefined)) {
      set("database", env.database.value, "PGDATABASE")
    }
    if (Option.isSome(env.user) && !urlHas("user", parsed?.user !== undefined)) set("user", env.user.value, "PGUSER")
    if (Option.isSome(env.password) && !urlHas("password", parsed?.password !== undefined)) {
      set("password", env.password.value, "PGPASSWORD")
    }
    if (Option.isSome(env.sslmode) && !urlHas("sslmode")) {
      if (!isSslMode(env.sslmode.value)) {
        return Either.left(ConfigError.InvalidData(["PGSSLMODE"], `PGSSLMODE must be one of ${sslModes.join(", ")}`))
      }
      set("sslMode", env.sslmode.value, "PGSSLMODE")
    }
    if (Option.isSome(env.sslrootcert) && !urlHas("sslrootcert")) {
      set("sslRootCert", env.sslrootcert.value, "PGSSLROOTCERT")
    }
    if (Option.isSome(env.sslcert) && !urlHas("sslcert")) set("sslCert", env.sslcert.value, "PGSSLCERT")
    if (Option.isSome(env.sslkey) && !urlHas("sslkey")) set("sslKey", env.sslkey.value, "PGSSLKEY")
    if (Option.isSome(env.options) && !urlHas("options")) set("options", env.options.value, "PGOPTIONS")
    if (Option.isSome(env.applicationName) && !urlHas("application_name")) {
      set("applicationName", env.applicationName.value, "PGAPPNAME")
    }
    if (Option.isSome(env.connectTimeoutSeconds) && config.connectTimeout === undefined && !urlHas("connect_timeout")) {
      set("connectTimeout", libpqSeconds(env.connectTimeoutSeconds.value), "PGCONNECT_TIMEOUT")
    }
    if (Option.isSome(env.targetSessionAttrs) && !urlHas("target_session_attrs")) {
      set("targetSessionAttrs", env.targetSessionAttrs.value, "PGTARGETSESSIONATTRS")
    }
    if (Option.isSome(env.loadBalanceHosts) && !urlHas("load_balance_hosts")) {
      set("loadBalanceHosts", env.loadBalanceHosts.value, "PGLOADBALANCEHOSTS")
    }
    const checked = resolveSync(config as Config)
    return ConfigError.isConfigError(checked)
      ? Either.left(namingVariable(checked, sources))
      : Either.right(config as Config)
  })
)

/**
 * `layerConfig`'s input made a `Config.Wrap<Config>`: a `password` or `user` that is an Effect but not a
 * `Config` is an Effect to run for each connection, so it is carried as a value (`Config.succeed`) instead of
 * being read at start.
 *
 * @internal
 */
export const perConnectEffects = (config: LayerConfig): EffectConfig.Config.Wrap<Config> => {
  if (EffectConfig.isConfig(config)) return config
  return plainAsConfig(config) as EffectConfig.Config.Wrap<Config>
}

/**
 * Every value of `value` that is not a `Config` as `Config.succeed` of itself, so that `Config.unwrap` reads
 * only Configs and records of them: a plain value next to Configs (`pooler: "transaction"`) is taken as it is
 * (unwrap would look into a string's characters without end). Plain objects (`healthCheck`, `ssl`) are looked
 * into, as unwrap does; anything else (an Effect for `password`/`user`, a Redacted, a Duration, a Schedule, an
 * array) is one value.
 */
const plainAsConfig = (value: unknown): unknown => {
  if (EffectConfig.isConfig(value)) return value
  if (typeof value !== "object" || value === null || Object.getPrototypeOf(value) !== Object.prototype) {
    return EffectConfig.succeed(value)
  }
  const fields: Record<string, unknown> = {}
  for (const [key, field] of Object.entries(value)) fields[key] = plainAsConfig(field)
  return fields
}
