/**
 * A pooled physical connection and its session pipeline: the statements of the fiber that holds it, a
 * transaction's `BEGIN` held back to go out with its first statement, the usage count for `maxUsage`,
 * `queryTimeout`, and the cancel of an interrupted statement, which must settle before the connection sends
 * anything else. Which fields belong to whom: `state`, `idleSince`, `checkedOutAt` to the pool core (changed
 * only by `PoolCore.setState`/`markBusy`/`putIdle`); `lost`, `invalidated`, `settling`, `deferred`, `beginLost`
 * to the session; `leakWatch` to the PgPool service.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import { ConnectionError, QueryError } from "../../PgPoolError.js"
import { unsendableStatement } from "../connector/limits.js"
import type { HostState } from "./hosts.js"

/** @internal */
export type ConnState = "new" | "idle" | "busy" | "checking" | "closing"

/** What every connection of one pool shares: made once per pool. @internal */
export interface SessionEnv {
  /** Statements are counted (in `usage`) only when `maxUsage` is set. */
  readonly counting: boolean
  readonly queryTimeout: number | undefined
  readonly pingTimeout: Duration.Duration
  /** Runs the cancel of an interrupted statement in the background, in the pool's closer fibers. */
  readonly runCloser: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>
}

/**
 * A transaction (or savepoint) open on a connection: while it is, only its members (the fibers running in it,
 * and in the transactions nested in it) may use the connection. @internal
 */
export class TxToken {
  /** It ended (committed or rolled back): a fiber forked inside it that outlived it may not use the connection. */
  ended = false
  /** A statement of its own ended it on the server (a COMMIT or ROLLBACK in its body): see `endedInside`. */
  endedInside = false
  constructor(readonly parent: TxToken | undefined) {}
}

/** A fiber waiting for the connection: for one statement, or (`claim`) to open a transaction on it. */
class Turn {
  granted = false
  done = false
  resume: (() => void) | undefined = undefined
  constructor(readonly member: TxToken | undefined, readonly claim: TxToken | undefined) {}
}

type Callback = (error: QueryError | ConnectionError | undefined, result: Connector.QueryResult | undefined) => void

/**
 * A COMMIT sent on a connection that went on to the next checkout at once (see `Physical.commitBehind`). One is
 * made for every transaction handed over, so it is a plain object and its wait is made only when asked for (an
 * Effect `Deferred` is made by spreading Effect's prototype into a new object: it measured 20 µs more client CPU
 * per transaction, a quarter of a BEGIN/SELECT 1/COMMIT's).
 */
class CommitOut {
  private answered = false
  private waiters: Array<() => void> | undefined = undefined
  /** Completes once the COMMIT has been answered (or failed). */
  get wait(): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.answered) return resume(Effect.void)
      const wake = () => resume(Effect.void)
      ;(this.waiters ??= []).push(wake)
      return Effect.sync(() => {
        this.waiters = this.waiters?.filter((waiter) => waiter !== wake)
      })
    })
  }
  finish(): void {
    this.answered = true
    const waiters = this.waiters
    this.waiters = undefined
    if (waiters !== undefined) { for (const wake of waiters) wake() }
  }
}

/**
 * The statement can go out under the extended protocol (held-back statements before it, or behind others): it has
 * parameters, or its text holds one statement only (a text of several needs the simple protocol).
 */
const extendable = (text: string, params: ReadonlyArray<unknown> | undefined): boolean =>
  (params !== undefined && params.length > 0) || !text.includes(";")

const CANCEL_SETTLE_TIMEOUT = Duration.seconds(5)

/** @internal */
const succeedRows = (result: Connector.QueryResult): Effect.Effect<ReadonlyArray<PgPool.Row>> =>
  Effect.succeed(result.rows)

/** @internal */
export class Physical {
  state: ConnState = "new"
  idleSince: number
  checkedOutAt = 0
  invalidated = false
  lost = false
  /** Why the pool closed it while it was checked out (its close): said in the errors of the statements cut off. */
  closedBy: string | undefined = undefined
  leakWatch: Fiber.RuntimeFiber<void> | undefined = undefined
  /** One-shot statements in flight on it with pipelining (see `PoolCore.pipelines`). */
  oneShots = 0
  /**
   * Statements sent on it so far, counted as they go out when `maxUsage` is set (`usage` counts them as they
   * end, too late to decide whether one more may ride behind those in flight: see `PoolCore.ridable`).
   */
  sent = 0
  /** When its pipeline last moved: its first statement was sent, or one was answered (clock ms). */
  pipelineMoved = 0
  /**
   * How long its pipeline takes per statement answered, a moving average (clock ms); -1 before the first answer.
   * A statement sent behind `n` others waits about `n` times this.
   */
  pipelinePace = -1
  /** The background cancel of an interrupted statement, while it runs. */
  settling: Fiber.RuntimeFiber<void> | undefined = undefined
  /**
   * Statements held back to go out with the next statement on this connection, in the same write: the `BEGIN`
   * of a transaction (see `deferBegin`).
   */
  deferred: ReadonlyArray<string> | undefined = undefined
  /**
   * The held-back BEGIN went out with a statement that failed (a cancel can hit the BEGIN itself) and left no
   * transaction open: the rest of the transaction must not run outside of it.
   */
  beginLost = false
  /**
   * The COMMIT of the transaction that had this connection before, still out: the connection went on to this
   * checkout when it was sent (see `commitBehind`). Until it is answered, statements go out behind it
   * (`Connection.sendBehind`), and the connection is not given back.
   */
  commitOut: CommitOut | undefined = undefined
  /** The last statement sent behind a COMMIT still out, while it runs: its cancel is exact (`cancelAndSettle`). */
  private sentBehind: Connector.InFlight | undefined = undefined
  /**
   * The innermost transaction open on this connection (see `claim`): the fibers that are not its members wait
   * until it ends, so that two transactions never share one on the server.
   */
  owner: TxToken | undefined = undefined
  /** A statement has the connection: the fibers sharing a pinned connection send one statement at a time. */
  private turnHeld = false
  /** The fibers waiting for the connection, in order (a waiter that is not a member of `owner` is passed over). */
  private readonly turns: Array<Turn> = []
  constructor(
    readonly env: SessionEnv,
    readonly driver: Connector.Connection,
    readonly scope: Scope.CloseableScope,
    readonly server: HostState,
    readonly createdAt: number,
    readonly expiresAt: number,
    readonly usage: Ref.Ref<number>
  ) {
    this.idleSince = createdAt
  }

  /** A statement's error, saying why the pool closed the connection under it (`closedBy`), if it did. */
  readonly explain = <E extends QueryError | ConnectionError>(error: E): E =>
    this.closedBy === undefined || error._tag !== "ConnectionError" ? error : new ConnectionError({
      ...error,
      message: `${this.closedBy} (${error.message})`
    }) as E

  /** The connection failed or was closed under us: it can only be closed. */
  get broken(): boolean {
    return this.lost || this.driver.isBroken()
  }

  /**
   * Fibers forked inside the checkout that outlived it still use the connection, wait for it, or hold a
   * transaction open on it: it cannot go to another checkout.
   */
  get shared(): boolean {
    return this.turnHeld || this.turns.length > 0 || this.owner !== undefined
  }

  /** `member` may use the connection now: no transaction is open on it, or `member` runs inside it. */
  private allowed(member: TxToken | undefined): boolean {
    const owner = this.owner
    if (owner === undefined) return true
    for (let token = member; token !== undefined; token = token.parent) if (token === owner) return true
    return false
  }

  /** Hands the connection to the waiters it can go to, in order: a statement's turn, or claims. */
  private grant(): void {
    let i = 0
    while (!this.turnHeld && i < this.turns.length) {
      const turn = this.turns[i]!
      if (!this.allowed(turn.member)) {
        i++
        continue
      }
      this.turns.splice(i, 1)
      turn.granted = true
      if (turn.claim !== undefined) this.owner = turn.claim
      else this.turnHeld = true
      turn.resume!()
    }
  }

  private releaseTurn(): void {
    this.turnHeld = false
    this.grant()
  }

  /** A waiter left (interrupted): out of the queue, or, when it was granted meanwhile, what it got given back. */
  private abandon(turn: Turn): void {
    if (turn.done) return
    turn.done = true
    const index = this.turns.indexOf(turn)
    if (index >= 0) this.turns.splice(index, 1)
    else if (turn.granted) {
      if (turn.claim !== undefined) this.releaseOwner(turn.claim)
      else this.releaseTurn()
    }
  }

  /** Waits (interruptibly, through `restore`) until `turn` is granted, then runs `then`. */
  private await<A, E>(turn: Turn, restore: Restore, then: Effect.Effect<A, E>): Effect.Effect<A, E> {
    const wait = Effect.async<void>((resume) => {
      turn.resume = () => resume(Effect.void)
      this.turns.push(turn)
      return Effect.sync(() => this.abandon(turn))
    })
    return Effect.matchCauseEffect(restore(wait), {
      onFailure: (cause) => {
        this.abandon(turn)
        return Effect.failCause(cause)
      },
      onSuccess: () => {
        turn.done = true
        return then
      }
    })
  }

  /**
   * Opens the transaction `token` on this connection for `member` (the transaction the fiber runs in on this
   * connection, if any): once no statement is out and the connection's open transaction, if any, is one
   * `member` runs in. From then until `releaseOwner`, only the fibers of `token` use the connection.
   */
  claim(token: TxToken, member: TxToken | undefined, restore: Restore): Effect.Effect<void> {
    if (!this.turnHeld && this.allowed(member)) {
      this.owner = token
      return Effect.void
    }
    return this.await(new Turn(member, token), restore, Effect.void)
  }

  /** The transaction `token` ended: the connection goes back to the transaction it was opened in. */
  releaseOwner(token: TxToken): void {
    token.ended = true
    if (this.owner !== token) return
    this.owner = token.parent
    this.grant()
  }

  /**
   * Runs one statement of a fiber that holds the connection (`member`: the transaction it runs in on this
   * connection) and continues with `then`. The fibers sharing the connection take turns, one statement at a
   * time, in order; a fiber outside the transaction open on it waits until it ends. An interrupted statement
   * is cancelled in the background and the next one goes out only once that has settled, so a cancel never
   * hits another fiber's statement; a fiber interrupted while it waits for its turn just leaves the queue.
   */
  runThen<A>(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    then: (result: Connector.QueryResult) => Effect.Effect<A>,
    member: TxToken | undefined
  ): Effect.Effect<A, QueryError | ConnectionError> {
    if (member !== undefined && endedInside(member)) return Effect.fail(endedInsideError())
    if (member?.ended === true) return Effect.fail(endedError())
    if (this.invalidated) return Effect.fail(invalidatedError())
    const unsendable = unsendableStatement(text, params)
    if (unsendable !== undefined) return Effect.fail(unsendable)
    const statement = this.countStatement(
      Effect.uninterruptibleMask((restore) => {
        const send = Effect.matchCauseEffect(
          restore(Effect.async<Connector.QueryResult, QueryError | ConnectionError>((resume) => {
            this.dispatch(text, params, rowMode, (error, result) => {
              resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
            })
          })),
          {
            onFailure: (cause) => {
              if (Cause.isInterrupted(cause)) this.settleInBackground(this.releaser)
              else this.releaseTurn()
              return Effect.failCause(this.closedBy === undefined ? cause : Cause.map(cause, this.explain))
            },
            onSuccess: (result) => {
              this.releaseTurn()
              // the statement ended the transaction it ran in (a COMMIT or ROLLBACK of the body's own): what
              // follows would run outside of any transaction, so it fails, and so does every later statement of it
              if (member !== undefined && this.driver.transactionStatus() === "idle") {
                for (let token: TxToken | undefined = member; token !== undefined; token = token.parent) {
                  token.endedInside = true
                }
                return Effect.fail(endedInsideError())
              }
              return then(result)
            }
          }
        )
        const settled = this.settling === undefined ? send : Effect.zipRight(Fiber.await(this.settling), send)
        if (!this.turnHeld && this.allowed(member)) {
          this.turnHeld = true
          return settled
        }
        return this.await(new Turn(member, undefined), restore, settled)
      })
    )
    return this.env.queryTimeout === undefined ? statement : withQueryTimeout(statement, this.env.queryTimeout)
  }

  private readonly releaser = (): void => this.releaseTurn()

  rows(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    member: TxToken | undefined
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, QueryError | ConnectionError> {
    return this.runThen(text, params, undefined, succeedRows, member)
  }

  /**
   * A statement run where nothing can interrupt it (the transaction control statements: BEGIN, COMMIT,
   * ROLLBACK, SAVEPOINT), in its turn (`member`: see `runThen`), after the cancel of an interrupted statement,
   * if one is out, has settled.
   */
  control(
    text: string,
    member: TxToken | undefined
  ): Effect.Effect<Connector.QueryResult, QueryError | ConnectionError> {
    if (member !== undefined && endedInside(member)) {
      // a statement of its body ended the transaction on the server: nothing is left to roll back (ROLLBACK,
      // ROLLBACK TO), nor to commit, save or release
      return text.startsWith("ROLLBACK")
        ? Effect.succeed({ rows: [], fields: [], command: "ROLLBACK", rowCount: null })
        : Effect.fail(endedInsideError())
    }
    const inTurn = Effect.ensuring(this.controlInTurn(text), Effect.sync(this.releaser))
    if (!this.turnHeld && this.allowed(member)) {
      this.turnHeld = true
      return inTurn
    }
    return Effect.uninterruptibleMask((restore) => this.await(new Turn(member, undefined), restore, inTurn))
  }

  private controlInTurn(text: string): Effect.Effect<Connector.QueryResult, QueryError | ConnectionError> {
    return Effect.suspend(() => {
      // no transaction is open on the server (its BEGIN was never sent, or did not take effect): nothing to end
      const unsent = this.deferred !== undefined && (text === "COMMIT" || text === "ROLLBACK")
      if (unsent || (this.beginLost && text === "ROLLBACK")) {
        this.deferred = undefined
        this.beginLost = false
        return Effect.succeed({ rows: [], fields: [], command: text, rowCount: null })
      }
      const send = Effect.async<Connector.QueryResult, QueryError | ConnectionError>((resume) => {
        this.dispatch(text, undefined, undefined, (error, result) => {
          resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
        })
      })
      return this.countStatement(this.settling === undefined ? send : Effect.zipRight(Fiber.await(this.settling), send))
    })
  }

  /**
   * Holds a transaction's `BEGIN` back, to be sent in the same write as the transaction's first statement (one
   * round trip less per transaction; Npgsql does the same). The server runs it first, and a statement is never
   * run when the `BEGIN` before it failed. A transaction that runs no statement sends nothing at all.
   */
  deferBegin(text: string): void {
    this.deferred = this.deferred === undefined ? [text] : [...this.deferred, text]
  }

  /** True when the held-back statements can go out in one write with this statement. */
  canPipeline(text: string, params: ReadonlyArray<unknown> | undefined): boolean {
    // a text without parameters may hold several statements, which the extended protocol cannot carry
    return this.driver.sendAfter !== undefined && extendable(text, params)
  }

  /**
   * Sends `text`, after the held-back statements if there are any: in the same write when the driver and the
   * statement allow it, else one after the other, the statement only once the held-back ones succeeded.
   */
  dispatch(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: Callback
  ): void {
    if (this.beginLost) return callback(beginLostError(), undefined)
    const deferred = this.deferred
    const driver = this.driver
    const checked: Callback = deferred === undefined ? callback : (error, result) => {
      if (error !== undefined) this.noteBeginFailure()
      callback(error, result)
    }
    if (this.commitOut !== undefined && driver.sendBehind !== undefined && extendable(text, params)) {
      this.deferred = undefined
      return this.sendBehind(driver.sendBehind, deferred ?? [], text, params, rowMode, checked)
    }
    if (deferred === undefined) return driver.send(text, params, rowMode, callback)
    this.deferred = undefined
    if (this.canPipeline(text, params)) return driver.sendAfter!(deferred, text, params, rowMode, checked)
    const next = (i: number): void => {
      if (i === deferred.length) return driver.send(text, params, rowMode, checked)
      driver.send(deferred[i]!, undefined, undefined, (error) => {
        if (error !== undefined) checked(error, undefined)
        else next(i + 1)
      })
    }
    next(0)
  }

  /** Sends behind the COMMIT still out, keeping the statement's handle for an exact cancel while it runs. */
  private sendBehind(
    sendBehind: NonNullable<Connector.Connection["sendBehind"]>,
    prefix: ReadonlyArray<string>,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: Callback
  ): void {
    let answered = false
    const handle = sendBehind(prefix, text, params, rowMode, (error, result) => {
      answered = true
      if (this.sentBehind === handle) this.sentBehind = undefined
      callback(error, result)
    })
    if (!answered) this.sentBehind = handle
  }

  /**
   * Sends `COMMIT` without waiting for its answer, so that the connection can go to the next checkout at once:
   * that checkout's first statement goes out behind it, in the same write (see `Connection.sendBehind`).
   * `callback` gets the COMMIT's outcome; the server runs what follows the COMMIT whatever that is (a failed
   * COMMIT ends its transaction too).
   */
  commitBehind(callback: Callback): void {
    const out = new CommitOut()
    this.commitOut = out
    this.driver.send("COMMIT", undefined, undefined, (error, result) => {
      if (this.commitOut === out) this.commitOut = undefined
      out.finish()
      callback(error, result)
    })
  }

  /** Nothing else uses the connection now: no statement of another fiber is out or waiting for its turn. */
  get alone(): boolean {
    return !this.turnHeld && this.turns.length === 0
  }

  /** Held-back statements went out and something failed: if that left no transaction open, remember it. */
  noteBeginFailure(): void {
    if (this.driver.transactionStatus() === "idle") this.beginLost = true
  }

  /** Sends the held-back statements on their own (before a cursor), each in a turn of `member`'s. */
  flush(member: TxToken | undefined): Effect.Effect<void, QueryError | ConnectionError> {
    return Effect.suspend(() => {
      const deferred = this.deferred
      if (deferred === undefined) return Effect.void
      this.deferred = undefined
      return Effect.forEach(deferred, (text) => this.control(text, member), { discard: true }).pipe(
        Effect.tapError(() => Effect.sync(() => this.noteBeginFailure()))
      )
    })
  }

  /** Counts the statement (and the held-back ones that go out with it) when `maxUsage` is set. */
  countStatement<A, E, R>(statement: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    if (!this.env.counting) return statement
    return Effect.suspend(() => {
      const count = 1 + (this.deferred?.length ?? 0)
      this.sent += count
      return Effect.zipRight(Ref.update(this.usage, (n) => n + count), statement)
    })
  }

  /**
   * Sends a CancelRequest for the statement running on this connection and waits until the driver has seen
   * the end of it. A statement that does not settle within the bound gets its connection closed, which ends it.
   */
  get cancelAndSettle(): Effect.Effect<void> {
    if (!this.driver.isBusy()) return Effect.void
    // a statement behind a COMMIT still out: cancelled exactly (a CancelRequest now could reach the COMMIT)
    const cancel = this.sentBehind?.cancel ?? this.driver.cancel
    return Effect.interruptible(Effect.zipRight(cancel, this.driver.awaitIdle)).pipe(
      Effect.timeoutFail({ duration: CANCEL_SETTLE_TIMEOUT, onTimeout: () => "unsettled" as const }),
      Effect.catchAll(() => {
        this.lost = true
        return Scope.close(this.scope, Exit.void)
      })
    )
  }

  /**
   * The fiber running a statement was interrupted: cancel the statement in the background, so the
   * interruption is not held up by the network. The connection is not reused until the cancel has settled.
   */
  settleInBackground(then?: () => void): void {
    if (this.settling !== undefined || !this.driver.isBusy()) return then?.()
    this.settling = this.env.runCloser(
      Effect.ensuring(
        this.cancelAndSettle,
        Effect.sync(() => {
          this.settling = undefined
          then?.()
        })
      )
    )
  }

  /** A server-side cursor over the rows of `text` (send the held-back statements first: `flush`). */
  cursor(text: string, params: ReadonlyArray<unknown> | undefined): Connector.Cursor {
    return this.driver.cursor(text, params, undefined)
  }

  /** Closes the connection instead of returning it (psycopg2's `putconn(close=True)`). */
  get invalidate(): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.invalidated) return Effect.void
      this.invalidated = true
      return Effect.uninterruptible(Scope.close(this.scope, Exit.void))
    })
  }

  /** Runs `select 1` within the health check's timeout: true if it answered (else the connection is lost). */
  get ping(): Effect.Effect<boolean> {
    return Effect.interruptible(Connector.query(this.driver, "select 1")).pipe(
      Effect.timeout(this.env.pingTimeout),
      Effect.match({
        onFailure: () => {
          this.lost = true
          return false
        },
        onSuccess: () => true
      })
    )
  }
}

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

const withQueryTimeout = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  timeout: number
): Effect.Effect<A, E | QueryError, R> =>
  Effect.catchTag(
    Effect.timeout(effect, timeout),
    "TimeoutException",
    () =>
      Effect.fail(
        new QueryError({
          message: `Statement cancelled: it ran longer than queryTimeout (${timeout} ms) (SQLSTATE 57014)`,
          code: "57014"
        })
      )
  )

/** @internal */
export const endedError = (): QueryError =>
  new QueryError({
    message:
      "The transaction this statement belongs to has ended (a fiber forked inside it outlived it): the statement is refused so that it cannot run outside of it (SQLSTATE 25P01)",
    code: "25P01"
  })

/** A statement on a connection its borrower invalidated: it is closed, and says so rather than "Client was closed". */
const invalidatedError = (): ConnectionError =>
  new ConnectionError({
    message: "This connection was invalidated (conn.invalidate): it is closed, and the statement was not sent; " +
      "check out another",
    safeToRetry: true
  })

/** Whether a statement of `token`'s body, or of a transaction it is nested in, ended the transaction. */
const endedInside = (token: TxToken): boolean => {
  for (let t: TxToken | undefined = token; t !== undefined; t = t.parent) if (t.endedInside) return true
  return false
}

/** A statement of a transaction's body ended the transaction on the server (see `runThen`). */
const endedInsideError = (): QueryError =>
  new QueryError({
    message: "A statement ended the transaction it ran in (a COMMIT or ROLLBACK in the transaction's body): what " +
      "ran before it was committed or rolled back by it, and the transaction's later statements are refused, as " +
      "they would run outside of it. A transaction ends when its body does: it commits when the body succeeds, " +
      "and rolls back when it fails (SQLSTATE 25000)",
    code: "25000"
  })

const beginLostError = (): QueryError =>
  new QueryError({
    message:
      "The transaction's BEGIN did not take effect (it failed or was cancelled with its first statement): the rest of the transaction is refused so that it cannot run outside of it (SQLSTATE 25P01)",
    code: "25P01"
  })
