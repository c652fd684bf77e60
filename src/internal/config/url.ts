/**
 * libpq connection URIs: parsing, the parameters this pool supports, and libpq's spellings of values.
 *
 * @internal
 */
import * as Redacted from "effect/Redacted"
import type * as Connector from "../../Connector.js"

/** @internal */
export interface ParsedUrl {
  readonly hosts: ReadonlyArray<{ readonly host: string; readonly port: number | undefined }>
  readonly database: string | undefined
  readonly user: string | undefined
  readonly password: Redacted.Redacted | undefined
  readonly params: ReadonlyMap<string, string>
}

/** Throws on a `%` that does not start a percent-encoded character: `parseUrl` refuses the URL then (as libpq). */
const decode = (part: string): string => decodeURIComponent(part)

/**
 * Parses a libpq connection URI: `postgres[ql]://[user[:password]@][host[:port][,host[:port]...]][/database][?param=value&...]`.
 * The user info ends at the *last* `@` before the path, as in pg-connection-string and browsers, so an
 * unencoded `@` in a password stays in the password.
 *
 * An unencoded `/`, `?` or `#` in a password ends the host part early, and the rest of the password (with the
 * `@` that should have ended it) lands in the database, a parameter's name or the fragment, whence it would be
 * copied into errors, logs and the pool's name (a metric label). A URL with an `@` in those places is
 * refused instead (`undefined`: a `ConfigError` that quotes nothing of it): write `%40` for an `@` in a
 * database name. So is a query with an `@` and a parameter this pool does not know (whose name, quoted in the
 * error otherwise, may be part of a password with `?` and `=` in it), and, as libpq refuses it, a `%` that does
 * not start a percent-encoded character.
 *
 * @internal
 */
export const parseUrl = (url: string): ParsedUrl | undefined => {
  try {
    return parse(url)
  } catch {
    return undefined
  }
}

const parse = (url: string): ParsedUrl | undefined => {
  const match = /^postgres(?:ql)?:\/\/([^/?#]*)(?:\/([^?#]*))?(?:\?([^#]*))?(?:#(.*))?$/.exec(url.trim())
  if (match === null) return undefined
  const [, authority = "", path, query, fragment] = match
  if (path?.includes("@") || fragment?.includes("@")) return undefined
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
  // `user:?pass=word@host`: an unknown parameter next to an `@` is likely a password's; its name is not quoted
  if (query?.includes("@") && [...params.keys()].some((name) => !knownUrlParams.has(name))) return undefined
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

/** @internal */
export const isSslMode = (u: unknown): u is Connector.SslMode => sslModes.includes(u as Connector.SslMode)

/**
 * libpq's `connect_timeout`, in milliseconds: a whole number of seconds; zero or negative means no limit, and 1
 * means 2 (libpq insists on two seconds at least, as its clock ticks in whole seconds). NaN when it is not an
 * integer (libpq refuses it).
 *
 * @internal
 */
export const libpqSeconds = (text: string): number => {
  const seconds = /^\s*[-+]?\d+\s*$/.test(text) ? Number(text) : NaN
  return Number.isNaN(seconds) ? NaN : seconds <= 0 ? Infinity : Math.max(2, seconds) * 1000
}

/** The URL parameters this pool supports: any other is a `ConfigError` naming it. @internal */
export const knownUrlParams = new Set([
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
  "load_balance_hosts",
  // not libpq's: this pool's `pooler` knob, as poolers' users put it in the URL they are given
  "pooler"
])
