/**
 * TLS for the live connector, with libpq's `sslmode` meanings: which attempts a connect makes, the Node TLS
 * options of each (certificate files read at each connect, so a rotated certificate is picked up by the next
 * connection), and a plain description of a TLS failure.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as fs from "node:fs/promises"
import type * as tls from "node:tls"
import type * as Connector from "../../Connector.js"

/** TLS options for one attempt, or `false` for an attempt without TLS. @internal */
export type Attempt = tls.ConnectionOptions | false

/** Why a connect attempt failed in a way that retrying will not mend (a file, a certificate). @internal */
export class TlsSetupError extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message)
    this.name = "TlsSetupError"
  }
}

/** The mode of a connector's `ssl` setting (`true` is `require`; an object without `mode` is `verify-full`). @internal */
export const modeOf = (ssl: Connector.SslConfig | undefined): Connector.SslMode => {
  if (ssl === undefined || ssl === false) return "disable"
  if (ssl === true) return "require"
  return ssl.mode ?? (ssl.rejectUnauthorized === false ? "require" : "verify-full")
}

const read = (what: string, path: string): Effect.Effect<string, TlsSetupError> =>
  Effect.tryPromise({
    try: () => fs.readFile(path, "utf8"),
    catch: (cause) =>
      new TlsSetupError(
        `cannot read the ${what} file ${path}: ${(cause as { code?: string }).code ?? String(cause)}`,
        cause
      )
  })

const optional = (what: string, path: string | undefined): Effect.Effect<string | undefined, TlsSetupError> =>
  path === undefined ? Effect.succeed(undefined) : read(what, path)

/** Node TLS options for the verifying and non-verifying modes. @internal */
const tlsOptions = (
  ssl: Connector.SslConfig | undefined
): Effect.Effect<tls.ConnectionOptions, TlsSetupError> => {
  const options: Connector.SslOptions = typeof ssl === "object" ? ssl : {}
  const mode = modeOf(ssl)
  return Effect.all({
    caFromFile: optional("sslrootcert", options.caFile),
    certFromFile: optional("sslcert", options.certFile),
    keyFromFile: optional("sslkey", options.keyFile)
  }).pipe(Effect.map(({ caFromFile, certFromFile, keyFromFile }) => {
    const result: tls.ConnectionOptions = {}
    const ca = options.ca ?? caFromFile
    if (ca !== undefined) result.ca = ca
    const cert = options.cert ?? certFromFile
    if (cert !== undefined) result.cert = cert
    const key = options.key === undefined ? keyFromFile : Redacted.value(options.key)
    if (key !== undefined) result.key = key
    if (options.passphrase !== undefined) result.passphrase = Redacted.value(options.passphrase)
    if (options.servername !== undefined) result.servername = options.servername
    switch (mode) {
      case "verify-full":
        result.rejectUnauthorized = true
        break
      case "verify-ca":
        result.rejectUnauthorized = true
        result.checkServerIdentity = () => undefined
        break
      default:
        result.rejectUnauthorized = false
    }
    return result
  }))
}

/**
 * The attempts of one connect, in order: `allow` tries without TLS first, `prefer` with TLS first; the
 * second attempt is made only when the first fails as {@link fallsBack} says.
 *
 * @internal
 */
export const attempts = (
  ssl: Connector.SslConfig | undefined
): Effect.Effect<ReadonlyArray<Attempt>, TlsSetupError> => {
  const mode = modeOf(ssl)
  if (mode === "disable") return Effect.succeed([false])
  return Effect.map(
    tlsOptions(ssl),
    (options) => mode === "allow" ? [false, options] : mode === "prefer" ? [options, false] : [options]
  )
}

const networkCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN"
])

/**
 * Whether the first attempt of `allow` or `prefer` failed in a way the other attempt may mend: the server
 * refused the connection (allow: it wants TLS), or TLS could not be set up (prefer: the server has none).
 * A network failure is not: the other attempt would meet the same.
 *
 * @internal
 */
export const fallsBack = (cause: unknown): boolean => {
  const code = (cause as { code?: unknown } | undefined)?.code
  if (typeof code === "string" && networkCodes.has(code)) return false
  if (cause instanceof TlsSetupError) return false
  return true
}

const unknownCa = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE"
])

/**
 * A plain description of a TLS failure, or `undefined` when the failure is not about TLS.
 *
 * @internal
 */
export const describeTlsFailure = (cause: unknown, host: string, mode: Connector.SslMode): string | undefined => {
  if (cause instanceof TlsSetupError) return cause.message
  const code = typeof (cause as { code?: unknown })?.code === "string" ? (cause as { code: string }).code : ""
  const message = typeof (cause as { message?: unknown })?.message === "string"
    ? (cause as { message: string }).message
    : ""
  if (message === "The server does not support SSL connections") {
    return `the server does not accept TLS (SSL) connections (sslmode=${mode})`
  }
  if (unknownCa.has(code)) {
    return `the server's certificate is not signed by a trusted CA (sslmode=${mode}; give the CA with sslrootcert): ${message}`
  }
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") {
    return `the server's certificate does not name the host ${host} (sslmode=verify-full): ${message}`
  }
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
    return `the server's certificate is not valid now (sslmode=${mode}): ${message}`
  }
  if (
    /^ERR_SSL_(SSLV3|TLSV1)_ALERT_(BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE_REQUIRED|CERTIFICATE_UNKNOWN|DECRYPT_ERROR)/
      .test(code)
  ) {
    return `the server rejected the client certificate (${code}): ${message}`
  }
  if (code === "ERR_OSSL_X509_KEY_VALUES_MISMATCH") {
    return `the client key does not match the client certificate (sslkey is not the key of sslcert): ${code}`
  }
  if (code === "ERR_OSSL_BAD_DECRYPT" || (code.startsWith("ERR_OSSL") && /decrypt|PEM|passphrase|key/i.test(message))) {
    return `the client key cannot be read (wrong sslpassword, or not a PEM key): ${code || message}`
  }
  if (code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || code.startsWith("ERR_OSSL")) {
    return `TLS failed (sslmode=${mode}): ${message || code}`
  }
  return undefined
}

/**
 * A TLS failure without the certificates Node hangs on it (`cert.issuerCertificate` of a self-signed root is
 * the certificate itself, a cycle that `JSON.stringify` of the error would throw on): message, code, reason.
 *
 * @internal
 */
export const plainTlsCause = (cause: unknown): unknown => {
  if (!(cause instanceof Error) || cause instanceof TlsSetupError) return cause
  const plain = new Error(cause.message)
  plain.name = cause.name
  const { code, reason } = cause as { code?: unknown; reason?: unknown }
  return Object.assign(plain, code === undefined ? {} : { code }, reason === undefined ? {} : { reason })
}
