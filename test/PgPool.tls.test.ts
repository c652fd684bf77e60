/**
 * TLS against real PostgreSQL servers (issue 13 point 4, issue 16 point 1): libpq's `sslmode` meanings,
 * certificate verification, client certificates, every way of configuring them, and cancellation over TLS.
 *
 * Two private servers with TLS on (see ./support/tls.ts), started in parallel once for the file: `Right`
 * presents a certificate naming 127.0.0.1 and localhost, `Wrong` one naming only wrong.example; both are signed
 * by the test CA. The shared test server of ./support/db.ts serves as the server without TLS. What a session
 * got is read from the server's side: `pg_stat_ssl` for the session's own backend.
 *
 * A failure that retrying cannot mend (TLS, certificates) must fail the layer at once: `failsAtOnce` builds the
 * pool's layer over a connector that counts its connects, with a reconnect schedule of 10 s and a connect
 * timeout of 20 s, and checks that there was one connect and that the layer failed within a few seconds.
 */
import { assert, describe, layer } from "@effect/vitest"
import { ConfigProvider, Context, Effect, Fiber, Layer, Logger, Redacted, Schedule } from "effect"
import * as fs from "node:fs"
import * as net from "node:net"
import * as path from "node:path"
import pg from "pg"
import * as Connector from "../src/Connector.js"
import { PgPoolLive } from "../src/index.js"
import * as PgPool from "../src/PgPool.js"
import { ConnectionError } from "../src/PgPoolError.js"
import { eventually, testConfig } from "./support/db.js"
import { failureOf, timedExit, valueOf } from "./support/exits.js"
import * as Tls from "./support/tls.js"

// ---------------------------------------------------------------------------------------------------------
// servers
// ---------------------------------------------------------------------------------------------------------

class Certs extends Context.Tag("test/tls/Certs")<Certs, Tls.Certificates>() {}
/** TLS with the certificate naming 127.0.0.1. */
class Right extends Context.Tag("test/tls/Right")<Right, Tls.TlsServer>() {}
/** TLS with the certificate naming only wrong.example. */
class Wrong extends Context.Tag("test/tls/Wrong")<Wrong, Tls.TlsServer>() {}

const Servers = Layer.mergeAll(
  Layer.scoped(Right, Effect.flatMap(Certs, (certs) => Tls.server(certs, "right"))),
  Layer.scoped(Wrong, Effect.flatMap(Certs, (certs) => Tls.server(certs, "wrong")))
).pipe(Layer.provideMerge(Layer.scoped(Certs, Tls.certificates)))

// ---------------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------------

interface Session {
  readonly ssl: boolean
  readonly version: string | null
  readonly clientDn: string | null
  readonly user: string
}

const sessionQuery =
  "select s.ssl, s.version, s.client_dn, current_user as who from pg_stat_ssl s where s.pid = pg_backend_pid()"

const toSession = (rows: ReadonlyArray<PgPool.Row>): Session => {
  const row = rows[0]!
  return {
    ssl: row.ssl === true,
    version: row.version === null ? null : String(row.version),
    clientDn: row.client_dn === null ? null : String(row.client_dn),
    user: String(row.who)
  }
}

/** The session a pool built from `pool` gets, as the server sees it. */
const sessionOf = <E>(pool: Layer.Layer<PgPool.PgPool, E>) =>
  Effect.map(PgPool.query(sessionQuery).pipe(Effect.provide(Layer.fresh(pool))), toSession)

const session = (config: PgPool.Config) => sessionOf(PgPool.layer({ maxConnections: 1, ...config }))

/** The admin password of a server and every secret of these tests: none may appear in an error. */
const secrets = (servers: ReadonlyArray<Tls.TlsServer>) => [
  Tls.secretMarker,
  ...servers.map((s) => Redacted.value(s.server.embedded.password))
]

/**
 * JSON.stringify that survives cycles (the cause of a host name mismatch holds the server's certificate, whose
 * `issuerCertificate` refers to itself for a root): the test "JSON.stringify of a TLS ConnectionError" checks
 * plain JSON.stringify separately.
 */
const stringify = (value: unknown): string => {
  const seen = new WeakSet<object>()
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === "object" && v !== null) {
      if (seen.has(v)) return "[cycle]"
      seen.add(v)
    }
    return v
  })
}

const assertNoSecret = (error: unknown, servers: ReadonlyArray<Tls.TlsServer>, logs: ReadonlyArray<string> = []) => {
  const texts = [String(error), stringify(error), (error as { message?: string }).message ?? "", ...logs]
  for (const secret of secrets(servers)) {
    for (const text of texts) assert.notInclude(text, secret, `a secret in the error or a log line: ${text}`)
  }
}

/** Runs `effect` with a logger that keeps every line (message and annotations) instead of printing it. */
const withLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const logs: Array<string> = []
    const collector = Logger.make(({ annotations, message }) => {
      logs.push(`${stringify(message)} ${stringify(Object.fromEntries(annotations))}`)
    })
    const result = yield* effect.pipe(Effect.provide(Logger.replace(Logger.defaultLogger, collector)))
    return { result, logs }
  })

/**
 * Builds the pool's layer over a connector that counts its connects (a reconnect every 10 s, a connect timeout
 * of 20 s), expects a `ConnectionError` within a few seconds after exactly one connect, and returns it.
 */
const failsAtOnce = (config: PgPool.Config, servers: ReadonlyArray<Tls.TlsServer> = []) =>
  Effect.gen(function*() {
    let connects = 0
    const counting: Connector.Connector = {
      connect: (options, onLost) =>
        Effect.suspend(() => {
          connects++
          return Connector.make.connect(options, onLost)
        })
    }
    const pool = Layer.scoped(
      PgPool.PgPool,
      PgPool.make({ reconnect: Schedule.spaced("10 seconds"), connectTimeout: "20 seconds", ...config })
    ).pipe(Layer.provide(Layer.succeed(Connector.Connector, counting)))
    const { logs, result: { exit, millis } } = yield* withLogs(timedExit(Effect.scoped(Layer.build(pool))))
    const error = failureOf(exit)
    assert.instanceOf(error, ConnectionError, String(error))
    const connectionError = error as ConnectionError
    assert.strictEqual(connects, 1, `connects: ${connects}; ${connectionError.message}`)
    assert.isBelow(millis, 5_000, connectionError.message)
    assert.isTrue(
      connectionError.attempts === undefined || connectionError.attempts === 1,
      String(connectionError.attempts)
    )
    assert.strictEqual(connectionError.retryable, false, connectionError.message)
    assertNoSecret(connectionError, servers, logs)
    return connectionError
  })

const notTls = "the server does not accept TLS"
const untrusted = "the server's certificate is not signed by a trusted CA"
const wrongName = "the server's certificate does not name the host 127.0.0.1"
const keyUnreadable = "the client key cannot be read"
/** What a client key that is not the certificate's says: the key and the certificate do not match. */
const keyMismatch = /\bkey\b.*\bdoes not match\b.*\bcertificate\b|\bcertificate\b.*\band\b.*\bkey\b.*\bdo not match\b/i

const pem = (file: string) => fs.readFileSync(file, "utf8")

/** The code of the first message of a connection: SSLRequest, or CancelRequest without TLS. */
const sslRequestCode = 80877103
const cancelRequestCode = 80877102

/**
 * A TCP proxy to `target` that records the code of the first message of each client connection (the 4 bytes
 * after the length): a session or a CancelRequest over TLS starts with an SSLRequest, a CancelRequest without
 * TLS with its own code.
 */
const recordingProxy = (target: { readonly host: string; readonly port: number }) =>
  Effect.acquireRelease(
    Effect.async<
      {
        readonly server: net.Server
        readonly port: number
        readonly codes: Array<number>
        readonly sockets: Set<net.Socket>
      }
    >(
      (resume) => {
        const codes: Array<number> = []
        const sockets = new Set<net.Socket>()
        const server = net.createServer((client) => {
          const upstream = net.connect(target.port, target.host)
          for (const socket of [client, upstream]) {
            sockets.add(socket)
            socket.on("error", () => {})
            socket.on("close", () => {
              sockets.delete(socket)
              client.destroy()
              upstream.destroy()
            })
          }
          let head = Buffer.alloc(0)
          const record = (chunk: Buffer) => {
            head = Buffer.concat([head, chunk])
            if (head.length >= 8) {
              codes.push(head.readInt32BE(4))
              client.removeListener("data", record)
            }
          }
          client.on("data", record)
          client.pipe(upstream)
          upstream.pipe(client)
        })
        server.listen(0, "127.0.0.1", () =>
          resume(Effect.succeed({ server, port: (server.address() as net.AddressInfo).port, codes, sockets })))
      }
    ),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) {
          socket.destroy()
        }
        server.close(() =>
          resume(Effect.void)
        )
      })
  )

/** The libpq variables pg (and `PgPoolLive` through the default ConfigProvider) would read. */
const libpqVariables = [
  "DATABASE_URL",
  "PGHOST",
  "PGPORT",
  "PGDATABASE",
  "PGUSER",
  "PGPASSWORD",
  "PGPASSFILE",
  "PGSSLMODE",
  "PGSSLROOTCERT",
  "PGSSLCERT",
  "PGSSLKEY",
  "PGAPPNAME",
  "PGOPTIONS",
  "PGCONNECT_TIMEOUT",
  "PGTARGETSESSIONATTRS",
  "PGLOADBALANCEHOSTS",
  "PGCLIENTENCODING"
]

/**
 * Runs `effect` with exactly `vars` of the libpq variables in the process environment (the others removed),
 * then puts the environment back as it was.
 */
const withProcessEnv = <A, E, R>(vars: Readonly<Record<string, string>>, effect: Effect.Effect<A, E, R>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const saved = new Map(libpqVariables.map((name) => [name, process.env[name]] as const))
      for (const name of libpqVariables) delete process.env[name]
      Object.assign(process.env, vars)
      return saved
    }),
    () => effect,
    (saved) =>
      Effect.sync(() => {
        for (const [name, value] of saved) {
          if (value === undefined) delete process.env[name]
          else process.env[name] = value
        }
      })
  )

/**
 * What node-postgres itself does with the process environment: a `pg.Client` given only `config` connects
 * (and says whether its session is TLS, from pg_stat_ssl), or fails with the error's code and message.
 */
const plainPg = (config: pg.ClientConfig) =>
  Effect.promise(async () => {
    const client = new pg.Client({ ...config, connectionTimeoutMillis: 10_000 })
    client.on("error", () => {})
    try {
      await client.connect()
    } catch (thrown) {
      const error = thrown as { code?: string; message?: string }
      return { ssl: undefined, user: undefined, error: `${error.code ?? ""} ${error.message ?? String(thrown)}` }
    }
    try {
      const { rows } = await client.query(
        "select s.ssl, current_user as who from pg_stat_ssl s where s.pid = pg_backend_pid()"
      )
      return { ssl: rows[0].ssl === true, user: String(rows[0].who), error: undefined }
    } finally {
      await client.end()
    }
  })

/** The failure of building `pool`, which must be a ConnectionError. */
const buildFailure = <E>(pool: Layer.Layer<PgPool.PgPool, E>) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(Effect.scoped(Layer.build(pool)))
    assert.instanceOf(error, ConnectionError, String(error))
    return error as ConnectionError
  })

// ---------------------------------------------------------------------------------------------------------

layer(Servers, { excludeTestServices: true, timeout: "60 seconds" })("TLS against real servers", (it) => {
  describe("sslmode", () => {
    it.effect("disable: no TLS; require: TLS, on a server that offers it", () =>
      Effect.gen(function*() {
        const right = yield* Right
        const plain = yield* session({ url: right.url(Tls.anyRole, { sslmode: "disable" }) })
        assert.deepStrictEqual(plain, { ssl: false, version: null, clientDn: null, user: Tls.anyRole })
        const tls = yield* session({ url: right.url(Tls.anyRole, { sslmode: "require" }) })
        assert.isTrue(tls.ssl)
        assert.match(tls.version ?? "", /^TLSv1\.[23]$/)
        assert.strictEqual(tls.user, Tls.anyRole)
        // the default is disable
        assert.isFalse((yield* session({ url: right.url(Tls.anyRole) })).ssl)
      }))

    it.effect("prefer: TLS on a server with TLS, plain on a server without", () =>
      Effect.gen(function*() {
        const right = yield* Right
        assert.isTrue((yield* session({ url: right.url(Tls.anyRole, { sslmode: "prefer" }) })).ssl)
        // the shared test server has no TLS (should PG_TEST_URL point at one with TLS, prefer takes it)
        const sharedSsl = (yield* PgPool.query("select current_setting('ssl') as ssl").pipe(
          Effect.provide(Layer.fresh(PgPool.layer(testConfig({ maxConnections: 1 }))))
        ))[0]!.ssl
        const shared = yield* session(testConfig({ sslMode: "prefer" }))
        assert.strictEqual(shared.ssl, sharedSsl === "on")
        // a server that refuses the role over TLS (pg_hba.conf): prefer tries again without TLS, as libpq does
        const plainOnly = yield* session({ url: right.url(Tls.plainOnlyRole, { sslmode: "prefer" }) })
        assert.deepStrictEqual([plainOnly.ssl, plainOnly.user], [false, Tls.plainOnlyRole])
        // require does not
        const refused = yield* failsAtOnce({ url: right.url(Tls.plainOnlyRole, { sslmode: "require" }) }, [right])
        assert.strictEqual(refused.code, "28000", refused.message)
        assert.include(refused.message, "SSL encryption")
      }))

    it.effect("allow: plain for a role allowed without TLS, TLS for a role allowed only over TLS", () =>
      Effect.gen(function*() {
        const right = yield* Right
        assert.isFalse((yield* session({ url: right.url(Tls.anyRole, { sslmode: "allow" }) })).ssl)
        assert.isFalse((yield* session({ url: right.url(Tls.plainOnlyRole, { sslmode: "allow" }) })).ssl)
        const tlsOnly = yield* session({ url: right.url(Tls.tlsOnlyRole, { sslmode: "allow" }) })
        assert.deepStrictEqual([tlsOnly.ssl, tlsOnly.user], [true, Tls.tlsOnlyRole])
        // and without TLS at all the TLS-only role is refused (by pg_hba.conf), at once
        const refused = yield* failsAtOnce({ url: right.url(Tls.tlsOnlyRole, { sslmode: "disable" }) }, [right])
        assert.strictEqual(refused.code, "28000", refused.message)
        assert.include(refused.message, "no encryption")
      }))

    it.effect("disable against a role with only a hostssl line: the server's 28000, no pg_hba.conf entry, at once", () =>
      Effect.gen(function*() {
        const right = yield* Right
        // the role connects over TLS: the refusal below is about TLS, not the password or the role
        const tls = yield* session({ url: right.url(Tls.hostsslOnlyRole, { sslmode: "require" }) })
        assert.deepStrictEqual([tls.ssl, tls.user], [true, Tls.hostsslOnlyRole])
        const configs: ReadonlyArray<readonly [string, PgPool.Config]> = [
          ["sslmode=disable in the URL", { url: right.url(Tls.hostsslOnlyRole, { sslmode: "disable" }) }],
          ["sslMode: disable", right.config(Tls.hostsslOnlyRole, { sslMode: "disable" })],
          ["ssl: false", right.config(Tls.hostsslOnlyRole, { ssl: false })],
          ["no TLS setting (the default is disable)", right.config(Tls.hostsslOnlyRole)]
        ]
        for (const [name, config] of configs) {
          const refused = yield* failsAtOnce(config, [right])
          assert.strictEqual(refused.code, "28000", `${name}: ${refused.message}`)
          assert.include(refused.message, "no pg_hba.conf entry", name)
          assert.include(refused.message, `user "${Tls.hostsslOnlyRole}"`, name)
          assert.include(refused.message, "no encryption", name)
        }
      }))

    it.effect("require, verify-ca, verify-full against a server without TLS: the layer fails at once", () =>
      Effect.gen(function*() {
        const certs = yield* Certs
        for (const sslMode of ["require", "verify-ca", "verify-full"] as const) {
          const error = yield* failsAtOnce(testConfig({ sslMode, sslRootCert: certs.ca }))
          assert.include(error.message, notTls, sslMode)
          assert.include(error.message, `sslmode=${sslMode === "require" ? "verify-ca" : sslMode}`)
        }
        // without a root certificate require stays require
        const error = yield* failsAtOnce(testConfig({ sslMode: "require" }))
        assert.include(error.message, notTls)
        assert.include(error.message, "sslmode=require)")
      }))
  })

  describe("server certificate verification", () => {
    it.effect("verify-ca: the CA given connects; an unrelated CA fails at once", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const ok = yield* session({ url: right.url(Tls.tlsOnlyRole, { sslmode: "verify-ca", sslrootcert: certs.ca }) })
        assert.deepStrictEqual([ok.ssl, ok.user], [true, Tls.tlsOnlyRole])
        const error = yield* failsAtOnce(
          { url: right.url(Tls.tlsOnlyRole, { sslmode: "verify-ca", sslrootcert: certs.otherCa }) },
          [right]
        )
        assert.include(error.message, untrusted)
      }))

    it.effect("verify-full: the right name connects; the wrong name fails at once; verify-ca accepts the wrong name", () =>
      Effect.gen(function*() {
        const [right, wrong, certs] = [yield* Right, yield* Wrong, yield* Certs]
        const ok = yield* session({
          url: right.url(Tls.tlsOnlyRole, { sslmode: "verify-full", sslrootcert: certs.ca })
        })
        assert.isTrue(ok.ssl)
        const error = yield* failsAtOnce(
          { url: wrong.url(Tls.tlsOnlyRole, { sslmode: "verify-full", sslrootcert: certs.ca }) },
          [wrong]
        )
        assert.include(error.message, wrongName)
        const caOnly = yield* session({
          url: wrong.url(Tls.tlsOnlyRole, { sslmode: "verify-ca", sslrootcert: certs.ca })
        })
        assert.isTrue(caOnly.ssl)
      }))

    it.effect("verify-full with a host name: localhost is named by the right certificate, not by the wrong one", () =>
      Effect.gen(function*() {
        const [right, wrong, certs] = [yield* Right, yield* Wrong, yield* Certs]
        const ok = yield* session(right.config(Tls.tlsOnlyRole, {
          host: "localhost",
          sslMode: "verify-full",
          sslRootCert: certs.ca
        }))
        assert.isTrue(ok.ssl)
        const error = yield* failsAtOnce(
          wrong.config(Tls.tlsOnlyRole, { host: "localhost", sslMode: "verify-full", sslRootCert: certs.ca }),
          [wrong]
        )
        assert.include(error.message, "the server's certificate does not name the host localhost")
      }))

    it.effect("verify-full without sslrootcert trusts Node's bundled roots only: the test CA is not one of them", () =>
      Effect.gen(function*() {
        const right = yield* Right
        const error = yield* failsAtOnce({ url: right.url(Tls.tlsOnlyRole, { sslmode: "verify-full" }) }, [right])
        assert.include(error.message, untrusted)
        // sslRootCert "system" is the same
        const system = yield* failsAtOnce(
          right.config(Tls.tlsOnlyRole, { sslMode: "verify-full", sslRootCert: "system" }),
          [
            right
          ]
        )
        assert.include(system.message, untrusted)
        // and require without a root certificate does not verify
        assert.isTrue((yield* session({ url: right.url(Tls.tlsOnlyRole, { sslmode: "require" }) })).ssl)
      }))

    it.effect("require with sslrootcert is verify-ca: an unrelated CA fails, the CA passes even with the wrong name", () =>
      Effect.gen(function*() {
        const [right, wrong, certs] = [yield* Right, yield* Wrong, yield* Certs]
        const error = yield* failsAtOnce(
          { url: right.url(Tls.tlsOnlyRole, { sslmode: "require", sslrootcert: certs.otherCa }) },
          [right]
        )
        assert.include(error.message, untrusted)
        assert.include(error.message, "sslmode=verify-ca")
        assert.isTrue(
          (yield* session({ url: wrong.url(Tls.tlsOnlyRole, { sslmode: "require", sslrootcert: certs.ca }) })).ssl
        )
      }))
  })

  describe("client certificates", () => {
    it.effect("sslcert and sslkey authenticate the certificate's role; client_dn shows its CN", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const s = yield* session({
          url: right.url(Tls.certRole, {
            sslmode: "verify-full",
            sslrootcert: certs.ca,
            sslcert: certs.clientCert,
            sslkey: certs.clientKey
          })
        })
        assert.deepStrictEqual([s.ssl, s.user, s.clientDn], [true, Tls.certRole, `/CN=${Tls.certRole}`])
      }))

    it.effect("an encrypted key with sslpassword connects; a wrong sslpassword says the key cannot be read", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const s = yield* session(right.config(Tls.certRole, {
          sslMode: "verify-full",
          sslRootCert: certs.ca,
          sslCert: certs.clientCert,
          sslKey: certs.clientKeyEncrypted,
          sslPassword: Redacted.make(certs.clientKeyPassphrase)
        }))
        assert.deepStrictEqual([s.user, s.clientDn], [Tls.certRole, `/CN=${Tls.certRole}`])
        // also as the URL's sslpassword
        const fromUrl = yield* session({
          url: right.url(Tls.certRole, {
            sslmode: "verify-full",
            sslrootcert: certs.ca,
            sslcert: certs.clientCert,
            sslkey: certs.clientKeyEncrypted,
            sslpassword: certs.clientKeyPassphrase
          })
        })
        assert.strictEqual(fromUrl.user, Tls.certRole)
        const error = yield* failsAtOnce(
          right.config(Tls.certRole, {
            sslMode: "verify-full",
            sslRootCert: certs.ca,
            sslCert: certs.clientCert,
            sslKey: certs.clientKeyEncrypted,
            sslPassword: Redacted.make(`wrong-${Tls.secretMarker}`)
          }),
          [right]
        )
        assert.include(error.message, keyUnreadable)
        // and without sslpassword
        const none = yield* failsAtOnce(
          right.config(Tls.certRole, {
            sslMode: "verify-full",
            sslRootCert: certs.ca,
            sslCert: certs.clientCert,
            sslKey: certs.clientKeyEncrypted
          }),
          [right]
        )
        assert.include(none.message, keyUnreadable)
      }))

    it.effect("a client key that does not match the client certificate: refused at once, saying so", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        // stranger.key is a valid key, readable without a passphrase, but not the key of client.crt
        const files = yield* failsAtOnce(
          right.config(Tls.certRole, {
            sslMode: "verify-full",
            sslRootCert: certs.ca,
            sslCert: certs.clientCert,
            sslKey: certs.strangerKey
          }),
          [right]
        )
        const fromUrl = yield* failsAtOnce(
          {
            url: right.url(Tls.certRole, {
              sslmode: "verify-full",
              sslrootcert: certs.ca,
              sslcert: certs.clientCert,
              sslkey: certs.strangerKey
            })
          },
          [right]
        )
        const pemText = yield* failsAtOnce(
          right.config(Tls.certRole, {
            ssl: {
              mode: "verify-full",
              ca: pem(certs.ca),
              cert: pem(certs.clientCert),
              key: Redacted.make(pem(certs.strangerKey))
            }
          }),
          [right]
        )
        for (const error of [files, fromUrl, pemText]) {
          assert.match(error.message, keyMismatch, error.message)
          // the key was read: it is the wrong one, not an unreadable one
          assert.notInclude(error.message, keyUnreadable)
          assert.notInclude(error.message, "sslpassword")
          // no key material in the error
          assert.notInclude(stringify(error), "PRIVATE KEY")
        }
      }))

    it.effect("no client certificate: the server's refusal, at once", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const error = yield* failsAtOnce(
          right.config(Tls.certRole, { sslMode: "verify-full", sslRootCert: certs.ca }),
          [right]
        )
        assert.strictEqual(error.code, "28000", error.message)
        assert.include(error.message, "certificate")
      }))

    it.effect("a client certificate from an unrelated CA: the server rejects it, at once", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const error = yield* failsAtOnce(
          right.config(Tls.certRole, {
            sslMode: "verify-full",
            sslRootCert: certs.ca,
            sslCert: certs.strangerCert,
            sslKey: certs.strangerKey
          }),
          [right]
        )
        assert.include(error.message, "the server rejected the client certificate")
      }))

    it.effect("a client certificate given for a password role: TLS takes it, the password authenticates", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        // tls_only authenticates by password: the certificate is accepted by TLS, and the password still counts
        const s = yield* session(right.config(Tls.tlsOnlyRole, {
          sslMode: "verify-full",
          sslRootCert: certs.ca,
          sslCert: certs.clientCert,
          sslKey: certs.clientKey
        }))
        assert.deepStrictEqual([s.user, s.clientDn], [Tls.tlsOnlyRole, `/CN=${Tls.certRole}`])
      }))
  })

  describe("every way of configuring it", () => {
    it.effect("PgPool.Config fields: sslMode, sslRootCert, sslCert, sslKey", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const ok = yield* session(right.config(Tls.tlsOnlyRole, { sslMode: "verify-full", sslRootCert: certs.ca }))
        assert.isTrue(ok.ssl)
        const cert = yield* session(right.config(Tls.certRole, {
          sslMode: "verify-ca",
          sslRootCert: certs.ca,
          sslCert: certs.clientCert,
          sslKey: certs.clientKey
        }))
        assert.strictEqual(cert.clientDn, `/CN=${Tls.certRole}`)
        const error = yield* failsAtOnce(
          right.config(Tls.tlsOnlyRole, { sslMode: "verify-ca", sslRootCert: certs.otherCa }),
          [
            right
          ]
        )
        assert.include(error.message, untrusted)
        // a field wins over the URL's parameter
        const overridden = yield* session({
          url: right.url(Tls.anyRole, { sslmode: "disable" }),
          sslMode: "verify-full",
          sslRootCert: certs.ca
        })
        assert.isTrue(overridden.ssl)
      }))

    it.effect("ssl options with PEM text: ca, cert, key", () =>
      Effect.gen(function*() {
        const [right, wrong, certs] = [yield* Right, yield* Wrong, yield* Certs]
        const ok = yield* session(right.config(Tls.tlsOnlyRole, { ssl: { mode: "verify-full", ca: pem(certs.ca) } }))
        assert.isTrue(ok.ssl)
        // an object without a mode is verify-full
        const nameless = yield* failsAtOnce(wrong.config(Tls.tlsOnlyRole, { ssl: { ca: pem(certs.ca) } }), [wrong])
        assert.include(nameless.message, wrongName)
        const other = yield* failsAtOnce(
          right.config(Tls.tlsOnlyRole, { ssl: { mode: "verify-ca", ca: pem(certs.otherCa) } }),
          [right]
        )
        assert.include(other.message, untrusted)
        const cert = yield* session(right.config(Tls.certRole, {
          ssl: {
            mode: "verify-full",
            ca: pem(certs.ca),
            cert: pem(certs.clientCert),
            key: Redacted.make(pem(certs.clientKeyEncrypted)),
            passphrase: Redacted.make(certs.clientKeyPassphrase)
          }
        }))
        assert.deepStrictEqual([cert.user, cert.clientDn], [Tls.certRole, `/CN=${Tls.certRole}`])
        // ssl: true is require
        assert.isTrue((yield* session(right.config(Tls.tlsOnlyRole, { ssl: true }))).ssl)
        // ssl: { rejectUnauthorized: false } is require too: the wrong name and no CA are accepted
        assert.isTrue((yield* session(wrong.config(Tls.tlsOnlyRole, { ssl: { rejectUnauthorized: false } }))).ssl)
      }))

    it.effect("PgPoolLive: PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const live = (entries: ReadonlyArray<readonly [string, string]>) =>
          Layer.provide(
            PgPoolLive,
            Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["PGPOOL_MAX_CONNECTIONS", "1"], ...entries])))
          )
        const ok = yield* sessionOf(live([
          ["DATABASE_URL", right.url(Tls.tlsOnlyRole)],
          ["PGSSLMODE", "verify-full"],
          ["PGSSLROOTCERT", certs.ca]
        ]))
        assert.deepStrictEqual([ok.ssl, ok.user], [true, Tls.tlsOnlyRole])
        const cert = yield* sessionOf(live([
          ["DATABASE_URL", right.url(Tls.certRole)],
          ["PGSSLMODE", "verify-full"],
          ["PGSSLROOTCERT", certs.ca],
          ["PGSSLCERT", certs.clientCert],
          ["PGSSLKEY", certs.clientKey]
        ]))
        assert.deepStrictEqual([cert.user, cert.clientDn], [Tls.certRole, `/CN=${Tls.certRole}`])
        // without a URL: libpq's variables for everything
        const vars = yield* sessionOf(live([
          ["PGHOST", right.host],
          ["PGPORT", String(right.port)],
          ["PGUSER", Tls.tlsOnlyRole],
          ["PGPASSWORD", Tls.rolePassword],
          ["PGDATABASE", "postgres"],
          ["PGSSLMODE", "verify-ca"],
          ["PGSSLROOTCERT", certs.ca]
        ]))
        assert.deepStrictEqual([vars.ssl, vars.user], [true, Tls.tlsOnlyRole])
        // the URL's sslmode wins over PGSSLMODE
        const urlWins = yield* sessionOf(live([
          ["DATABASE_URL", right.url(Tls.anyRole, { sslmode: "disable" })],
          ["PGSSLMODE", "require"]
        ]))
        assert.isFalse(urlWins.ssl)
        // an unrelated CA from the environment fails the layer with the TLS error, naming no secret
        const { logs, result: error } = yield* withLogs(Effect.flip(Effect.scoped(Layer.build(live([
          ["DATABASE_URL", right.url(Tls.tlsOnlyRole)],
          ["PGSSLMODE", "verify-ca"],
          ["PGSSLROOTCERT", certs.otherCa]
        ])))))
        assert.strictEqual(error._tag, "ConnectionError", String(error))
        assert.include(error.message, untrusted)
        assertNoSecret(error, [right], logs)
      }))

    it.effect("a certificate file that does not exist fails the layer at once, naming the file", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const ca = yield* failsAtOnce(
          right.config(Tls.tlsOnlyRole, { sslMode: "verify-full", sslRootCert: certs.missing }),
          [
            right
          ]
        )
        assert.include(ca.message, certs.missing)
        assert.include(ca.message, "sslrootcert")
        const cert = yield* failsAtOnce(
          {
            url: right.url(Tls.certRole, {
              sslmode: "verify-full",
              sslrootcert: certs.ca,
              sslcert: certs.missing,
              sslkey: certs.clientKey
            })
          },
          [right]
        )
        assert.include(cert.message, certs.missing)
        assert.include(cert.message, "sslcert")
      }))
  })

  describe("sessions over TLS", () => {
    it.scoped("a statement interrupted on a TLS session is cancelled on the server, by a CancelRequest over TLS", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const proxy = yield* recordingProxy(right)
        const applicationName = "tls-cancel"
        const pool = PgPool.layer(right.config(Tls.tlsOnlyRole, {
          port: proxy.port,
          sslMode: "verify-full",
          sslRootCert: certs.ca,
          maxConnections: 1,
          applicationName
        }))
        const running = right.server.query(
          "select pid, query from pg_stat_activity where application_name = $1 and state = 'active' and query like '%pg_sleep%'",
          [applicationName]
        )
        const pid = "select pg_backend_pid() as pid"
        const pids = yield* Effect.gen(function*() {
          const before = toSession(yield* PgPool.query(sessionQuery))
          assert.isTrue(before.ssl)
          const first = (yield* PgPool.query(pid))[0]!.pid
          const { exit, millis } = yield* timedExit(
            PgPool.query("select pg_sleep(30)").pipe(Effect.timeout("200 millis"))
          )
          assert.strictEqual(failureOf(exit)._tag, "TimeoutException")
          assert.isBelow(millis, 5_000)
          yield* eventually(running, (rows) => rows.length === 0, { attempts: 100, interval: "50 millis" })
          // the pool is still usable afterwards, over TLS
          const after = toSession(yield* PgPool.query(sessionQuery))
          assert.isTrue(after.ssl)
          return [first, (yield* PgPool.query(pid))[0]!.pid]
        }).pipe(Effect.provide(Layer.fresh(pool)))
        assert.deepStrictEqual(valueOf(yield* Effect.exit(running)), [])
        // the session's connection, then the cancel's: both began with an SSLRequest; none was a plain CancelRequest
        assert.notInclude(proxy.codes, cancelRequestCode, JSON.stringify(proxy.codes))
        assert.isAtLeast(proxy.codes.length, 2, JSON.stringify(proxy.codes))
        assert.deepStrictEqual(new Set(proxy.codes), new Set([sslRequestCode]), JSON.stringify(proxy.codes))
        // the cancelled connection was kept (the cancel settled): one session, plus the cancel's connection
        assert.strictEqual(pids[0], pids[1], `backend before and after the cancel: ${JSON.stringify(pids)}`)
        assert.strictEqual(proxy.codes.length, 2, JSON.stringify(proxy.codes))
      }))

    it.effect("interrupting a statement over TLS cancels it on the server", () =>
      Effect.gen(function*() {
        const right = yield* Right
        // tls_only: the server lets this role in over TLS only
        const pool = PgPool.layer({ url: right.url(Tls.tlsOnlyRole, { sslmode: "require" }), maxConnections: 1 })
        const sleeping = (pid: number) =>
          right.server.query(
            "select pid from pg_stat_activity where pid = $1 and state = 'active' and query like 'select pg_sleep(30)%'",
            [pid]
          )
        yield* Effect.gen(function*() {
          const pid = Number((yield* PgPool.query("select pg_backend_pid() as pid"))[0]!.pid)
          // the session is TLS, as the server sees it
          const ssl = yield* right.server.query("select ssl from pg_stat_ssl where pid = $1", [pid])
          assert.deepStrictEqual(ssl.map((row) => row.ssl), [true])
          const statement = yield* Effect.fork(timedExit(
            PgPool.query("select pg_sleep(30)").pipe(Effect.timeout("3 seconds"))
          ))
          // the statement runs on the server (so that it being gone below means something)
          yield* eventually(sleeping(pid), (rows) => rows.length === 1, { attempts: 100, interval: "20 millis" })
          const { exit, millis } = yield* Fiber.join(statement)
          assert.strictEqual(failureOf(exit)._tag, "TimeoutException")
          assert.isBelow(millis, 8_000)
          // cancelled on the server: the backend runs no pg_sleep any more, long before its 30 seconds are up
          yield* eventually(sleeping(pid), (rows) => rows.length === 0, { attempts: 100, interval: "50 millis" })
          // a cancel, not a closed connection: the same backend, still over TLS, runs the next statement
          const after = yield* PgPool.query(`${sessionQuery.replace(" as who", " as who, pg_backend_pid() as pid")}`)
          assert.deepStrictEqual([Number(after[0]!.pid), toSession(after).ssl], [pid, true])
        }).pipe(Effect.provide(Layer.fresh(pool)))
      }))

    it.effect("certificate files are read at every connect: a root certificate replaced on disk applies to the next connection", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const rootCert = path.join(certs.dir, "rotating-ca.crt")
        fs.copyFileSync(certs.ca, rootCert)
        const pid = Effect.map(PgPool.query("select pg_backend_pid() as pid"), (rows) => Number(rows[0]!.pid))
        const pool = PgPool.layer(right.config(Tls.tlsOnlyRole, {
          sslMode: "verify-ca",
          sslRootCert: rootCert,
          maxConnections: 1,
          acquireTimeout: "5 seconds"
        }))
        yield* Effect.gen(function*() {
          const first = yield* pid
          fs.copyFileSync(certs.otherCa, rootCert)
          // the open connection goes on
          assert.strictEqual(yield* pid, first)
          // a new one reads the file again, and no longer trusts the server
          yield* Effect.scoped(Effect.flatMap(PgPool.connection, (connection) => connection.invalidate))
          const { exit, millis } = yield* timedExit(pid)
          const error = failureOf(exit)
          assert.strictEqual(error._tag, "ConnectionError", String(error))
          assert.include(error.message, untrusted)
          assert.isBelow(millis, 3_000, "a TLS failure is not retried until the acquire timeout")
          // and the CA back in place mends it
          fs.copyFileSync(certs.ca, rootCert)
          assert.notStrictEqual(yield* pid, first)
        }).pipe(Effect.provide(Layer.fresh(pool)))
      }))

    it.effect("JSON.stringify of a TLS ConnectionError works (its cause may hold a certificate, which is cyclic)", () =>
      Effect.gen(function*() {
        const [wrong, certs] = [yield* Wrong, yield* Certs]
        const error = yield* failsAtOnce(
          { url: wrong.url(Tls.tlsOnlyRole, { sslmode: "verify-full", sslrootcert: certs.ca }) },
          [wrong]
        )
        assert.include(error.message, wrongName)
        let json: string
        try {
          json = JSON.stringify(error)
        } catch (thrown) {
          return assert.fail(`JSON.stringify(error) throws: ${String(thrown)}`)
        }
        assert.include(json, wrongName)
      }))

    it.effect("no password in any error: a wrong password over TLS, a wrong sslpassword, a refused role", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const wrongPassword = yield* failsAtOnce({
          url: right.url(Tls.tlsOnlyRole, { sslmode: "verify-full", sslrootcert: certs.ca }).replace(
            encodeURIComponent(Tls.rolePassword),
            encodeURIComponent(`bad-${Tls.secretMarker}`)
          )
        }, [right])
        assert.strictEqual(wrongPassword.code, "28P01", wrongPassword.message)
        const refused = yield* failsAtOnce(right.config(Tls.tlsOnlyRole, { sslMode: "disable" }), [right])
        assert.strictEqual(refused.code, "28000", refused.message)
        // a wrong sslpassword in the URL, next to the role's password
        const key = yield* failsAtOnce({
          url: right.url(Tls.tlsOnlyRole, {
            sslmode: "verify-full",
            sslrootcert: certs.ca,
            sslcert: certs.clientCert,
            sslkey: certs.clientKeyEncrypted,
            sslpassword: `wrong-${Tls.secretMarker}`
          })
        }, [right])
        assert.include(key.message, keyUnreadable)
      }))
  })

  describe("the process environment", () => {
    it.effect("PGSSLMODE=require in the process environment does not override ssl: false", () =>
      Effect.gen(function*() {
        const right = yield* Right
        const plainConfigs: ReadonlyArray<readonly [string, PgPool.Config]> = [
          ["ssl: false", right.config(Tls.anyRole, { ssl: false })],
          ["sslMode: disable", right.config(Tls.anyRole, { sslMode: "disable" })],
          ["sslmode=disable in the URL", { url: right.url(Tls.anyRole, { sslmode: "disable" }) }],
          ["no TLS setting", right.config(Tls.anyRole)],
          ["a URL without sslmode", { url: right.url(Tls.anyRole) }]
        ]
        const pgOptions = {
          host: right.host,
          port: right.port,
          user: Tls.anyRole,
          password: Tls.rolePassword,
          database: "postgres"
        }
        // without PGSSLMODE, node-postgres connects without TLS
        const before = yield* withProcessEnv({}, plainPg(pgOptions))
        assert.deepStrictEqual(before, { ssl: false, user: Tls.anyRole, error: undefined })
        yield* withProcessEnv(
          { PGSSLMODE: "require" },
          Effect.gen(function*() {
            // the variable is in force: node-postgres, given no ssl, takes it and tries TLS (verifying, as pg's
            // `ssl: true` does, so the test CA it does not know fails it)
            const honoured = yield* plainPg(pgOptions)
            assert.isDefined(honoured.error, JSON.stringify(honoured))
            assert.match(honoured.error!, /SELF_SIGNED_CERT_IN_CHAIN|self-signed certificate/, honoured.error)
            // the pool gives pg its ssl setting every time: none of these sessions is TLS
            for (const [name, config] of plainConfigs) {
              const s = yield* session(config)
              assert.deepStrictEqual([s.ssl, s.user], [false, Tls.anyRole], name)
            }
            // PgPoolLive over ConfigProvider.fromMap reads the map only
            const fromMap = yield* sessionOf(Layer.provide(
              PgPoolLive,
              Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["DATABASE_URL", right.url(Tls.anyRole)]])))
            ))
            assert.isFalse(fromMap.ssl)
            // and over the process environment (the default ConfigProvider) it takes PGSSLMODE, as libpq does
            process.env.DATABASE_URL = right.url(Tls.anyRole)
            const fromEnv = yield* sessionOf(
              Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromEnv()))
            )
            assert.deepStrictEqual([fromEnv.ssl, fromEnv.user], [true, Tls.anyRole])
          })
        )
      }))

    it.effect("a PGPASSWORD in the environment is not used by a pool built from ConfigProvider.fromMap", () =>
      Effect.gen(function*() {
        const [right, certs] = [yield* Right, yield* Certs]
        const noPassword = `postgres://${Tls.anyRole}@${right.host}:${right.port}/postgres`
        const pgOptions = { host: right.host, port: right.port, user: Tls.anyRole, database: "postgres" }
        const pgpass = path.join(certs.dir, "pgpass")
        fs.writeFileSync(pgpass, `${right.host}:${right.port}:*:${Tls.anyRole}:${Tls.rolePassword}\n`, { mode: 0o600 })
        const missing = "the server asked for a password and none was configured"
        for (const vars of [{ PGPASSWORD: Tls.rolePassword }, { PGPASSFILE: pgpass }]) {
          const name = Object.keys(vars)[0]!
          yield* withProcessEnv(
            vars,
            Effect.gen(function*() {
              // the variable is in force: node-postgres, given no password, takes it from there and gets in
              const honoured = yield* plainPg(pgOptions)
              assert.deepStrictEqual(honoured, { ssl: false, user: Tls.anyRole, error: undefined }, name)
              // PgPoolLive over ConfigProvider.fromMap: the map has no password, so the pool has none
              const fromMap = yield* buildFailure(Layer.provide(
                PgPoolLive,
                Layer.setConfigProvider(ConfigProvider.fromMap(new Map([["DATABASE_URL", noPassword]])))
              ))
              assert.include(fromMap.message, missing, name)
              // nor does PgPool.layer read it
              const layerError = yield* buildFailure(PgPool.layer({ url: noPassword }))
              assert.include(layerError.message, missing, name)
              assertNoSecret(fromMap, [right])
              assertNoSecret(layerError, [right])
            })
          )
        }
        // PGPASSWORD through the ConfigProvider of the process environment is PgPoolLive's way: it connects
        const fromEnv = yield* withProcessEnv(
          { DATABASE_URL: noPassword, PGPASSWORD: Tls.rolePassword },
          sessionOf(Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromEnv())))
        )
        assert.strictEqual(fromEnv.user, Tls.anyRole)
        // ~/.pgpass is not supported: PGPASSFILE is not read by PgPoolLive either
        const pgpassFile = yield* withProcessEnv(
          { DATABASE_URL: noPassword, PGPASSFILE: pgpass },
          buildFailure(Layer.provide(PgPoolLive, Layer.setConfigProvider(ConfigProvider.fromEnv())))
        )
        assert.include(pgpassFile.message, missing)
      }))
  })
})
