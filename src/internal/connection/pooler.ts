/**
 * A transaction pooler (PgBouncer, Supavisor, a cloud proxy in transaction mode) between the pool and the
 * server: each transaction of a connection may run on another server connection, so named prepared statements
 * and session state do not stay where they were made. `pooler: "transaction"` says so from the start; with
 * `"auto"` the connections watch for its signs (a statement name of their own that already exists on the
 * server, or vanished from it) and the first one seen turns preparation off for the whole pool, with a Warning
 * that says what to configure.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type * as Connector from "../../Connector.js"

/** Texts remembered for the once-per-text Warning; past this many, no more Warnings. */
const MAX_WARNED = 1_000

/** Leading whitespace and comments of a statement, or of one after a `;`. */
const start = String.raw`(?:^|;)(?:\s+|--[^\n]*(?:\n|$)|/\*[^]*?\*/)*`

/** The kinds of work that set session state a transaction pooler leaks to other clients or loses. */
const sessionStates: ReadonlyArray<readonly [RegExp, string]> = [
  [
    new RegExp(`${start}set\\s+(?!local\\b|transaction\\b|constraints\\b)`, "i"),
    "SET without LOCAL (use SET LOCAL inside a transaction)"
  ],
  [/\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(/i, "a session advisory lock (use pg_advisory_xact_lock)"],
  [new RegExp(`${start}create\\s+(?:(?:global|local)\\s+)?temp(?:orary)?\\b`, "i"), "a temporary table"],
  [new RegExp(`${start}prepare\\s`, "i"), "PREPARE (a named prepared statement)"],
  [new RegExp(`${start}listen\\s`, "i"), "LISTEN"]
]

/** What session state `text` sets, or undefined. @internal */
export const sessionState = (text: string): string | undefined => {
  for (const [pattern, what] of sessionStates) if (pattern.test(text)) return what
  return undefined
}

/** @internal */
export type PoolerMode = "auto" | "transaction"

/** @internal */
export class PoolerWatch implements Connector.PoolerSigns {
  prepare: boolean
  /** The sign that turned preparation off (`"auto"`), if one was seen. */
  detected: string | undefined = undefined
  private readonly warned = new Set<string>()
  /** Runs a log in the background, annotated with the pool's name: set by the pool once it runs. */
  report: ((log: Effect.Effect<void>) => void) | undefined = undefined

  constructor(readonly mode: PoolerMode) {
    this.prepare = mode === "auto"
  }

  readonly sign = (what: string): void => {
    if (!this.prepare) return
    this.prepare = false
    this.detected = what
    this.report?.(
      Effect.logWarning(
        `a transaction pooler sits between the pool and the server (${what}): the pool stops preparing statements. ` +
          `Say so in the configuration (pooler: "transaction", PGPOOL_POOLER=transaction or ?pooler=transaction in ` +
          `the URL), and keep session state out of the work: SET without LOCAL, session advisory locks, ` +
          `temporary tables, PREPARE and LISTEN do not stay on one server connection behind it`
      )
    )
  }

  /** `pooler: "transaction"`: a Warning, once per text, for a statement that sets session state. */
  inspect(text: string): void {
    if (this.warned.size >= MAX_WARNED || this.warned.has(text)) return
    const what = sessionState(text)
    if (what === undefined) return
    this.warned.add(text)
    this.report?.(
      Effect.logWarning(
        `${what} behind a transaction pooler (pooler: "transaction"): the session state it sets stays on one ` +
          `server connection, which other clients get next, and this connection's next transaction may run elsewhere`
      ).pipe(Effect.annotateLogs({ statement: text.length > 200 ? `${text.slice(0, 200)}...` : text }))
    )
  }

  /** The connection as the pool uses it: with `pooler: "transaction"`, every statement text inspected first. */
  watch(driver: Connector.Connection): Connector.Connection {
    if (this.mode !== "transaction") return driver
    const send = driver.send
    const sendAfter = driver.sendAfter
    const cursor = driver.cursor
    // every member delegated (a connector's connection may be a class, whose members a spread would not copy)
    return {
      backendPid: driver.backendPid,
      transactionStatus: () => driver.transactionStatus(),
      isBusy: () => driver.isBusy(),
      get awaitIdle() {
        return driver.awaitIdle
      },
      isBroken: () => driver.isBroken(),
      get cancel() {
        return driver.cancel
      },
      onNotification: (handler) => driver.onNotification(handler),
      send: (text, params, rowMode, callback) => {
        this.inspect(text)
        send(text, params, rowMode, callback)
      },
      ...(sendAfter === undefined ? {} : {
        sendAfter: (prefix, text, params, rowMode, callback) => {
          this.inspect(text)
          sendAfter(prefix, text, params, rowMode, callback)
        }
      } satisfies Pick<Connector.Connection, "sendAfter">),
      cursor: (text, params, rowMode) => {
        this.inspect(text)
        return cursor(text, params, rowMode)
      }
    }
  }
}
