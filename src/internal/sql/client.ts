/**
 * The SqlClient on the pool: @effect/sql's client with its statements executed on the pool (a `sql.execute`
 * span as @effect/sql makes it, without its per-statement Scope), also provided as @effect/sql-pg's
 * `PgClient` (transactions, `listen`, `notify`, `json`); and the one-line swap for `PgClient.layer`.
 *
 * @internal
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Client from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import { identity } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as ConnectorModule from "../../Connector.js"
import type * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import type { ConnectionError } from "../../PgPoolError.js"
import type * as PgPoolSql from "../../PgPoolSql.js"
import { parseUrl } from "../config/url.js"
import { currentReadOnly } from "../pgpool/pin.js"
import { make as makePool, serviceOf, tag as PgPoolTag } from "../pgpool/service.js"
import { traced } from "../tracing.js"
import * as transaction from "../transaction.js"
import { PooledSqlConnection, routed, toSqlError, type Transform } from "./connection.js"
import { makeListen } from "./listen.js"

const PgJson = Statement.custom<PgClient.PgCustom>("PgJson")

interface StatementContext {
  readonly unbound: SqlConnection.Connection
  readonly spanAttributes: ReadonlyArray<readonly [string, unknown]>
  readonly transformRows: Transform
}

type Run<X> = (
  connection: SqlConnection.Connection,
  sql: string,
  params: ReadonlyArray<unknown>
) => Effect.Effect<X, SqlError>

/**
 * A statement of the SqlClient, executed the way @effect/sql does it (a `sql.execute` span with the same
 * attributes, the transaction's connection when there is one, the same transforms) but without the per
 * statement `Effect.scoped` of @effect/sql's generic implementation, which costs more than the rest of the
 * statement together. Building, compiling and streaming are @effect/sql's own; when a statement transformer
 * is installed (`Statement.withTransformer`), the statement runs @effect/sql's path unchanged.
 */
class PooledStatement<A> extends Effectable.Class<ReadonlyArray<A>, SqlError> implements Statement.Statement<A> {
  constructor(readonly inner: Statement.Statement<A>, readonly context: StatementContext) {
    super()
  }
  get [Statement.FragmentId]() {
    return identity
  }
  get segments() {
    return this.inner.segments
  }
  readonly compile = (withoutTransform?: boolean | undefined) => this.inner.compile(withoutTransform)
  get stream(): Stream.Stream<A, SqlError> {
    return this.inner.stream
  }
  get raw(): Effect.Effect<unknown, SqlError> {
    return this.execute("executeRaw", true, (conn, sql, params) => conn.executeRaw(sql, params), this.inner.raw)
  }
  get withoutTransform(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "executeWithoutTransform",
      true,
      (conn, sql, params) => conn.execute(sql, params, undefined),
      this.inner.withoutTransform
    )
  }
  get values(): Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError> {
    return this.execute(
      "executeValues",
      false,
      (conn, sql, params) => conn.executeValues(sql, params),
      this.inner.values
    )
  }
  get unprepared(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "executeUnprepared",
      false,
      (conn, sql, params) => conn.executeUnprepared(sql, params, this.context.transformRows),
      this.inner.unprepared
    )
  }
  commit(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.execute(
      "execute",
      false,
      (conn, sql, params) => conn.execute(sql, params, this.context.transformRows),
      this.inner
    )
  }
  toJSON(): unknown {
    return (this.inner as unknown as { toJSON(): unknown }).toJSON()
  }
  execute<X>(operation: string, withoutTransform: boolean, run: Run<X>, fallback: Effect.Effect<X, SqlError>) {
    return Effect.withFiberRuntime<X, SqlError>((fiber) => {
      if (fiber.getFiberRef(Statement.currentTransformer)._tag === "Some") return fallback
      const tx = fiber.currentContext.unsafeMap.get(Client.TransactionConnection.key) as
        | readonly [SqlConnection.Connection, number]
        | undefined
      const connection = tx === undefined ? this.context.unbound : tx[0]
      if (!traced(fiber)) {
        const [sql, params] = this.inner.compile(withoutTransform)
        return run(connection, sql, params)
      }
      return Effect.useSpan("sql.execute", spanOptions, (span) => {
        const [sql, params] = this.inner.compile(withoutTransform)
        for (const [key, value] of this.context.spanAttributes) span.attribute(key, value)
        span.attribute("db.operation.name", operation)
        span.attribute("db.query.text", sql)
        return run(connection, sql, params)
      })
    })
  }
}

const spanOptions = { kind: "client", captureStackTrace: false } as const

const isStatement = (u: unknown): u is Statement.Statement<unknown> =>
  Effect.isEffect(u) && Statement.isFragment(u) && typeof (u as { compile?: unknown }).compile === "function"

/** The client's `sql` function and `sql.unsafe`, with their statements executed by `PooledStatement`. */
const pooledConstructor = <C extends Client.SqlClient>(client: C, context: StatementContext): C => {
  const wrap = (result: unknown) => isStatement(result) ? new PooledStatement(result, context) : result
  const sql = function(...args: Array<unknown>) {
    return wrap((client as unknown as (...args: Array<unknown>) => unknown)(...args))
  }
  Object.assign(sql, client)
  const unsafe = client.unsafe
  Object.assign(sql, {
    unsafe: (text: string, params?: ReadonlyArray<unknown>) => wrap(unsafe(text, params)),
    safe: sql
  })
  return sql as unknown as C
}

/** @internal */
const make = (
  options: PgPoolSql.Options = {},
  reported?: PgClient.PgClientConfig
): Effect.Effect<PgClient.PgClient, never, PgPool.PgPool | Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const service = serviceOf(yield* PgPoolTag)
    if (service === undefined) return yield* Effect.dieMessage("PgPoolSql needs a PgPool built by this package")
    const config = service.config
    const host = config.hosts[0]!
    const unbound = new PooledSqlConnection(service, undefined)
    const reserve = Effect.withFiberRuntime<SqlConnection.Connection, SqlError, Scope.Scope>((fiber) =>
      Effect.map(routed(service, fiber), (handle) => new PooledSqlConnection(service, handle))
    )
    const compiler = PgClient.makeCompiler(options.transformQueryNames, options.transformJson)
    const transformRows = options.transformResultNames
      ? Statement.defaultTransforms(options.transformResultNames, options.transformJson).array
      : undefined
    const spanAttributes: ReadonlyArray<readonly [string, unknown]> = [
      ...(options.spanAttributes ? Object.entries(options.spanAttributes) : []),
      ["db.system.name", "postgresql"],
      ["db.namespace", config.database],
      ["server.address", host.host],
      ["server.port", host.port]
    ]
    const client = yield* Client.make({
      acquirer: Effect.succeed(unbound),
      transactionAcquirer: reserve,
      compiler,
      spanAttributes,
      transformRows
    })
    // @effect/sql-pg's span, with the same attributes as the statements' (`spanAttributes` included)
    const withTransaction = transaction.make({ map: toSqlError }, () => service, {
      name: "sql.transaction",
      attributes: spanAttributes
    })
    const listen = yield* makeListen(service.main)
    const pgClient: PgClient.PgClient = Object.assign(
      pooledConstructor(client, { unbound, spanAttributes, transformRows }),
      {
        [PgClient.TypeId]: PgClient.TypeId,
        withTransaction: <R, E, A>(effect: Effect.Effect<A, E, R>) => withTransaction(effect),
        config: reported ?? {
          url: config.url,
          host: host.host,
          port: host.port,
          database: config.database,
          username: config.user,
          password: config.password,
          ssl: config.ssl !== undefined,
          applicationName: config.applicationName,
          maxConnections: config.maxConnections,
          minConnections: config.minConnections
        },
        json: (value: unknown) => PgJson(value, undefined, undefined),
        listen,
        notify: (channel: string, payload: string) =>
          Effect.mapError(
            Effect.locally(
              service.statement("select pg_notify($1, $2)", [channel, payload], undefined, () => undefined),
              currentReadOnly,
              false
            ),
            toSqlError
          )
      }
    )
    return pgClient
  })

/** @internal */
export const layerWith = (
  options: PgPoolSql.Options = {}
): Layer.Layer<Client.SqlClient | PgClient.PgClient, never, PgPool.PgPool> =>
  Layer.scopedContext(
    Effect.map(make(options), (client) =>
      Context.make(PgClient.PgClient, client).pipe(Context.add(Client.SqlClient, client)))
  ).pipe(Layer.provide(Reactivity.layer))

/** @internal */
const pemText = (value: unknown): string | undefined => {
  if (value === undefined || value === null) return undefined
  if (typeof value === "string") return value
  if (value instanceof Uint8Array) return Buffer.from(value).toString("utf8")
  if (Array.isArray(value)) {
    const parts = value.map(pemText)
    return parts.every((p) => p !== undefined) ? parts.join("\n") : undefined
  }
  if (typeof value === "object" && "pem" in value) return pemText((value as { pem: unknown }).pem)
  return undefined
}

const supportedTlsOptions = new Set(["ca", "cert", "key", "passphrase", "rejectUnauthorized", "servername"])

/**
 * node-postgres' `ssl` (as @effect/sql-pg takes it) in this pool's terms: `true` is TLS that verifies the
 * server's certificate and host name, as node-postgres does; an object's `rejectUnauthorized: false` turns the
 * verification off.
 */
const sslOf = (ssl: PgPoolSql.ClientConfig["ssl"]): Connector.SslConfig | undefined | ConfigError.ConfigError => {
  if (ssl === undefined || ssl === false) return ssl
  if (ssl === true) return { mode: "verify-full" }
  if (typeof ssl !== "object" || ssl === null) {
    return ConfigError.InvalidData(["ssl"], "ssl must be a boolean or node's TLS options")
  }
  for (const [key, value] of Object.entries(ssl)) {
    if (value !== undefined && !supportedTlsOptions.has(key)) {
      return ConfigError.InvalidData(
        ["ssl"],
        `ssl.${key} is not supported (supported: ${
          [...supportedTlsOptions].join(", ")
        }; or use sslMode and the ssl* fields)`
      )
    }
  }
  const field = (name: "ca" | "cert" | "key" | "passphrase") => {
    const value = (ssl as Record<string, unknown>)[name]
    const text = pemText(value)
    return value !== undefined && text === undefined
      ? ConfigError.InvalidData(["ssl"], `ssl.${name} must be PEM text or a Buffer`)
      : text
  }
  const ca = field("ca")
  const cert = field("cert")
  const key = field("key")
  const passphrase = field("passphrase")
  for (const value of [ca, cert, key, passphrase]) if (ConfigError.isConfigError(value)) return value
  return {
    mode: ssl.rejectUnauthorized === false ? "require" : "verify-full",
    ...(ca === undefined ? {} : { ca: ca as string }),
    ...(cert === undefined ? {} : { cert: cert as string }),
    ...(key === undefined ? {} : { key: Redacted.make(key as string) }),
    ...(passphrase === undefined ? {} : { passphrase: Redacted.make(passphrase as string) }),
    ...(typeof ssl.servername === "string" ? { servername: ssl.servername } : {})
  }
}

/** The pool's configuration from @effect/sql-pg's (plus the pool's own knobs). */
const poolConfigOf = (config: PgPoolSql.ClientConfig): Effect.Effect<PgPool.Config, ConfigError.ConfigError> =>
  Effect.suspend(() => {
    const {
      connectionTTL,
      spanAttributes: _spanAttributes,
      ssl,
      transformJson,
      transformQueryNames,
      transformResultNames,
      types,
      username,
      ...rest
    } = config
    // (a caller without types: a transform that is not a function would fail every statement as a defect)
    for (
      const [name, transform] of [["transformQueryNames", transformQueryNames], [
        "transformResultNames",
        transformResultNames
      ]] as const
    ) {
      if (transform !== undefined && typeof transform !== "function") {
        return Effect.fail(ConfigError.InvalidData([name], `${name} must be a function (string => string)`))
      }
    }
    if (transformJson !== undefined && typeof transformJson !== "boolean") {
      return Effect.fail(ConfigError.InvalidData(["transformJson"], "transformJson must be a boolean"))
    }
    const user = (rest as { readonly user?: unknown }).user
    if (user !== undefined && username !== undefined && user !== username) {
      return Effect.fail(ConfigError.InvalidData(["username"], "username and user name two different users"))
    }
    const mapped = sslOf(ssl)
    if (ConfigError.isConfigError(mapped)) return Effect.fail(mapped)
    const poolConfig: Record<string, unknown> = { ...rest }
    if (username !== undefined) poolConfig.user = username
    if (mapped !== undefined) poolConfig.ssl = mapped
    if (connectionTTL !== undefined && rest.maxLifetime === undefined) poolConfig.maxLifetime = connectionTTL
    if (types !== undefined) poolConfig.types = types
    return Effect.succeed(poolConfig as PgPool.Config)
  })

/** What stock @effect/sql-pg reports as `PgClient.config`: the configuration given, with the URL's parts. */
const reportedConfig = (config: PgPoolSql.ClientConfig): PgClient.PgClientConfig => {
  const raw = config.url === undefined
    ? undefined
    : Redacted.isRedacted(config.url)
    ? Redacted.value(config.url)
    : config.url
  const parsed = typeof raw === "string" ? parseUrl(raw) : undefined
  const { ssl: _ssl, types: _types, ...rest } = config
  return {
    ...(rest as Omit<PgPoolSql.ClientConfig, "url" | "ssl" | "types">),
    ...(config.ssl === undefined ? {} : { ssl: config.ssl }),
    ...(config.types === undefined ? {} : { types: config.types }),
    url: raw === undefined ? undefined : Redacted.isRedacted(config.url) ? config.url : Redacted.make(raw),
    host: config.host ?? parsed?.hosts[0]?.host,
    port: config.port ?? parsed?.hosts[0]?.port,
    username: config.username ?? parsed?.user,
    // a password Effect (fetched per connect) has no value to show here
    password: (Redacted.isRedacted(config.password) ? config.password : undefined) ?? parsed?.password,
    database: config.database ?? parsed?.database
  }
}

/** @internal */
export const layerClient = (
  config: PgPoolSql.ClientConfig
): Layer.Layer<
  PgPool.PgPool | Client.SqlClient | PgClient.PgClient,
  ConnectionError | ConfigError.ConfigError
> =>
  Layer.scopedContext(Effect.gen(function*() {
    const poolConfig = yield* poolConfigOf(config)
    const pool = yield* makePool(poolConfig)
    const client = yield* Effect.provideService(
      make({
        transformResultNames: config.transformResultNames,
        transformQueryNames: config.transformQueryNames,
        transformJson: config.transformJson,
        spanAttributes: config.spanAttributes
      }, reportedConfig(config)),
      PgPoolTag,
      pool
    )
    return Context.make(PgPoolTag, pool).pipe(
      Context.add(PgClient.PgClient, client),
      Context.add(Client.SqlClient, client)
    )
  })).pipe(Layer.provide(Reactivity.layer), Layer.provide(ConnectorModule.layer))
