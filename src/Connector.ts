/**
 * The boundary between the pool and the wire driver. A `Connector` opens one physical connection to one
 * server; the pool, the transactions and the SqlClient above it only ever see this interface, so the fake
 * connector of `PgPoolTest` runs the very same pool code as the live one.
 *
 * The live implementation (`Connector.layer`) is the only code of the package that imports `pg`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { unsendableStatement } from "./internal/connector/limits.js"
import * as internal from "./internal/connector/pg.js"
import type { ConnectionError, QueryError } from "./PgPoolError.js"

/**
 * libpq's `sslmode`:
 *
 * - `"disable"`: no TLS;
 * - `"allow"`: without TLS first, with TLS (unverified) when the server refuses a connection without it;
 * - `"prefer"`: with TLS (unverified) first, without it when the server does not offer TLS;
 * - `"require"`: TLS, the server's certificate not verified (verified as in `"verify-ca"` when a root
 *   certificate is given, as libpq does);
 * - `"verify-ca"`: TLS, the server's certificate must be signed by a trusted CA;
 * - `"verify-full"`: as `"verify-ca"`, and the certificate must name the host connected to.
 *
 * @since 0.1.0
 * @category models
 */
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"

/**
 * TLS settings. `false` means no TLS (`sslmode=disable`), `true` TLS without certificate verification
 * (`sslmode=require`). An object gives the certificates, as PEM text (`ca`, `cert`, `key`) or as files read
 * at each connect (`caFile`, `certFile`, `keyFile`: libpq's `sslrootcert`, `sslcert`, `sslkey`), and the mode;
 * without a `mode` an object means `"verify-full"` (`"require"` with `rejectUnauthorized: false`). Without a
 * CA the verifying modes trust Node's bundled root certificates. The private key and its passphrase are
 * `Redacted`.
 *
 * @since 0.1.0
 * @category models
 */
export type SslConfig = boolean | SslOptions

/**
 * @since 0.1.0
 * @category models
 */
export interface SslOptions {
  readonly mode?: SslMode | undefined
  /** Trusted CA certificates (PEM). */
  readonly ca?: string | undefined
  /** A file of trusted CA certificates (PEM), libpq's `sslrootcert`. */
  readonly caFile?: string | undefined
  /** The client certificate (PEM), for certificate authentication. */
  readonly cert?: string | undefined
  /** A file holding the client certificate, libpq's `sslcert`. */
  readonly certFile?: string | undefined
  /** The client certificate's private key (PEM). */
  readonly key?: Redacted.Redacted | undefined
  /** A file holding the client certificate's private key, libpq's `sslkey`. */
  readonly keyFile?: string | undefined
  /** The passphrase of an encrypted private key, libpq's `sslpassword`. */
  readonly passphrase?: Redacted.Redacted | undefined
  /** `false` turns certificate verification off (`"require"`). */
  readonly rejectUnauthorized?: boolean | undefined
  /** The host name sent in SNI and checked in `"verify-full"`; by default the host connected to. */
  readonly servername?: string | undefined
}

/**
 * Where and how to open one physical connection.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectOptions {
  readonly host: string
  readonly port: number
  readonly database: string
  readonly user: string
  readonly password: Redacted.Redacted | undefined
  /** TLS: `undefined` or `false` for none; see {@link SslConfig}. */
  readonly ssl: SslConfig | undefined
  readonly applicationName: string | undefined
  /**
   * libpq's `options`: command-line options for the server, sent in the startup packet, e.g.
   * `-c search_path=app`. The `parameters` are added to them.
   */
  readonly options?: string | undefined
  readonly connectTimeout: Duration.Duration
  /** Type parsers for result columns (node-postgres' `types`, e.g. from `pg-types`); the driver's defaults otherwise. */
  readonly types?: TypeParsers | undefined
  /** Run-time parameters sent in the startup packet, e.g. `{ statement_timeout: "5000" }`. */
  readonly parameters: Readonly<Record<string, string>>
  /**
   * Automatic preparation of statements: a statement that ran `threshold` times on the connection is prepared
   * on the server, at most `capacity` of them per connection (0 turns it off). Live connector's defaults: 5
   * and 100.
   */
  readonly statementCache?: StatementCacheOptions | undefined
}

/**
 * Parsers of column values by type oid, as node-postgres takes them (its `types` option, `pg-types`, or
 * `pg.types` with your own parsers set).
 *
 * @since 0.1.0
 * @category models
 */
export interface TypeParsers {
  getTypeParser(oid: number, format?: "text" | "binary"): (value: never) => unknown
}

/**
 * @since 0.1.0
 * @category models
 */
export interface StatementCacheOptions {
  readonly threshold: number
  readonly capacity: number
  /** Shared by the connections of a pool: whether they may prepare statements now (see {@link PoolerSigns}). */
  readonly pooler?: PoolerSigns | undefined
}

/**
 * What the connections of one pool share about a transaction pooler (PgBouncer, Supavisor, a cloud proxy in
 * transaction mode) between them and the server: while `prepare` is false no connection prepares a statement
 * under a name (nor closes one); a connection that sees a sign of a pooler (a statement name of its own that
 * already exists, or vanished, on the server) calls `sign`, which turns `prepare` off for all of them.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolerSigns {
  readonly prepare: boolean
  readonly sign: (what: string) => void
}

/**
 * A row as the driver returns it: column name to parsed value.
 *
 * @since 0.1.0
 * @category models
 */
export type Row = { readonly [column: string]: unknown }

/**
 * @since 0.1.0
 * @category models
 */
export interface FieldInfo {
  readonly name: string
  readonly dataTypeID: number
}

/**
 * The result of one statement.
 *
 * @since 0.1.0
 * @category models
 */
export interface QueryResult<R = Row> {
  readonly rows: ReadonlyArray<R>
  readonly fields: ReadonlyArray<FieldInfo>
  readonly command: string
  readonly rowCount: number | null
  /**
   * When the text held several statements (simple protocol, no parameters): the result of each, in order.
   * The other fields are then those of the last statement.
   */
  readonly results?: ReadonlyArray<QueryResult<R>> | undefined
}

/**
 * The transaction status the server reported with its last ReadyForQuery message: `"idle"` (no
 * transaction), `"transaction"` (inside a transaction block), `"failed"` (inside a failed transaction
 * block), or `"unknown"` while a statement is running or before the first ReadyForQuery.
 *
 * @since 0.1.0
 * @category models
 */
export type TransactionStatus = "idle" | "transaction" | "failed" | "unknown"

/**
 * A notification received by `LISTEN`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Notification {
  readonly channel: string
  readonly payload: string
  readonly processId: number
}

/**
 * A server-side cursor over the rows of one statement.
 *
 * @since 0.1.0
 * @category models
 */
export interface Cursor {
  readonly read: (
    rows: number
  ) => Effect.Effect<ReadonlyArray<Row> | ReadonlyArray<ReadonlyArray<unknown>>, QueryError | ConnectionError>
  readonly close: Effect.Effect<void>
}

/**
 * One open physical connection, as the driver sees it. A connection is never shared: the pool guarantees
 * that at most one fiber uses it at a time.
 *
 * @since 0.1.0
 * @category models
 */
export interface Connection {
  /** The process id of the server backend serving this connection. */
  readonly backendPid: number
  /**
   * Sends one statement and calls `callback` exactly once with its outcome. Without `params` (or with none)
   * the simple protocol is used, and the text may hold several statements; with parameters the extended
   * protocol (parameters are never interpolated). With
   * `rowMode: "array"` rows are arrays of values instead of objects. This callback form is the primitive the
   * pool's hot path is built on; `Connector.query` is its Effect form.
   */
  readonly send: (
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: QueryResult | undefined) => void
  ) => void
  /**
   * Optional: sends `prefix` (statements without parameters whose results are not wanted, e.g. `BEGIN`) and
   * then the statement, in one write and under one Sync of the extended protocol. The server runs them in
   * order; when a prefix statement fails, the statement is not run and `callback` gets that error. The pool
   * uses it to send a transaction's `BEGIN` together with its first statement, saving a round trip; a
   * connector without it gets the prefix as statements of their own, first.
   */
  readonly sendAfter?: (
    prefix: ReadonlyArray<string>,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: QueryResult | undefined) => void
  ) => void
  /**
   * Optional (pipelining): sends one statement outside any transaction even while others are in flight on the
   * connection: it is written at once behind them (statements sent in the same turn of the event loop go out in
   * one write), each under a Sync of its own, so each is an implicit transaction of its own and a failure of one
   * does not touch the others; `callback` is called exactly once, in order. The returned handle's `cancel`
   * cancels exactly this statement: a CancelRequest is sent only once the statement is the one the server runs,
   * and a statement behind it that a late CancelRequest reaches anyway (it fails with 57014 having had no
   * effect) is sent again by the connection. When the connection is lost, every statement in flight fails at
   * once with a `ConnectionError` (`safeToRetry` only for those that provably never ran).
   */
  readonly sendPipelined?: (
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: QueryResult | undefined) => void
  ) => InFlight
  /**
   * Optional: sends `prefix` (as `sendAfter`; may be empty) and then the statement under one Sync, written at
   * once behind the statements in flight on the connection (as `sendPipelined`: what was sent in the same turn
   * of the event loop goes out in one write), so that a failure of a statement ahead of it does not touch it.
   * The returned handle's `cancel` is exact, as for `sendPipelined`. The pool uses it while the COMMIT of the
   * transaction that had the connection before is still out (see the README's design notes): the next
   * checkout's first statement, and the `BEGIN` held back for it, go out in the same write as that COMMIT.
   */
  readonly sendBehind?: (
    prefix: ReadonlyArray<string>,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: QueryResult | undefined) => void
  ) => InFlight
  /** Opens a cursor that fetches the rows of `text` in batches. */
  readonly cursor: (
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode?: "array" | undefined
  ) => Cursor
  /** The transaction status of the last ReadyForQuery. */
  readonly transactionStatus: () => TransactionStatus
  /** True while a statement is in flight on the wire. */
  readonly isBusy: () => boolean
  /** Completes when no statement is in flight any more (at once when none is). */
  readonly awaitIdle: Effect.Effect<void>
  /** True once the connection has failed or been closed. */
  readonly isBroken: () => boolean
  /**
   * False when the connection is found dead now, though `isBroken` does not know it yet: the peer reset the
   * socket and nothing has read the reset (the live connector writes nothing to it, which the system refuses at
   * once then). It costs a system call: the pool asks it of an idle connection it hands to work whose first
   * statement it could not send again elsewhere (a pinned or scoped checkout, a transaction). Optional.
   */
  readonly probe?: (() => boolean) | undefined
  /**
   * Asks the server to cancel the statement running on this connection (a CancelRequest carrying this
   * backend's secret key, sent on a new socket). It completes when the request has been sent; the statement
   * itself then fails with SQLSTATE 57014.
   */
  readonly cancel: Effect.Effect<void, ConnectionError>
  /** Registers the handler of `LISTEN` notifications (one per connection). */
  readonly onNotification: (handler: (notification: Notification) => void) => void
}

/**
 * A statement sent with `Connection.sendPipelined`.
 *
 * @since 0.1.0
 * @category models
 */
export interface InFlight {
  /**
   * Cancels this statement and no other: it completes once the CancelRequest went out (after the statements
   * ahead of it finished), or at once when the statement has finished. The statement's callback says how it
   * ended (57014 when the cancel reached it, else its own outcome).
   */
  readonly cancel: Effect.Effect<void>
}

/**
 * Opens physical connections. `connect` acquires the connection in the given Scope: closing the Scope
 * closes the connection. `onLost` is called, at most once, when the connection fails outside of any
 * statement (the server went away, the backend was terminated, the network broke); an error listener is
 * attached from the first moment to the last, so such a failure never reaches the process as an uncaught
 * error.
 *
 * @since 0.1.0
 * @category models
 */
export interface Connector {
  readonly connect: (
    options: ConnectOptions,
    onLost: (error: ConnectionError) => void
  ) => Effect.Effect<Connection, ConnectionError, Scope.Scope>
}

/**
 * Runs one statement on a connection, as an Effect.
 *
 * @since 0.1.0
 * @category combinators
 */
export const query = (
  connection: Connection,
  text: string,
  params?: ReadonlyArray<unknown>,
  rowMode?: "array"
): Effect.Effect<QueryResult, QueryError | ConnectionError> => {
  const unsendable = unsendableStatement(text, params)
  if (unsendable !== undefined) return Effect.fail(unsendable)
  return Effect.async((resume) => {
    connection.send(text, params, rowMode, (error, result) => {
      resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
    })
  })
}

/**
 * @since 0.1.0
 * @category tags
 */
export const Connector: Context.Tag<Connector, Connector> = Context.GenericTag<Connector>(
  "effect-pg-pool/Connector"
)

/**
 * The live connector, over node-postgres' `pg.Client`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Connector = internal.make

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<Connector> = Layer.succeed(Connector, make)
