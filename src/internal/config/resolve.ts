/**
 * Validation of the pool configuration: every field checked, the URL's values and the defaults filled in.
 * Every invalid value fails with a `ConfigError.InvalidData` whose path names the field. A URL is never copied
 * into an error message: it may hold a password.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Connector from "../../Connector.js"
import type { Config, ResetMode } from "../../PgPool.js"
import { ConnectionError } from "../../PgPoolError.js"
import { PoolerWatch } from "../connection/pooler.js"
import { sharedWhileRunning } from "../shared.js"
import { invalid, unknownField, unknownOption } from "./fields.js"
import { isSslMode, knownUrlParams, libpqSeconds, type ParsedUrl, parseUrl, sslModes } from "./url.js"

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
  /** `undefined` when an Effect gives the user for each connection (see `credentials`). */
  readonly user: string | undefined
  readonly password: Redacted.Redacted | undefined
  /**
   * The user and/or the password as Effects run for each new connection (see `PgPool.Config.password`), one
   * evaluation shared by the connects that start while it runs; what they give overrides `user` and `password`.
   */
  readonly credentials: { readonly get: Effect.Effect<Credentials, ConnectionError> } | undefined
  /** TLS settings with their mode resolved; `undefined` for no TLS. */
  readonly ssl: Connector.SslOptions | undefined
  readonly applicationName: string | undefined
  readonly options: string | undefined
  readonly types: Connector.TypeParsers | undefined
  readonly minConnections: number
  readonly maxConnections: number
  readonly maxIdle: number
  readonly blocking: boolean
  readonly shedLoad: boolean
  /** Statements in flight per connection with pipelining; 1: off. */
  readonly pipelineDepth: number
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
  readonly readYourWrites: boolean
  readonly readYourWritesTimeout: number
  /** The pooler mode, and what the pool's connections share about a transaction pooler. */
  readonly pooler: PoolerWatch
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
interface HealthCheck {
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

const integer = (field: string, value: unknown, min: number, fallback: number): number | ConfigError.ConfigError => {
  if (value === undefined) return fallback
  if (value === Infinity && min >= 0) return Infinity
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    return invalid(field, `${field} must be an integer >= ${min}, got ${String(value)}`)
  }
  return value
}

/**
 * The sizes of `PgPool.resize`, from the pool's current ones: each given value an integer (`maxConnections`
 * >= 1 and finite, `minConnections` >= 0), `minConnections` not above `maxConnections`. @internal
 */
export const resolveSizes = (
  current: ResolvedConfig,
  options: { readonly minConnections?: number | undefined; readonly maxConnections?: number | undefined }
): { readonly minConnections: number; readonly maxConnections: number } | ConfigError.ConfigError => {
  if (typeof options !== "object" || options === null) {
    return invalid("resize", "resize takes { minConnections?, maxConnections? }")
  }
  for (const key of Object.keys(options)) {
    if (key !== "minConnections" && key !== "maxConnections") {
      return invalid(key, `resize takes minConnections and maxConnections only, not ${JSON.stringify(key)}`)
    }
  }
  const maxConnections = integer("maxConnections", options.maxConnections, 1, current.maxConnections)
  if (isError(maxConnections)) return maxConnections
  if (maxConnections === Infinity) return invalid("maxConnections", "maxConnections must be finite")
  const minConnections = integer("minConnections", options.minConnections, 0, current.minConnections)
  if (isError(minConnections)) return minConnections
  if (minConnections > maxConnections) {
    return invalid(
      "minConnections",
      `minConnections (${minConnections}) must not exceed maxConnections (${maxConnections})`
    )
  }
  return { minConnections, maxConnections }
}

/** What the credential Effects gave for one connect. @internal */
export interface Credentials {
  readonly user?: string | undefined
  readonly password?: Redacted.Redacted | undefined
}

/**
 * The user and the password fetched by Effects for each new connection: connects that start while an
 * evaluation runs share it (see `sharedWhileRunning`). Neither value is ever put in the error: a failure names which Effect failed and keeps its cause.
 */
class SharedCredentials {
  constructor(
    readonly user: Effect.Effect<Redacted.Redacted | string, unknown> | undefined,
    readonly password: Effect.Effect<Redacted.Redacted, unknown> | undefined
  ) {}
  private evaluate(): Effect.Effect<Credentials, ConnectionError> {
    return Effect.all({
      user: this.user === undefined ? Effect.void : Effect.flatMap(
        credentialEffect("user", this.user),
        (value) =>
          typeof value === "string" && value !== "" ?
            Effect.succeed(value) :
            Redacted.isRedacted(value) && typeof Redacted.value(value) === "string" && Redacted.value(value) !== "" ?
            Effect.succeed(Redacted.value(value) as string) :
            Effect.fail(failedCredential("user", "it did not yield a non-empty string or a Redacted one"))
      ),
      password: this.password === undefined ? Effect.void : Effect.flatMap(
        credentialEffect("password", this.password),
        (value) =>
          Redacted.isRedacted(value) ?
            Effect.succeed(value) :
            Effect.fail(failedCredential("password", "it did not yield a Redacted value"))
      )
    }).pipe(Effect.map(({ password, user }): Credentials => ({
      ...(user === undefined ? {} : { user }),
      ...(password === undefined ? {} : { password })
    })))
  }
  readonly get: Effect.Effect<Credentials, ConnectionError> = sharedWhileRunning(Effect.suspend(() => this.evaluate()))
}

/** The failures of a credentials Effect: the connect stopped before anything was sent to the host. */
const credentialFailures = new WeakSet<ConnectionError>()

/** Did `error` come from a credentials Effect rather than from the host (see `HostState.unreachable`)? @internal */
export const isCredentialFailure = (error: ConnectionError): boolean => credentialFailures.has(error)

const failedCredential = (which: "user" | "password", cause: unknown) => {
  const error = new ConnectionError({
    message: `Cannot connect: the ${which} Effect failed (see the cause)`,
    cause,
    retryable: true
  })
  credentialFailures.add(error)
  return error
}

/** Runs a credential Effect; its failure, or a defect, becomes a retryable `ConnectionError` with the cause. */
const credentialEffect = <A>(which: "user" | "password", effect: Effect.Effect<A, unknown>) =>
  Effect.catchAllCause(effect, (cause) => Effect.fail(failedCredential(which, Cause.squash(cause))))

const millis = (
  field: string,
  value: unknown,
  fallback: number | undefined,
  options: { readonly allowZero: boolean }
): number | undefined | ConfigError.ConfigError => {
  if (value === undefined) return fallback
  // Effect's Duration takes a negative one for zero: refused here, as a negative number is
  if (
    (typeof value === "number" && (value < 0 || Number.isNaN(value))) ||
    (typeof value === "string" && /^\s*-/.test(value))
  ) {
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

/** A NUL character ends a string on the wire: the server would read the rest as the message's next fields. */
const holdsNul = (field: string) =>
  invalid(field, `${field} cannot hold a NUL character (the PostgreSQL protocol ends a string at its first NUL)`)

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

/** @internal */
export const resolveSync = (config: Config): ResolvedConfig | ConfigError.ConfigError => {
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
      return invalid(
        "url",
        badPercentEncoding(raw)
          ? "url has a % that does not start a percent-encoded character (write %25 for a % in a password or name)"
          : "url is not a PostgreSQL connection URI (postgres://user:password@host:port/database)"
      )
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
      if (typeof h?.host !== "string" || h.host === "") {
        return invalid("hosts", "every entry of hosts needs a host name")
      }
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

  const givenUser: unknown = config.user
  const userEffect = Effect.isEffect(givenUser) ?
    givenUser as Effect.Effect<Redacted.Redacted | string, unknown> :
    undefined
  const user = userEffect !== undefined ? undefined : givenUser ?? parsed?.user ?? params.get("user") ?? "postgres"
  if (user !== undefined && (typeof user !== "string" || user === "")) {
    return invalid("user", "user must be a non-empty string or an Effect that yields one (or a Redacted one)")
  }
  if (user !== undefined && user.includes("\0")) return holdsNul("user")
  const database = config.database ?? parsed?.database ?? params.get("dbname") ?? user
  if (database === undefined) {
    return invalid(
      "database",
      "database must be given when user is an Effect (its default is the user name, not known before a connect)"
    )
  }
  if (typeof database !== "string" || database === "") {
    return invalid("database", "database must be a non-empty string")
  }
  if (database.includes("\0")) return holdsNul("database")
  const passwordEffect = Effect.isEffect(config.password) ? config.password : undefined
  if (config.password !== undefined && passwordEffect === undefined && !Redacted.isRedacted(config.password)) {
    return invalid(
      "password",
      "password must be a Redacted value (Redacted.make(...) or Config.redacted(...)) or an Effect that yields one"
    )
  }
  const credentials = userEffect === undefined && passwordEffect === undefined ?
    undefined :
    new SharedCredentials(userEffect, passwordEffect)
  const password = (passwordEffect === undefined ? config.password as Redacted.Redacted | undefined : undefined) ??
    parsed?.password ??
    (params.has("password") ? Redacted.make(params.get("password")!) : undefined)
  if (password !== undefined && Redacted.value(password).includes("\0")) return holdsNul("password")

  const ssl = resolveSsl(config, params)
  if (isError(ssl)) return ssl
  const applicationName = config.applicationName ?? params.get("application_name") ??
    params.get("fallback_application_name")
  if (applicationName !== undefined && typeof applicationName !== "string") {
    return invalid("applicationName", "applicationName must be a string")
  }
  if (applicationName?.includes("\0")) return holdsNul("applicationName")
  const options = config.options ?? params.get("options")
  if (options !== undefined && typeof options !== "string") return invalid("options", "options must be a string")
  if (options?.includes("\0")) return holdsNul("options")
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
  if (config.shedLoad !== undefined && typeof config.shedLoad !== "boolean") {
    return invalid("shedLoad", "shedLoad must be a boolean")
  }
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
  const pipelineDepth = integer("pipelineDepth", config.pipelineDepth, 1, 64)
  if (isError(pipelineDepth)) return pipelineDepth
  if (pipelineDepth === Infinity) {
    return invalid("pipelineDepth", "pipelineDepth must be finite (1 turns pipelining off)")
  }
  const statementCacheSize = integer("statementCacheSize", config.statementCacheSize, 0, 100)
  if (isError(statementCacheSize)) return statementCacheSize
  if (statementCacheSize === Infinity) {
    return invalid("statementCacheSize", "statementCacheSize must be finite (0 turns automatic preparation off)")
  }
  const setSession = config.setSession ?? []
  if (!Array.isArray(setSession) || setSession.some((s) => typeof s !== "string" || s.trim() === "")) {
    return invalid("setSession", "setSession must be an array of non-empty SQL strings")
  }
  if (setSession.some((s) => s.includes("\0"))) return holdsNul("setSession")
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
  if (!Number.isFinite(maintenanceInterval!)) {
    return invalid("maintenanceInterval", "maintenanceInterval must be finite")
  }
  if (config.reconnect !== undefined && !Schedule.isSchedule(config.reconnect)) {
    return invalid("reconnect", "reconnect must be a Schedule")
  }
  if (config.lazy !== undefined && typeof config.lazy !== "boolean") return invalid("lazy", "lazy must be a boolean")
  const statementTimeout = millis("statementTimeout", config.statementTimeout, undefined, { allowZero: false })
  if (isError(statementTimeout)) return statementTimeout
  if (statementTimeout !== undefined && statementTimeout !== Infinity && statementTimeout > MAX_STATEMENT_TIMEOUT) {
    return invalid(
      "statementTimeout",
      `statementTimeout can be at most ${MAX_STATEMENT_TIMEOUT} ms (about 24.8 days, PostgreSQL's limit); leave it out ` +
        `for no limit`
    )
  }
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
      `targetSessionAttrs must be one of ${targetSessionAttrsValues.join(", ")}, got ${
        JSON.stringify(targetSessionAttrs)
      }`
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
  if (config.readYourWrites !== undefined && typeof config.readYourWrites !== "boolean") {
    return invalid("readYourWrites", "readYourWrites must be a boolean")
  }
  const readYourWritesTimeout = millis("readYourWritesTimeout", config.readYourWritesTimeout, 500, {
    allowZero: true
  })
  if (isError(readYourWritesTimeout)) return readYourWritesTimeout
  if (readYourWritesTimeout === Infinity) {
    return invalid("readYourWritesTimeout", "readYourWritesTimeout must be finite (reads then run on the primary)")
  }

  const pooler = config.pooler ?? params.get("pooler") ?? "auto"
  if (pooler !== "auto" && pooler !== "transaction") {
    return invalid(
      config.pooler === undefined ? "url" : "pooler",
      `pooler must be "auto" or "transaction", got ${JSON.stringify(pooler)}`
    )
  }
  if (pooler === "transaction") {
    // what the pool would otherwise set on a session: behind a transaction pooler it lands on one server
    // connection among many, which other clients get next
    if (setSession.length > 0) {
      return invalid(
        "setSession",
        "setSession cannot be used with pooler: \"transaction\": its SET statements would run on one server connection of the pooler, which other clients get next; set them on the role or database (ALTER ROLE ... SET), or with SET LOCAL in each transaction"
      )
    }
    if (reset === "full") {
      return invalid(
        "reset",
        "reset: \"full\" cannot be used with pooler: \"transaction\": DISCARD ALL would run on a server connection the pooler shares, dropping other clients' state; use \"transaction\" or \"always\""
      )
    }
    if (statementTimeout !== undefined && statementTimeout !== Infinity) {
      return invalid(
        "statementTimeout",
        "statementTimeout cannot be used with pooler: \"transaction\": it is sent at connect as a startup parameter, which a transaction pooler refuses or drops; set statement_timeout on the role or database (ALTER ROLE ... SET statement_timeout = ...), or use queryTimeout"
      )
    }
  }

  return {
    url,
    hosts,
    database,
    user,
    password,
    credentials,
    ssl,
    applicationName,
    options,
    types: config.types,
    minConnections,
    maxConnections,
    maxIdle,
    blocking: config.blocking ?? true,
    shedLoad: config.shedLoad ?? false,
    pipelineDepth,
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
    retryLostQueries: config.retryLostQueries ?? false,
    leakDetectionThreshold: leakDetectionThreshold === Infinity ? undefined : leakDetectionThreshold,
    name: config.name ??
      `${user === undefined ? "" : `${user}@`}${hosts.map((h) => `${h.host}:${h.port}`).join(",")}/${database}`,
    metrics: config.metrics ?? true,
    targetSessionAttrs: targetSessionAttrs as TargetSessionAttrs,
    loadBalanceHosts,
    readRouting,
    readBalancing,
    readFallback: config.readFallback ?? true,
    roleCheckInterval: roleCheckInterval!,
    readYourWrites: config.readYourWrites ?? false,
    readYourWritesTimeout: readYourWritesTimeout!,
    pooler: new PoolerWatch(pooler)
  }
}

/** PostgreSQL's largest statement_timeout, in milliseconds (a 32-bit integer). */
const MAX_STATEMENT_TIMEOUT = 2_147_483_647

const healthCheckKeys = ["idleThreshold", "interval", "timeout"]

const sslKeys = [
  "mode",
  "ca",
  "caFile",
  "cert",
  "certFile",
  "key",
  "keyFile",
  "passphrase",
  "rejectUnauthorized",
  "servername"
]

/** The TLS options whose values are not of their type (the key and passphrase are checked on their own). */
const sslTypes = (options: Connector.SslOptions): ConfigError.ConfigError | undefined => {
  for (const key of ["ca", "caFile", "cert", "certFile", "keyFile", "servername"] as const) {
    const value: unknown = options[key]
    if (value !== undefined && typeof value !== "string") return invalid("ssl", `ssl.${key} must be a string`)
  }
  const reject: unknown = options.rejectUnauthorized
  if (reject !== undefined && typeof reject !== "boolean") {
    return invalid("ssl", "ssl.rejectUnauthorized must be a boolean")
  }
  return undefined
}

/** Whether `url` has a `%` that does not start a valid percent-encoded character (libpq refuses such a URI). */
const badPercentEncoding = (url: string): boolean => {
  try {
    decodeURIComponent(url)
    return false
  } catch {
    return true
  }
}

const resolveHealthCheck = (input: Config["healthCheck"]): HealthCheck | ConfigError.ConfigError => {
  if (input === false) {
    return { enabled: false, idleThreshold: Infinity, interval: Infinity, timeout: Duration.seconds(5) }
  }
  const options = input === undefined || input === true ? {} : input
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    return invalid("healthCheck", "healthCheck must be a boolean or { idleThreshold, interval, timeout }")
  }
  const unknownKey = unknownOption("healthCheck", options, healthCheckKeys)
  if (unknownKey !== undefined) return unknownKey
  const idleThreshold = millis("healthCheck.idleThreshold", options.idleThreshold, 5_000, { allowZero: true })
  if (isError(idleThreshold)) return idleThreshold
  const interval = millis("healthCheck.interval", options.interval, 60_000, { allowZero: false })
  if (isError(interval)) return interval
  const timeout = millis("healthCheck.timeout", options.timeout, 5_000, { allowZero: false })
  if (isError(timeout)) return timeout
  return { enabled: true, idleThreshold: idleThreshold!, interval: interval!, timeout: Duration.millis(timeout!) }
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
  const wrongSsl = unknownOption("ssl", options, sslKeys) ?? sslTypes(options)
  if (wrongSsl !== undefined) return wrongSsl
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
export const connectOptions = (
  config: ResolvedConfig,
  host: HostPort,
  credentials: Credentials = {}
): Connector.ConnectOptions => {
  const parameters: Record<string, string> = {}
  // in whole milliseconds, at least 1: PostgreSQL takes 0 for no limit
  if (config.statementTimeout !== undefined) {
    parameters.statement_timeout = String(Math.max(1, Math.round(config.statementTimeout)))
  }
  return {
    host: host.host,
    port: host.port,
    database: config.database,
    // a user from an Effect is always in `credentials` (config.user is undefined only then)
    user: credentials.user ?? config.user ?? "",
    password: credentials.password ?? config.password,
    ssl: config.ssl,
    applicationName: config.applicationName,
    options: config.options,
    types: config.types,
    connectTimeout: config.connectTimeout,
    parameters,
    statementCache: {
      threshold: config.prepareThreshold,
      capacity: config.statementCacheSize,
      pooler: config.pooler
    }
  }
}
