/**
 * Validation of the pool configuration and parsing of connection URLs. Every invalid value fails with a
 * `ConfigError.InvalidData` whose path names the field. A URL is never copied into an error message: it may
 * hold a password.
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
import * as Schedule from "effect/Schedule"
import type * as Connector from "../Connector.js"
import type { Config, ResetMode } from "../PgPool.js"

/** @internal */
export interface HostPort {
  readonly host: string
  readonly port: number
}

/** @internal */
export interface ResolvedConfig {
  /** The URL as given, for `PgClient.config`. */
  readonly url: Redacted.Redacted | undefined
  readonly hosts: ReadonlyArray<HostPort>
  readonly database: string
  readonly user: string
  readonly password: Redacted.Redacted | undefined
  /** TLS settings with their mode resolved; `undefined` for no TLS. */
  readonly ssl: Connector.SslOptions | undefined
  readonly applicationName: string | undefined
  readonly options: string | undefined
  readonly types: Connector.TypeParsers | undefined
  readonly minConnections: number
  readonly maxConnections: number
  readonly maxIdle: number
  readonly blocking: boolean
  readonly acquireTimeout: number
  readonly maxWaiting: number
  readonly maxUsage: number
  readonly prepareThreshold: number
  readonly statementCacheSize: number
  readonly setSession: ReadonlyArray<string>
  readonly reset: ResetMode
  readonly idleTimeout: number
  readonly maxLifetime: number
  readonly maxLifetimeJitter: number
  readonly pooling: boolean
  readonly connectTimeout: Duration.Duration
  readonly drainTimeout: number
  readonly maintenanceInterval: number
  readonly reconnect: Schedule.Schedule<unknown, unknown>
  readonly lazy: boolean
  readonly statementTimeout: number | undefined
  readonly queryTimeout: number | undefined
  readonly healthCheck: HealthCheck
  readonly retryLostQueries: boolean
  readonly leakDetectionThreshold: number | undefined
  readonly name: string
  readonly metrics: boolean
  readonly targetSessionAttrs: TargetSessionAttrs
  readonly loadBalanceHosts: "disable" | "random"
  readonly readRouting: "standby" | "off"
  readonly readBalancing: "round-robin" | "random" | "least-busy"
  readonly readFallback: boolean
  readonly roleCheckInterval: number
}

/** @internal */
export type TargetSessionAttrs = "any" | "read-write" | "read-only" | "primary" | "standby" | "prefer-standby"

const targetSessionAttrsValues: ReadonlyArray<TargetSessionAttrs> = [
  "any",
  "read-write",
  "read-only",
  "primary",
  "standby",
  "prefer-standby"
]

/** @internal */
export interface HealthCheck {
  readonly enabled: boolean
  readonly idleThreshold: number
  readonly interval: number
  readonly timeout: Duration.Duration
}

/** @internal */
export const defaultReconnect: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis", 2).pipe(
  Schedule.jittered,
  Schedule.union(Schedule.spaced("5 seconds"))
)

const invalid = (field: string, message: string): ConfigError.ConfigError =>
  ConfigError.InvalidData([field], message)

interface ParsedUrl {
  readonly hosts: ReadonlyArray<{ readonly host: string; readonly port: number | undefined }>
  readonly database: string | undefined
  readonly user: string | undefined
  readonly password: Redacted.Redacted | undefined
  readonly params: ReadonlyMap<string, string>
}

const decode = (part: string): string => {
  try {
    return decodeURIComponent(part)
  } catch {
    return part
  }
}

/**
 * Parses a libpq connection URI: `postgres[ql]://[user[:password]@][host[:port][,host[:port]...]][/database][?param=value&...]`.
 * The user info ends at the *last* `@` before the path, as in pg-connection-string and browsers, so an
 * unencoded `@` in a password stays in the password.
 *
 * @internal
 */
export const parseUrl = (url: string): ParsedUrl | undefined => {
  const match = /^postgres(?:ql)?:\/\/([^/?#]*)(?:\/([^?#]*))?(?:\?([^#]*))?(?:#.*)?$/.exec(url.trim())
  if (match === null) return undefined
  const [, authority = "", path, query] = match
  const at = authority.lastIndexOf("@")
  const userinfo = at === -1 ? undefined : authority.slice(0, at)
  const hostlist = at === -1 ? authority : authority.slice(at + 1)
  let user: string | undefined
  let password: Redacted.Redacted | undefined
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(":")
    user = decode(colon === -1 ? userinfo : userinfo.slice(0, colon)) || undefined
    if (colon !== -1) password = Redacted.make(decode(userinfo.slice(colon + 1)))
  }
  const hosts: Array<{ host: string; port: number | undefined }> = []
  for (const entry of hostlist.split(",")) {
    if (entry === "") continue
    const bracket = /^\[([^\]]+)\](?::(\d*))?$/.exec(entry)
    const plain = /^([^:]*)(?::(\d*))?$/.exec(entry)
    const found = bracket ?? plain
    if (found === null) return undefined
    const port = found[2] === undefined || found[2] === "" ? undefined : Number(found[2])
    hosts.push({ host: decode(found[1] ?? ""), port })
  }
  const params = new Map<string, string>()
  for (const pair of (query ?? "").split("&")) {
    if (pair === "") continue
    const eq = pair.indexOf("=")
    params.set(decode(eq === -1 ? pair : pair.slice(0, eq)), decode(eq === -1 ? "" : pair.slice(eq + 1)))
  }
  return { hosts, database: path ? decode(path) : undefined, user, password, params }
}

/** libpq's `sslmode` values. @internal */
export const sslModes: ReadonlyArray<Connector.SslMode> = [
  "disable",
  "allow",
  "prefer",
  "require",
  "verify-ca",
  "verify-full"
]

const isSslMode = (u: unknown): u is Connector.SslMode => sslModes.includes(u as Connector.SslMode)

const integer = (field: string, value: unknown, min: number, fallback: number): number | ConfigError.ConfigError => {
  if (value === undefined) return fallback
  if (value === Infinity && min >= 0) return Infinity
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    return invalid(field, `${field} must be an integer >= ${min}, got ${String(value)}`)
  }
  return value
}

const millis = (
  field: string,
  value: unknown,
  fallback: number | undefined,
  options: { readonly allowZero: boolean }
): number | undefined | ConfigError.ConfigError => {
  if (value === undefined) return fallback
  if (typeof value === "number" && (value < 0 || Number.isNaN(value))) {
    return invalid(field, `${field} must be a non-negative duration, got ${value}`)
  }
  const decoded = Duration.decodeUnknown(value)
  if (decoded._tag === "None") {
    return invalid(field, `${field} must be a duration such as "5 seconds" or a number of milliseconds`)
  }
  const ms = Duration.toMillis(decoded.value)
  if (!options.allowZero && ms === 0) return invalid(field, `${field} must be greater than zero`)
  return ms
}

const isError = (u: unknown): u is ConfigError.ConfigError => ConfigError.isConfigError(u)

/** libpq's `connect_timeout`: seconds; zero or negative means no limit. NaN when it is not a number. */
const libpqSeconds = (text: string): number => {
  const seconds = text.trim() === "" ? NaN : Number(text)
  return Number.isNaN(seconds) ? NaN : seconds <= 0 ? Infinity : seconds * 1000
}

/**
 * Checks every field and fills in the defaults.
 *
 * @internal
 */
export const resolve = (config: Config): Effect.Effect<ResolvedConfig, ConfigError.ConfigError> =>
  Effect.suspend(() => {
    const result = resolveSync(config)
    return isError(result) ? Effect.fail(result) : Effect.succeed(result)
  })

const resolveSync = (config: Config): ResolvedConfig | ConfigError.ConfigError => {
  if (typeof config !== "object" || config === null) return invalid("config", "the configuration must be an object")
  const unknown = unknownField(config)
  if (unknown !== undefined) return unknown
  let parsed: ParsedUrl | undefined
  let url: Redacted.Redacted | undefined
  if (config.url !== undefined) {
    const raw = Redacted.isRedacted(config.url) ? Redacted.value(config.url) : config.url
    if (typeof raw !== "string") return invalid("url", "url must be a string or a Redacted string")
    parsed = parseUrl(raw)
    if (parsed === undefined) {
      return invalid("url", "url is not a PostgreSQL connection URI (postgres://user:password@host:port/database)")
    }
    for (const name of parsed.params.keys()) {
      if (!knownUrlParams.has(name)) {
        return invalid(
          "url",
          `url has a parameter this pool does not support: "${name}" (supported: ${[...knownUrlParams].join(", ")})`
        )
      }
    }
    url = Redacted.isRedacted(config.url) ? config.url : Redacted.make(raw)
  }
  const params = parsed?.params ?? new Map<string, string>()

  // libpq: the host and port parameters may be comma-separated lists (one port for all, or one per host)
  const portList = params.get("port")?.split(",").map((p) => p.trim())
  if (portList !== undefined && portList.some((p) => !/^\d*$/.test(p))) {
    return invalid("url", "the port parameter must be a port number or a comma-separated list of them")
  }
  const paramPort = portList?.length === 1 && portList[0] !== "" ? Number(portList[0]) : undefined
  const port = config.port ?? paramPort
  if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) {
    return invalid("port", `port must be an integer between 1 and 65535, got ${String(port)}`)
  }
  for (const h of parsed?.hosts ?? []) {
    if (h.port !== undefined && (!Number.isInteger(h.port) || h.port < 1 || h.port > 65535)) {
      return invalid("url", "url has a port outside 1..65535")
    }
  }
  let hosts: Array<HostPort>
  if (config.hosts !== undefined) {
    if (!Array.isArray(config.hosts) || config.hosts.length === 0) {
      return invalid("hosts", "hosts must be a non-empty array of { host, port }")
    }
    hosts = []
    for (const h of config.hosts) {
      if (typeof h?.host !== "string" || h.host === "") return invalid("hosts", "every entry of hosts needs a host name")
      const p = h.port ?? port ?? 5432
      if (!Number.isInteger(p) || p < 1 || p > 65535) {
        return invalid("hosts", `port of host ${h.host} must be an integer between 1 and 65535, got ${String(p)}`)
      }
      hosts.push({ host: h.host, port: p })
    }
  } else if (config.host !== undefined) {
    if (typeof config.host !== "string" || config.host === "") return invalid("host", "host must be a non-empty string")
    hosts = [{ host: config.host, port: port ?? 5432 }]
  } else if (parsed !== undefined && parsed.hosts.length > 0) {
    hosts = parsed.hosts.map((h) => ({ host: h.host || "localhost", port: config.port ?? h.port ?? port ?? 5432 }))
  } else {
    const names = (params.get("host") ?? "localhost").split(",").map((h) => h.trim())
    if (portList !== undefined && portList.length > 1 && portList.length !== names.length) {
      return invalid("url", `the port parameter lists ${portList.length} ports for ${names.length} hosts`)
    }
    hosts = []
    for (const [i, name] of names.entries()) {
      const listed = portList === undefined ? "" : portList.length === names.length ? portList[i]! : portList[0]!
      const p = config.port ?? (listed === "" ? undefined : Number(listed)) ?? 5432
      if (!Number.isInteger(p) || p < 1 || p > 65535) return invalid("url", "url has a port outside 1..65535")
      hosts.push({ host: name || "localhost", port: p })
    }
  }

  const user = config.user ?? parsed?.user ?? params.get("user") ?? "postgres"
  if (typeof user !== "string" || user === "") return invalid("user", "user must be a non-empty string")
  const database = config.database ?? parsed?.database ?? params.get("dbname") ?? user
  if (typeof database !== "string" || database === "") {
    return invalid("database", "database must be a non-empty string")
  }
  if (config.password !== undefined && !Redacted.isRedacted(config.password)) {
    return invalid("password", "password must be a Redacted value (Redacted.make(...) or Config.redacted(...))")
  }
  const password = config.password ??
    parsed?.password ??
    (params.has("password") ? Redacted.make(params.get("password")!) : undefined)

  const ssl = resolveSsl(config, params)
  if (isError(ssl)) return ssl
  const applicationName = config.applicationName ?? params.get("application_name") ??
    params.get("fallback_application_name")
  if (applicationName !== undefined && typeof applicationName !== "string") {
    return invalid("applicationName", "applicationName must be a string")
  }
  const options = config.options ?? params.get("options")
  if (options !== undefined && typeof options !== "string") return invalid("options", "options must be a string")
  if (config.types !== undefined && typeof config.types?.getTypeParser !== "function") {
    return invalid("types", "types must have a getTypeParser function (node-postgres' types)")
  }

  const maxConnections = integer("maxConnections", config.maxConnections, 1, 10)
  if (isError(maxConnections)) return maxConnections
  if (maxConnections === Infinity) return invalid("maxConnections", "maxConnections must be finite")
  const minConnections = integer("minConnections", config.minConnections, 0, 0)
  if (isError(minConnections)) return minConnections
  if (minConnections > maxConnections) {
    return invalid(
      "minConnections",
      `minConnections (${minConnections}) must not exceed maxConnections (${maxConnections})`
    )
  }
  const maxIdleRaw = integer("maxIdle", config.maxIdle, 0, maxConnections)
  if (isError(maxIdleRaw)) return maxIdleRaw
  if (maxIdleRaw < minConnections) {
    return invalid("maxIdle", `maxIdle (${maxIdleRaw}) must not be below minConnections (${minConnections})`)
  }
  const maxIdle = Math.min(maxIdleRaw, maxConnections)
  if (config.blocking !== undefined && typeof config.blocking !== "boolean") {
    return invalid("blocking", "blocking must be a boolean")
  }
  const acquireTimeout = millis("acquireTimeout", config.acquireTimeout, 30_000, { allowZero: true })
  if (isError(acquireTimeout)) return acquireTimeout
  const maxWaiting = integer("maxWaiting", config.maxWaiting, 0, Infinity)
  if (isError(maxWaiting)) return maxWaiting
  const maxUsageRaw = integer("maxUsage", config.maxUsage, 0, 0)
  if (isError(maxUsageRaw)) return maxUsageRaw
  const maxUsage = maxUsageRaw === 0 ? Infinity : maxUsageRaw
  const prepareThreshold = integer("prepareThreshold", config.prepareThreshold, 1, 5)
  if (isError(prepareThreshold)) return prepareThreshold
  if (prepareThreshold === Infinity) return invalid("prepareThreshold", "prepareThreshold must be finite")
  const statementCacheSize = integer("statementCacheSize", config.statementCacheSize, 0, 100)
  if (isError(statementCacheSize)) return statementCacheSize
  if (statementCacheSize === Infinity) {
    return invalid("statementCacheSize", "statementCacheSize must be finite (0 turns automatic preparation off)")
  }
  const setSession = config.setSession ?? []
  if (!Array.isArray(setSession) || setSession.some((s) => typeof s !== "string" || s.trim() === "")) {
    return invalid("setSession", "setSession must be an array of non-empty SQL strings")
  }
  const reset = config.reset ?? "transaction"
  if (reset !== "transaction" && reset !== "always" && reset !== "full") {
    return invalid("reset", `reset must be "transaction", "always" or "full", got ${JSON.stringify(reset)}`)
  }
  const idleTimeout = millis("idleTimeout", config.idleTimeout, 600_000, { allowZero: false })
  if (isError(idleTimeout)) return idleTimeout
  const maxLifetime = millis("maxLifetime", config.maxLifetime, 1_800_000, { allowZero: false })
  if (isError(maxLifetime)) return maxLifetime
  const maxLifetimeJitter = millis("maxLifetimeJitter", config.maxLifetimeJitter, undefined, { allowZero: true })
  if (isError(maxLifetimeJitter)) return maxLifetimeJitter
  const jitter = maxLifetimeJitter ?? (Number.isFinite(maxLifetime!) ? maxLifetime! / 10 : 0)
  if (Number.isFinite(maxLifetime!) && jitter >= maxLifetime!) {
    return invalid("maxLifetimeJitter", "maxLifetimeJitter must be smaller than maxLifetime")
  }
  if (config.pooling !== undefined && typeof config.pooling !== "boolean") {
    return invalid("pooling", "pooling must be a boolean")
  }
  const urlConnectTimeout = params.has("connect_timeout") ? libpqSeconds(params.get("connect_timeout")!) : undefined
  if (urlConnectTimeout !== undefined && Number.isNaN(urlConnectTimeout)) {
    return invalid("url", "connect_timeout must be a number of seconds (0 for no limit)")
  }
  const connectTimeout = millis("connectTimeout", config.connectTimeout ?? urlConnectTimeout, 10_000, {
    allowZero: false
  })
  if (isError(connectTimeout)) return connectTimeout
  const drainTimeout = millis("drainTimeout", config.drainTimeout, 10_000, { allowZero: true })
  if (isError(drainTimeout)) return drainTimeout
  const maintenanceInterval = millis("maintenanceInterval", config.maintenanceInterval, 5_000, { allowZero: false })
  if (isError(maintenanceInterval)) return maintenanceInterval
  if (!Number.isFinite(maintenanceInterval!)) return invalid("maintenanceInterval", "maintenanceInterval must be finite")
  if (config.reconnect !== undefined && !Schedule.isSchedule(config.reconnect)) {
    return invalid("reconnect", "reconnect must be a Schedule")
  }
  if (config.lazy !== undefined && typeof config.lazy !== "boolean") return invalid("lazy", "lazy must be a boolean")
  const statementTimeout = millis("statementTimeout", config.statementTimeout, undefined, { allowZero: false })
  if (isError(statementTimeout)) return statementTimeout
  const queryTimeout = millis("queryTimeout", config.queryTimeout, undefined, { allowZero: false })
  if (isError(queryTimeout)) return queryTimeout
  const leakDetectionThreshold = millis("leakDetectionThreshold", config.leakDetectionThreshold, undefined, {
    allowZero: false
  })
  if (isError(leakDetectionThreshold)) return leakDetectionThreshold
  const healthCheck = resolveHealthCheck(config.healthCheck)
  if (isError(healthCheck)) return healthCheck
  if (config.retryLostQueries !== undefined && typeof config.retryLostQueries !== "boolean") {
    return invalid("retryLostQueries", "retryLostQueries must be a boolean")
  }
  if (config.metrics !== undefined && typeof config.metrics !== "boolean") {
    return invalid("metrics", "metrics must be a boolean")
  }
  if (config.name !== undefined && (typeof config.name !== "string" || config.name === "")) {
    return invalid("name", "name must be a non-empty string")
  }
  const readRouting = config.readRouting ?? (hosts.length > 1 ? "standby" : "off")
  if (readRouting !== "standby" && readRouting !== "off") {
    return invalid("readRouting", `readRouting must be "standby" or "off", got ${JSON.stringify(readRouting)}`)
  }
  const targetSessionAttrs = config.targetSessionAttrs ??
    params.get("target_session_attrs") ??
    (hosts.length > 1 && readRouting === "standby" ? "read-write" : "any")
  if (!targetSessionAttrsValues.includes(targetSessionAttrs as TargetSessionAttrs)) {
    return invalid(
      config.targetSessionAttrs === undefined ? "url" : "targetSessionAttrs",
      `targetSessionAttrs must be one of ${targetSessionAttrsValues.join(", ")}, got ${JSON.stringify(targetSessionAttrs)}`
    )
  }
  const loadBalanceHosts = config.loadBalanceHosts ?? params.get("load_balance_hosts") ?? "disable"
  if (loadBalanceHosts !== "disable" && loadBalanceHosts !== "random") {
    return invalid(
      config.loadBalanceHosts === undefined ? "url" : "loadBalanceHosts",
      `loadBalanceHosts must be "disable" or "random", got ${JSON.stringify(loadBalanceHosts)}`
    )
  }
  const readBalancing = config.readBalancing ?? "least-busy"
  if (readBalancing !== "round-robin" && readBalancing !== "random" && readBalancing !== "least-busy") {
    return invalid(
      "readBalancing",
      `readBalancing must be "round-robin", "random" or "least-busy", got ${JSON.stringify(readBalancing)}`
    )
  }
  if (config.readFallback !== undefined && typeof config.readFallback !== "boolean") {
    return invalid("readFallback", "readFallback must be a boolean")
  }
  const roleCheckInterval = millis("roleCheckInterval", config.roleCheckInterval, 5_000, { allowZero: false })
  if (isError(roleCheckInterval)) return roleCheckInterval

  return {
    url,
    hosts,
    database,
    user,
    password,
    ssl,
    applicationName,
    options,
    types: config.types,
    minConnections,
    maxConnections,
    maxIdle,
    blocking: config.blocking ?? true,
    acquireTimeout: acquireTimeout!,
    maxWaiting,
    maxUsage,
    prepareThreshold,
    statementCacheSize,
    setSession,
    reset,
    idleTimeout: idleTimeout!,
    maxLifetime: maxLifetime!,
    maxLifetimeJitter: jitter,
    pooling: config.pooling ?? true,
    connectTimeout: Duration.millis(connectTimeout!),
    drainTimeout: drainTimeout!,
    maintenanceInterval: maintenanceInterval!,
    reconnect: config.reconnect ?? defaultReconnect,
    lazy: config.lazy ?? false,
    statementTimeout: statementTimeout === Infinity ? undefined : statementTimeout,
    queryTimeout: queryTimeout === Infinity ? undefined : queryTimeout,
    healthCheck,
    retryLostQueries: config.retryLostQueries ?? true,
    leakDetectionThreshold: leakDetectionThreshold === Infinity ? undefined : leakDetectionThreshold,
    name: config.name ?? `${user}@${hosts.map((h) => `${h.host}:${h.port}`).join(",")}/${database}`,
    metrics: config.metrics ?? true,
    targetSessionAttrs: targetSessionAttrs as TargetSessionAttrs,
    loadBalanceHosts,
    readRouting,
    readBalancing,
    readFallback: config.readFallback ?? true,
    roleCheckInterval: roleCheckInterval!
  }
}

const resolveHealthCheck = (input: Config["healthCheck"]): HealthCheck | ConfigError.ConfigError => {
  if (input === false) return { enabled: false, idleThreshold: Infinity, interval: Infinity, timeout: Duration.seconds(5) }
  const options = input === undefined || input === true ? {} : input
  if (typeof options !== "object" || options === null) {
    return invalid("healthCheck", "healthCheck must be a boolean or { idleThreshold, interval, timeout }")
  }
  const idleThreshold = millis("healthCheck.idleThreshold", options.idleThreshold, 5_000, { allowZero: true })
  if (isError(idleThreshold)) return idleThreshold
  const interval = millis("healthCheck.interval", options.interval, 60_000, { allowZero: false })
  if (isError(interval)) return interval
  const timeout = millis("healthCheck.timeout", options.timeout, 5_000, { allowZero: false })
  if (isError(timeout)) return timeout
  return { enabled: true, idleThreshold: idleThreshold!, interval: interval!, timeout: Duration.millis(timeout!) }
}

const knownUrlParams = new Set([
  "host",
  "port",
  "dbname",
  "user",
  "password",
  "sslmode",
  "sslrootcert",
  "sslcert",
  "sslkey",
  "sslpassword",
  "application_name",
  "fallback_application_name",
  "options",
  "connect_timeout",
  "target_session_attrs",
  "load_balance_hosts"
])

/** The fields of `PgPool.Config`: any other key is a mistake worth a `ConfigError`. */
const configFields: ReadonlyArray<keyof Config> = [
  "url",
  "host",
  "port",
  "hosts",
  "database",
  "user",
  "password",
  "ssl",
  "sslMode",
  "sslRootCert",
  "sslCert",
  "sslKey",
  "sslPassword",
  "applicationName",
  "options",
  "types",
  "minConnections",
  "maxIdle",
  "maxConnections",
  "blocking",
  "acquireTimeout",
  "maxWaiting",
  "maxUsage",
  "prepareThreshold",
  "statementCacheSize",
  "setSession",
  "reset",
  "idleTimeout",
  "maxLifetime",
  "maxLifetimeJitter",
  "pooling",
  "connectTimeout",
  "drainTimeout",
  "maintenanceInterval",
  "reconnect",
  "lazy",
  "healthCheck",
  "retryLostQueries",
  "statementTimeout",
  "queryTimeout",
  "leakDetectionThreshold",
  "name",
  "metrics",
  "targetSessionAttrs",
  "loadBalanceHosts",
  "readRouting",
  "readBalancing",
  "readFallback",
  "roleCheckInterval"
]
const knownConfigFields = new Set<string>(configFields)

/** Names users bring from other clients, and ours. */
const otherSpellings: Readonly<Record<string, string>> = {
  username: "user",
  dbname: "database",
  sslmode: "sslMode",
  sslrootcert: "sslRootCert",
  sslcert: "sslCert",
  sslkey: "sslKey",
  sslpassword: "sslPassword",
  application_name: "applicationName",
  max: "maxConnections",
  min: "minConnections",
  connectionString: "url",
  connectionTimeoutMillis: "connectTimeout",
  idleTimeoutMillis: "idleTimeout",
  connectionTTL: "maxLifetime",
  maxLifetimeSeconds: "maxLifetime",
  statement_timeout: "statementTimeout",
  query_timeout: "queryTimeout",
  target_session_attrs: "targetSessionAttrs"
}

const editDistance = (a: string, b: string): number => {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length]!
}

/** The closest of `names` to `name`, when it is close enough to be a likely typo. @internal */
export const closest = (name: string, names: Iterable<string>): string | undefined => {
  let best: string | undefined
  let bestDistance = Infinity
  for (const candidate of names) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase())
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(name.length / 4)) ? best : undefined
}

/** A key of the configuration object that is not a field of `PgPool.Config`, as a `ConfigError` naming it. */
const unknownField = (config: object): ConfigError.ConfigError | undefined => {
  for (const key of Object.keys(config)) {
    if (knownConfigFields.has(key) || (config as Record<string, unknown>)[key] === undefined) continue
    const suggestion = otherSpellings[key] ?? closest(key, knownConfigFields)
    return invalid(
      key,
      `PgPool.Config has no field "${key}"${suggestion === undefined ? "" : `: did you mean "${suggestion}"?`}${
        key === "username" ? " (PgPoolSql.layerClient takes @effect/sql-pg's configuration, username included)" : ""
      }`
    )
  }
  return undefined
}

const readableFile = (field: string, path: unknown): string | undefined | ConfigError.ConfigError => {
  if (path === undefined) return undefined
  if (typeof path !== "string" || path === "") return invalid(field, `${field} must be a file path`)
  return path
}

/**
 * TLS from `ssl`, `sslMode` and the `ssl*` file fields, with the URL's `sslmode`, `sslrootcert`, `sslcert`,
 * `sslkey`, `sslpassword` filling in what the fields leave out. `undefined` means no TLS.
 */
const resolveSsl = (
  config: Config,
  params: ReadonlyMap<string, string>
): Connector.SslOptions | undefined | ConfigError.ConfigError => {
  const ssl = config.ssl
  if (ssl !== undefined && typeof ssl !== "boolean" && (typeof ssl !== "object" || ssl === null)) {
    return invalid("ssl", "ssl must be a boolean or an object of TLS options")
  }
  const options: Connector.SslOptions = typeof ssl === "object" ? ssl : {}
  if (options.key !== undefined && !Redacted.isRedacted(options.key)) {
    return invalid("ssl", "ssl.key must be a Redacted value")
  }
  if (options.passphrase !== undefined && !Redacted.isRedacted(options.passphrase)) {
    return invalid("ssl", "ssl.passphrase must be a Redacted value")
  }
  if (options.mode !== undefined && !isSslMode(options.mode)) {
    return invalid("ssl", `ssl.mode must be one of ${sslModes.join(", ")}, got ${JSON.stringify(options.mode)}`)
  }
  if (config.sslMode !== undefined && !isSslMode(config.sslMode)) {
    return invalid("sslMode", `sslMode must be one of ${sslModes.join(", ")}, got ${JSON.stringify(config.sslMode)}`)
  }
  const urlMode = params.get("sslmode")
  if (urlMode !== undefined && !isSslMode(urlMode)) {
    return invalid("url", `sslmode must be one of ${sslModes.join(", ")}`)
  }
  const fromSsl: Connector.SslMode | undefined = ssl === undefined
    ? undefined
    : ssl === false
    ? "disable"
    : ssl === true
    ? "require"
    : options.mode ?? (options.rejectUnauthorized === false ? "require" : "verify-full")
  if (config.sslMode !== undefined && fromSsl !== undefined && config.sslMode !== fromSsl) {
    if (ssl === false || ssl === true || options.mode !== undefined) {
      return invalid("sslMode", `sslMode "${config.sslMode}" contradicts ssl (${fromSsl})`)
    }
  }
  const mode = config.sslMode ?? fromSsl ?? urlMode ?? "disable"
  if (mode === "disable") return undefined
  const caFile = readableFile("sslRootCert", config.sslRootCert ?? options.caFile ?? params.get("sslrootcert"))
  if (isError(caFile)) return caFile
  const certFile = readableFile("sslCert", config.sslCert ?? options.certFile ?? params.get("sslcert"))
  if (isError(certFile)) return certFile
  const keyFile = readableFile("sslKey", config.sslKey ?? options.keyFile ?? params.get("sslkey"))
  if (isError(keyFile)) return keyFile
  if (config.sslPassword !== undefined && !Redacted.isRedacted(config.sslPassword)) {
    return invalid("sslPassword", "sslPassword must be a Redacted value")
  }
  const passphrase = config.sslPassword ?? options.passphrase ??
    (params.has("sslpassword") ? Redacted.make(params.get("sslpassword")!) : undefined)
  const hasCa = options.ca !== undefined || (caFile !== undefined && caFile !== "system")
  return {
    mode: mode === "require" && hasCa ? "verify-ca" : mode,
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    ...(caFile === undefined || caFile === "system" ? {} : { caFile }),
    ...(options.cert === undefined ? {} : { cert: options.cert }),
    ...(certFile === undefined ? {} : { certFile }),
    ...(options.key === undefined ? {} : { key: options.key }),
    ...(keyFile === undefined ? {} : { keyFile }),
    ...(passphrase === undefined ? {} : { passphrase }),
    ...(options.servername === undefined ? {} : { servername: options.servername })
  }
}

/**
 * The connect options for one host.
 *
 * @internal
 */
export const connectOptions = (config: ResolvedConfig, host: HostPort): Connector.ConnectOptions => {
  const parameters: Record<string, string> = {}
  if (config.statementTimeout !== undefined) parameters.statement_timeout = String(Math.round(config.statementTimeout))
  return {
    host: host.host,
    port: host.port,
    database: config.database,
    user: config.user,
    password: config.password,
    ssl: config.ssl,
    applicationName: config.applicationName,
    options: config.options,
    types: config.types,
    connectTimeout: config.connectTimeout,
    parameters,
    statementCache: { threshold: config.prepareThreshold, capacity: config.statementCacheSize }
  }
}

const optional = <A>(config: EffectConfig.Config<A>) => EffectConfig.option(config)

/** A duration in an environment variable: a number of milliseconds (`5000`) or a duration (`"5 seconds"`). */
const durationVariable = (name: string): EffectConfig.Config<Duration.Duration> =>
  EffectConfig.mapOrFail(EffectConfig.string(name), (text) => {
    const trimmed = text.trim()
    if (/^\d+(\.\d+)?$/.test(trimmed)) return Either.right(Duration.millis(Number(trimmed)))
    const decoded = Duration.decodeUnknown(trimmed)
    return Option.isSome(decoded)
      ? Either.right(decoded.value)
      : Either.left(
        ConfigError.InvalidData(
          [],
          `${name} must be a number of milliseconds (5000) or a duration such as "5 seconds", got ${JSON.stringify(text)}`
        )
      )
  })


/** `PGPOOL_MAX_CONNECTIONS` for `maxConnections`: the knob's name in screaming snake case. @internal */
export const envName = (knob: string): string => `PGPOOL_${knob.replace(/([A-Z])/g, "_$1").toUpperCase()}`

const integerKnobs = [
  "minConnections",
  "maxConnections",
  "maxIdle",
  "maxWaiting",
  "maxUsage",
  "prepareThreshold",
  "statementCacheSize"
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
  "roleCheckInterval"
] as const
const booleanKnobs = ["blocking", "pooling", "lazy", "retryLostQueries", "metrics", "readFallback"] as const
const stringKnobs = ["name", "readRouting", "readBalancing"] as const

/** Every `PGPOOL_` variable this pool reads. @internal */
export const knownPoolVariables: ReadonlySet<string> = new Set([
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
const namingVariable = (error: ConfigError.ConfigError, sources: ReadonlyMap<string, string>): ConfigError.ConfigError => {
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
  connectTimeoutSeconds: optional(EffectConfig.number("PGCONNECT_TIMEOUT")),
  targetSessionAttrs: optional(EffectConfig.string("PGTARGETSESSIONATTRS")),
  loadBalanceHosts: optional(EffectConfig.string("PGLOADBALANCEHOSTS")),
  integers: EffectConfig.all(Object.fromEntries(integerKnobs.map((k) => [k, optional(EffectConfig.integer(envName(k)))]))),
  durations: EffectConfig.all(Object.fromEntries(durationKnobs.map((k) => [k, optional(durationVariable(envName(k)))]))),
  booleans: EffectConfig.all(Object.fromEntries(booleanKnobs.map((k) => [k, optional(EffectConfig.boolean(envName(k)))]))),
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
    if (Option.isSome(env.sslrootcert) && !urlHas("sslrootcert")) set("sslRootCert", env.sslrootcert.value, "PGSSLROOTCERT")
    if (Option.isSome(env.sslcert) && !urlHas("sslcert")) set("sslCert", env.sslcert.value, "PGSSLCERT")
    if (Option.isSome(env.sslkey) && !urlHas("sslkey")) set("sslKey", env.sslkey.value, "PGSSLKEY")
    if (Option.isSome(env.options) && !urlHas("options")) set("options", env.options.value, "PGOPTIONS")
    if (Option.isSome(env.applicationName) && !urlHas("application_name")) {
      set("applicationName", env.applicationName.value, "PGAPPNAME")
    }
    if (Option.isSome(env.connectTimeoutSeconds) && config.connectTimeout === undefined && !urlHas("connect_timeout")) {
      set("connectTimeout", libpqSeconds(String(env.connectTimeoutSeconds.value)), "PGCONNECT_TIMEOUT")
    }
    if (Option.isSome(env.targetSessionAttrs) && !urlHas("target_session_attrs")) {
      set("targetSessionAttrs", env.targetSessionAttrs.value, "PGTARGETSESSIONATTRS")
    }
    if (Option.isSome(env.loadBalanceHosts) && !urlHas("load_balance_hosts")) {
      set("loadBalanceHosts", env.loadBalanceHosts.value, "PGLOADBALANCEHOSTS")
    }
    const checked = resolveSync(config as Config)
    return isError(checked) ? Either.left(namingVariable(checked, sources)) : Either.right(config as Config)
  })
)
