/**
 * The names of the configuration: the fields of `PgPool.Config`, the spellings users bring from other clients,
 * and the closest name to a typo.
 *
 * @internal
 */
import * as ConfigError from "effect/ConfigError"
import type { Config } from "../../PgPool.js"

/** An invalid value of `field`. @internal */
export const invalid = (field: string, message: string): ConfigError.ConfigError =>
  ConfigError.InvalidData([field], message)

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
  "shedLoad",
  "pipelineDepth",
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
  "roleCheckInterval",
  "readYourWrites",
  "readYourWritesTimeout",
  "pooler"
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

/** A key of the configuration object that is not a field of `PgPool.Config`, as a `ConfigError` naming it. @internal */
export const unknownField = (config: object): ConfigError.ConfigError | undefined => {
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

/**
 * A key of the options object `field` (`healthCheck`, `ssl`) that is not one of its `keys`, as a `ConfigError`
 * naming it and the key meant. @internal
 */
export const unknownOption = (
  field: string,
  options: object,
  keys: ReadonlyArray<string>
): ConfigError.ConfigError | undefined => {
  const key = Object.keys(options).find((key) =>
    !keys.includes(key) && (options as Record<string, unknown>)[key] !== undefined
  )
  if (key === undefined) return undefined
  const meant = closest(key, keys)
  return invalid(
    field,
    `${field} has no option ${JSON.stringify(key)}${meant === undefined ? "" : ` (did you mean ${meant}?)`}; its ` +
      `options are ${keys.join(", ")}`
  )
}
