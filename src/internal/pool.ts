/**
 * The pool core: a bounded set of physical connections with a FIFO waiter queue, written from Effect
 * primitives. All bookkeeping is synchronous JavaScript run inside Effect steps (one thread, so a step is
 * atomic with respect to other fibers); only connecting, resetting, pinging and closing are effects, and
 * they run in fibers of the pool's own FiberSets.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as FiberSet from "effect/FiberSet"
import { globalValue } from "effect/GlobalValue"
import * as Option from "effect/Option"
import type * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as Connector from "../Connector.js"
import type * as PgPool from "../PgPool.js"
import { ConnectionError, PoolClosedError, PoolExhaustedError, QueryError } from "../PgPoolError.js"
import type { PoolError } from "../PgPoolError.js"
import * as config_ from "./config.js"
import * as Metrics from "./metrics.js"
import { type ReadPool, Router } from "./router.js"
import * as Tracing from "./tracing.js"
import {
  type HostPolicy,
  type HostState,
  mainPolicy,
  queryRole,
  type ServerRole,
  standbyPolicy,
  Topology
} from "./topology.js"
import type { PoolMetrics } from "./metrics.js"

/** @internal */
export const CoreId: unique symbol = Symbol.for("effect-pg-pool/PgPool/core")

/** @internal */
export const tag: Context.Tag<PgPool.PgPool, PgPool.PgPool> = Context.GenericTag<PgPool.PgPool>("effect-pg-pool/PgPool")

/**
 * `PgPool.query` as one step: find the pool in the context and the pinned connection, if any (and, only when a
 * tracer is installed, make its span).
 *
 * @internal
 */
export const query = (
  text: string,
  params?: ReadonlyArray<unknown>
): Effect.Effect<ReadonlyArray<PgPool.Row>, PoolError | QueryError, PgPool.PgPool> =>
  Effect.withFiberRuntime((fiber) => {
    const service = Context.unsafeGet(fiber.currentContext, tag)
    const core = (service as { readonly [CoreId]?: PoolCore })[CoreId]
    return core === undefined ? service.query(text, params) : core.queryOn(fiber, text, params)
  })

/**
 * True inside `PgPool.readOnly`: the work may run on a standby.
 *
 * @internal
 */
export const currentReadOnly: FiberRef.FiberRef<boolean> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentReadOnly"),
  () => FiberRef.unsafeMake(false)
)

/** @internal */
export const TypeId: PgPool.TypeId = Symbol.for("effect-pg-pool/PgPool") as PgPool.TypeId

type ConnState = "idle" | "busy" | "checking" | "closing"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** @internal */
export class Physical {
  state: ConnState = "busy"
  idleSince: number
  invalidated = false
  lost = false
  leakWatch: Fiber.RuntimeFiber<void> | undefined = undefined
  /** The background cancel of an interrupted statement, while it runs. */
  settling: Fiber.RuntimeFiber<void> | undefined = undefined
  checkedOutAt = 0
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
  constructor(
    readonly id: number,
    readonly driver: Connector.Connection,
    readonly scope: Scope.CloseableScope,
    readonly server: HostState,
    readonly createdAt: number,
    readonly expiresAt: number,
    readonly usage: Ref.Ref<number>
  ) {
    this.idleSince = createdAt
  }
}

/**
 * A fiber (or a one-shot statement) queued for a connection. The queue is an intrusive doubly linked list,
 * so a waiter that times out or is interrupted leaves it in O(1).
 *
 * @internal
 */
export interface Waiter {
  readonly enqueuedAt: number
  readonly deadline: number
  prev: Waiter | undefined
  next: Waiter | undefined
  settled: boolean
  deliver(conn: Physical): void
  fail(error: PoolError): void
}

class CheckoutWaiter implements Waiter {
  prev: Waiter | undefined = undefined
  next: Waiter | undefined = undefined
  settled = false
  conn: Physical | undefined = undefined
  constructor(
    readonly resume: (effect: Effect.Effect<Physical, PoolError>) => void,
    readonly enqueuedAt: number,
    readonly deadline: number
  ) {}
  deliver(conn: Physical): void {
    this.conn = conn
    this.resume(Effect.succeed(conn))
  }
  fail(error: PoolError): void {
    this.resume(Effect.fail(error))
  }
}

const enum OpState {
  /** Not registered yet: the fiber may be interrupted before the wait even starts. */
  Pending,
  Waiting,
  Running,
  Done,
  /** Answered, and the connection already given back (by the driver's callback): `releasing` is what is left. */
  Released,
  Finished
}

/**
 * A one-shot statement: waits for a connection (if none is idle) and sends the statement the moment one is
 * handed over, all in one suspension of the calling fiber. A statement that succeeded gives its connection back
 * in the driver's callback, so the next waiter's statement goes out in the same turn of the event loop (as
 * pg.Pool does); the fiber then resumes with the op.
 *
 * @internal
 */
export class QueryOp<A = unknown> implements Waiter {
  prev: Waiter | undefined = undefined
  next: Waiter | undefined = undefined
  settled = false
  enqueuedAt = 0
  deadline = 0
  state = OpState.Pending
  conn: Physical | undefined = undefined
  error: QueryError | ConnectionError | undefined = undefined
  result: Connector.QueryResult | undefined = undefined
  resume: ((effect: Effect.Effect<QueryOp<A>, PoolError>) => void) | undefined = undefined
  releasing: Effect.Effect<void> = Effect.void
  constructor(
    readonly core: PoolCore,
    readonly text: string,
    readonly params: ReadonlyArray<unknown> | undefined,
    readonly rowMode: "array" | undefined,
    readonly project: (result: Connector.QueryResult) => A,
    readonly retry: boolean,
    readonly restore: Restore,
    /** The span of `PgPool.query`, when a tracer is installed. */
    readonly span: Tracer.Span | undefined
  ) {}
  /** The handlers of the wait (the op is its own `matchCauseEffect` options, to save allocations). */
  readonly onFailure = (cause: Cause.Cause<PoolError>): Effect.Effect<never, PoolError> =>
    Effect.zipRight(this.abandon(), Effect.failCause(cause))
  readonly onSuccess = (): Effect.Effect<A, PoolError | QueryError> => this.core.complete(this)
  readonly register = (resume: (effect: Effect.Effect<QueryOp<A>, PoolError>) => void): void => {
    this.resume = resume
    if (this.conn !== undefined) {
      this.send(this.conn)
    } else {
      this.state = OpState.Waiting
      this.core.enqueue(this)
    }
  }
  deliver(conn: Physical): void {
    this.conn = conn
    if (this.span !== undefined) this.core.traceCheckout(this.span, conn, conn.checkedOutAt - this.enqueuedAt)
    this.send(conn)
  }
  fail(error: PoolError): void {
    this.state = OpState.Finished
    this.resume!(Effect.fail(error))
  }
  send(conn: Physical): void {
    this.state = OpState.Running
    conn.driver.send(this.text, this.params, this.rowMode, this.onResult)
  }
  readonly onResult = (
    error: QueryError | ConnectionError | undefined,
    result: Connector.QueryResult | undefined
  ): void => {
    if (this.state !== OpState.Running) return
    this.error = error
    this.result = result
    // resumed first (the fiber runs later, on the scheduler), so it comes back before the next waiter's fiber
    this.resume!(Effect.succeed(this))
    if (error === undefined && !this.core.counting) {
      this.state = OpState.Released
      this.releasing = this.core.releaseWith(this.conn!, 0)
    } else {
      this.state = OpState.Done
    }
  }
  /**
   * The fiber was interrupted while waiting or while the statement ran: leave the queue, or cancel the
   * statement, let it settle and give the connection back.
   */
  abandon(): Effect.Effect<void> {
    const state = this.state
    this.state = OpState.Finished
    switch (state) {
      case OpState.Pending:
        return this.conn === undefined ? Effect.void : this.core.release(this.conn)
      case OpState.Waiting:
        return this.core.cancelWaiter(this)
      case OpState.Running:
        this.core.settleInBackground(this.conn!)
        return this.core.release(this.conn!)
      case OpState.Done:
        return this.core.release(this.conn!)
      case OpState.Released:
        return this.releasing
      case OpState.Finished:
        return Effect.void
    }
  }
}

/** @internal */
export interface Pin {
  readonly core: PoolCore
  readonly handle: Handle
  readonly next: Pin | undefined
}

/**
 * The connections pinned by `withConnection` for one fiber, innermost first. The box is set on a fiber once
 * (a FiberRef write copies all of the fiber's refs, which costs more than a whole checkout) and then changed in
 * place. It is not inherited: a connection serves one fiber at a time, so a fiber forked inside
 * `withConnection` (including the ones `Effect.timeout`, `Effect.race` and a concurrent `Effect.all` run their
 * effects in) checks out connections of its own. A transaction's pin travels in the context instead
 * (`InheritedPin`), so fibers forked inside a transaction stay in it.
 *
 * @internal
 */
export class PinBox {
  constructor(readonly owner: Fiber.RuntimeFiber<unknown, unknown>, public pins: Pin | undefined) {}
}

const currentPins: FiberRef.FiberRef<PinBox | undefined> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentPins"),
  () => FiberRef.unsafeMake<PinBox | undefined>(undefined, { fork: () => undefined, join: (parent) => parent })
)

/** The box of `fiber`'s pins, made the first time it pins a connection. */
const ownPins = (fiber: Fiber.RuntimeFiber<unknown, unknown>): PinBox => {
  const box = fiber.getFiberRef(currentPins)
  if (box !== undefined && box.owner === fiber) return box
  const own = new PinBox(fiber, undefined)
  setRef(fiber, currentPins, own)
  return own
}

/** Sets a FiberRef of `fiber` in place: only from a step that `fiber` itself runs. */
const setRef = <A>(fiber: Fiber.RuntimeFiber<unknown, unknown>, ref: FiberRef.FiberRef<A>, value: A): void =>
  (fiber as unknown as { setFiberRef<A>(ref: FiberRef.FiberRef<A>, value: A): void }).setFiberRef(ref, value)

/** The pins `fiber` set itself with `withConnection`. */
const pinsSetBy = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Pin | undefined => {
  const box = fiber.getFiberRef(currentPins)
  return box !== undefined && box.owner === fiber ? box.pins : undefined
}

/**
 * The pin of a transaction, in the context of the fibers that run in it (forked ones included).
 *
 * @internal
 */
export const InheritedPin: Context.Tag<Pin, Pin> = Context.GenericTag<Pin>("effect-pg-pool/PgPool/InheritedPin")

/** The pinned connection of `fiber` for `core`'s pool, if any. @internal */
export const pinOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, core: PoolCore): Pin | undefined =>
  findPin(pinsSetBy(fiber), core) ?? findPin(fiber.currentContext.unsafeMap.get(InheritedPin.key), core)

/** The pins of `fiber`, innermost first. @internal */
export const pinsOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Pin | undefined =>
  pinsSetBy(fiber) ?? fiber.currentContext.unsafeMap.get(InheritedPin.key)

/** @internal */
export const findPin = (pins: Pin | undefined, core: PoolCore): Pin | undefined => {
  while (pins !== undefined && pins.core.root !== core.root) pins = pins.next
  return pins
}

const emptyReasons = (): Record<PgPool.CloseReason, number> => ({
  idle: 0,
  lifetime: 0,
  maxUsage: 0,
  maxIdle: 0,
  broken: 0,
  invalidated: 0,
  unpooled: 0,
  reset: 0,
  busy: 0,
  role: 0,
  poolClosed: 0
})

/**
 * Connect failures of a standby's read pool: the work never started, so the router may send it elsewhere.
 *
 * @internal
 */
export const reroutable = new WeakMap<object, PoolCore>()

/** A connect failure of the read pool `target` (also inside the SqlError of the SqlClient). @internal */
export const isReroutable = (target: PoolCore) => (error: unknown): boolean =>
  typeof error === "object" && error !== null &&
  (reroutable.get(error) === target ||
    ("cause" in error && typeof error.cause === "object" && error.cause !== null &&
      reroutable.get(error.cause) === target))

/** Connect failures that settle the round: every host answered and none fits (e.g. no primary). */
const definitive = new WeakSet<ConnectionError>()

const noHostFits = (
  policy: HostPolicy,
  failures: ReadonlyArray<string>,
  last: ConnectionError | undefined,
  answered: boolean
): ConnectionError => {
  const error = new ConnectionError({
    message: `No host fits ${policy.describe}: ${failures.join("; ")}`,
    cause: last,
    host: last?.host,
    port: last?.port,
    database: last?.database
  })
  if (answered) definitive.add(error)
  return error
}

const transientConnectCode = (code: string): boolean =>
  code.startsWith("08") || code.startsWith("53") || code.startsWith("57P")

/**
 * A connect failure worth retrying: network errors and the server's "not now" answers. A wrong password, a
 * missing database, a failing `setSession` statement or a TLS mismatch will not heal by retrying.
 *
 * @internal
 */
export const isTransientConnectError = (error: ConnectionError): boolean => {
  if (definitive.has(error) || error.retryable === false) return false
  if (error.code !== undefined) return transientConnectCode(error.code)
  const cause = error.cause as { readonly code?: unknown; readonly message?: unknown } | undefined
  const code = typeof cause?.code === "string" ? cause.code : ""
  const message = typeof cause?.message === "string" ? cause.message : ""
  return !(code.startsWith("ERR_TLS") || code.startsWith("ERR_SSL") || code.includes("CERT") ||
    /\b(ssl|tls|certificate)\b/i.test(message))
}

const increment = (n: number) => n + 1

/**
 * Hands out `project(result)` once `released` (the return of the connection) has run; a `project` that throws
 * is a defect, and the connection still goes back.
 */
const handOut = <A>(
  project: (result: Connector.QueryResult) => A,
  result: Connector.QueryResult,
  released: Effect.Effect<void>
): Effect.Effect<A> => {
  let value: A
  try {
    value = project(result)
  } catch (defect) {
    return Effect.zipRight(released, Effect.die(defect))
  }
  return released === Effect.void ? Effect.succeed(value) : Effect.as(released, value)
}

/** @internal */
export const rowsOf = (result: Connector.QueryResult): ReadonlyArray<PgPool.Row> => result.rows

const succeedRows = (result: Connector.QueryResult): Effect.Effect<ReadonlyArray<PgPool.Row>> => Effect.succeed(result.rows)

const CANCEL_SETTLE_TIMEOUT = Duration.seconds(5)
/** How long the fiber returning a connection waits for the cancel of its interrupted statement to settle. */
const SETTLE_WAIT = Duration.millis(250)
const RESET_TIMEOUT = Duration.seconds(5)

/**
 * A bounded wait on a path that must finish (returning a connection, closing the pool), with its three
 * outcomes. The wait runs in the timeout's child fiber, which an interruption of the caller reaches even in an
 * uninterruptible region: a wait cut off that way is `cutOff`, not an interruption of the whole path.
 */
const waitWithin = <A, B>(
  wait: Effect.Effect<A>,
  duration: Duration.DurationInput,
  on: {
    readonly done: () => Effect.Effect<B>
    readonly timedOut: () => Effect.Effect<B>
    readonly cutOff: () => Effect.Effect<B>
  }
): Effect.Effect<B> =>
  Effect.interruptible(wait).pipe(
    Effect.timeoutTo({ duration, onSuccess: () => true, onTimeout: () => false }),
    Effect.matchCauseEffect({ onFailure: on.cutOff, onSuccess: (done) => done ? on.done() : on.timedOut() })
  )

/**
 * A checked-out connection as the user sees it.
 *
 * @internal
 */
export class Handle implements PgPool.PooledConnection {
  released = false
  readonly backendPid: number
  constructor(readonly core: PoolCore, readonly conn: Physical) {
    this.backendPid = conn.driver.backendPid
  }
  readonly query = (
    text: string,
    params?: ReadonlyArray<unknown>
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, QueryError | ConnectionError> =>
    Effect.suspend(() =>
      this.released ? Effect.fail(this.core.usedAfterRelease(this)) : this.core.rows(this.conn, text, params)
    )
  get invalidate(): Effect.Effect<void> {
    return Effect.suspend(() => this.released ? Effect.void : this.core.invalidate(this.conn))
  }
}

/** @internal */
export class PoolCore {
  readonly idle: Array<Physical> = []
  readonly all = new Set<Physical>()
  head: Waiter | undefined = undefined
  tail: Waiter | undefined = undefined
  waiting = 0
  size = 0
  /** Start times of the connects in flight. */
  readonly connects = new Set<{ readonly startedAt: number }>()
  get pending(): number {
    return this.connects.size
  }
  closing = 0
  checking = 0
  inUse = 0
  closed = false
  nextId = 1
  created = 0
  closedTotal = 0
  readonly closedByReason = emptyReasons()
  acquired = 0
  timeouts = 0
  connectFailures = 0
  consecutiveFailures = 0
  lastFailureAt = 0
  lastConnectError: ConnectionError | undefined = undefined
  timerWake: ((effect: Effect.Effect<void>) => void) | undefined = undefined
  drained: Deferred.Deferred<void> | undefined = undefined
  readonly metrics: PoolMetrics | undefined
  /** The attributes of this pool's spans that never change (see `Tracing.poolAttributes`). */
  readonly spanAttributes: Tracing.Attributes

  /** The pool this one belongs to: itself, or the pool for ordinary work when this one serves reads. */
  root: PoolCore = this
  /** True for the read pool of a standby: its connect failures go back to the router, which picks again. */
  get forReads(): boolean {
    return this.root !== this
  }
  /** Read routing over standbys, on the root pool of several hosts. */
  router: Router | undefined = undefined

  constructor(
    readonly config: config_.ResolvedConfig,
    readonly connector: Connector.Connector,
    readonly clock: Clock.Clock,
    readonly random: Random.Random,
    readonly runBackground: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>,
    readonly runCloser: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>,
    readonly policy: HostPolicy,
    readonly topology: Topology | undefined
  ) {
    this.metrics = config.metrics
      ? Metrics.make(config.name, { max: config.maxConnections, idleMax: config.maxIdle, idleMin: config.minConnections })
      : undefined
    this.spanAttributes = Tracing.poolAttributes(config)
  }

  /** False when the server of `conn` no longer fits this pool (roles changed at a failover). */
  fits(conn: Physical): boolean {
    const keeps = this.policy.keeps
    return keeps === undefined || keeps(conn.server)
  }

  /**
   * Sets the gauges (connections by state, pending requests) to the current state; called at every change, so
   * the metrics are never stale. Connections being opened count in neither state.
   */
  updateGauges(): void {
    if (this.metrics === undefined) return
    const idle = this.idle.length
    this.metrics.setCounts(idle, this.size - idle - this.connects.size, this.waiting)
  }

  // ---------------------------------------------------------------------------------------------
  // statements
  // ---------------------------------------------------------------------------------------------

  /** Runs one statement on a connection this fiber holds; an interrupted statement is cancelled. */
  run(
    conn: Physical,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode?: "array" | undefined
  ): Effect.Effect<Connector.QueryResult, QueryError | ConnectionError> {
    return this.runThen(conn, text, params, rowMode, Effect.succeed)
  }

  /** Runs one statement on a connection this fiber holds and continues with `then`; an interrupted statement is cancelled. */
  runThen<A>(
    conn: Physical,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    then: (result: Connector.QueryResult) => Effect.Effect<A>
  ): Effect.Effect<A, QueryError | ConnectionError> {
    const statement = this.countStatement(
      conn,
      Effect.uninterruptibleMask((restore) => {
        const send = Effect.matchCauseEffect(
          restore(Effect.async<Connector.QueryResult, QueryError | ConnectionError>((resume) => {
            this.dispatch(conn, text, params, rowMode, (error, result) => {
              resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
            })
          })),
          {
            onFailure: (cause) => {
              if (Cause.isInterrupted(cause)) this.settleInBackground(conn)
              return Effect.failCause(cause)
            },
            onSuccess: then
          }
        )
        return conn.settling === undefined ? send : Effect.zipRight(Fiber.await(conn.settling), send)
      })
    )
    return this.config.queryTimeout === undefined ? statement : this.withQueryTimeout(statement)
  }

  /**
   * A statement run where nothing can interrupt it (the transaction control statements: BEGIN, COMMIT,
   * ROLLBACK, SAVEPOINT), after the cancel of an interrupted statement, if one is out, has settled.
   */
  control(conn: Physical, text: string): Effect.Effect<Connector.QueryResult, QueryError | ConnectionError> {
    return Effect.suspend(() => {
      // no transaction is open on the server (its BEGIN was never sent, or did not take effect): nothing to end
      const unsent = conn.deferred !== undefined && (text === "COMMIT" || text === "ROLLBACK")
      if (unsent || (conn.beginLost && text === "ROLLBACK")) {
        conn.deferred = undefined
        conn.beginLost = false
        return Effect.succeed({ rows: [], fields: [], command: text, rowCount: null })
      }
      const send = Effect.async<Connector.QueryResult, QueryError | ConnectionError>((resume) => {
        this.dispatch(conn, text, undefined, undefined, (error, result) => {
          resume(error === undefined ? Effect.succeed(result!) : Effect.fail(error))
        })
      })
      return this.countStatement(
        conn,
        conn.settling === undefined ? send : Effect.zipRight(Fiber.await(conn.settling), send)
      )
    })
  }

  /**
   * Holds a transaction's `BEGIN` back, to be sent in the same write as the transaction's first statement (one
   * round trip less per transaction; Npgsql does the same). The server runs it first, and a statement is never
   * run when the `BEGIN` before it failed. A transaction that runs no statement sends nothing at all.
   */
  deferBegin(conn: Physical, text: string): void {
    conn.deferred = conn.deferred === undefined ? [text] : [...conn.deferred, text]
  }

  /** True when the held-back statements can go out in one write with this statement. */
  canPipeline(conn: Physical, text: string, params: ReadonlyArray<unknown> | undefined): boolean {
    // a text without parameters may hold several statements, which the extended protocol cannot carry
    return conn.driver.sendAfter !== undefined && ((params !== undefined && params.length > 0) || !text.includes(";"))
  }

  /**
   * Sends `text`, after the held-back statements if there are any: in the same write when the driver and the
   * statement allow it, else one after the other, the statement only once the held-back ones succeeded.
   */
  dispatch(
    conn: Physical,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    callback: (error: QueryError | ConnectionError | undefined, result: Connector.QueryResult | undefined) => void
  ): void {
    if (conn.beginLost) return callback(this.beginLostError(), undefined)
    const deferred = conn.deferred
    if (deferred === undefined) return conn.driver.send(text, params, rowMode, callback)
    conn.deferred = undefined
    const driver = conn.driver
    const checked = (error: QueryError | ConnectionError | undefined, result: Connector.QueryResult | undefined) => {
      if (error !== undefined) this.noteBeginFailure(conn)
      callback(error, result)
    }
    if (this.canPipeline(conn, text, params)) return driver.sendAfter!(deferred, text, params, rowMode, checked)
    const next = (i: number): void => {
      if (i === deferred.length) return driver.send(text, params, rowMode, checked)
      driver.send(deferred[i]!, undefined, undefined, (error) => {
        if (error !== undefined) checked(error, undefined)
        else next(i + 1)
      })
    }
    next(0)
  }

  /** Held-back statements went out and something failed: if that left no transaction open, remember it. */
  noteBeginFailure(conn: Physical): void {
    if (conn.driver.transactionStatus() === "idle") conn.beginLost = true
  }

  beginLostError(): QueryError {
    return new QueryError({
      message:
        "The transaction's BEGIN did not take effect (it failed or was cancelled with its first statement): the rest of the transaction is refused so that it cannot run outside of it (SQLSTATE 25P01)",
      code: "25P01"
    })
  }

  /** Sends the held-back statements on their own (before a cursor, or a statement that cannot carry them). */
  flush(conn: Physical): Effect.Effect<void, QueryError | ConnectionError> {
    return Effect.suspend(() => {
      const deferred = conn.deferred
      if (deferred === undefined) return Effect.void
      conn.deferred = undefined
      return Effect.forEach(deferred, (text) => this.control(conn, text), { discard: true }).pipe(
        Effect.tapError(() => Effect.sync(() => this.noteBeginFailure(conn)))
      )
    })
  }

  /**
   * Statements are counted in the connection's `Ref` when `maxUsage` is set (with no limit there is nothing
   * to count for, and the hot path stays without the extra steps).
   */
  get counting(): boolean {
    return this.config.maxUsage !== Infinity
  }

  countStatement<A, E, R>(conn: Physical, statement: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    if (!this.counting) return statement
    // held-back statements that go out with this one count too, as when they are sent on their own
    return Effect.zipRight(Ref.update(conn.usage, (n) => n + 1 + (conn.deferred?.length ?? 0)), statement)
  }

  withQueryTimeout<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | QueryError, R> {
    const timeout = this.config.queryTimeout!
    return Effect.catchTag(
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
  }

  rows(
    conn: Physical,
    text: string,
    params: ReadonlyArray<unknown> | undefined
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, QueryError | ConnectionError> {
    return this.runThen(conn, text, params, undefined, succeedRows)
  }

  /**
   * Sends a CancelRequest for the statement running on `conn` and waits until the driver has seen the end of
   * it. A statement that does not settle within the bound gets its connection closed, which ends it.
   */
  cancelAndSettle(conn: Physical): Effect.Effect<void> {
    if (!conn.driver.isBusy()) return Effect.void
    return Effect.interruptible(Effect.zipRight(conn.driver.cancel, conn.driver.awaitIdle)).pipe(
      Effect.timeoutFail({ duration: CANCEL_SETTLE_TIMEOUT, onTimeout: () => "unsettled" as const }),
      Effect.catchAll(() => {
        conn.lost = true
        return Scope.close(conn.scope, Exit.void)
      })
    )
  }

  /**
   * The fiber running a statement was interrupted: cancel the statement in the background, so the
   * interruption is not held up by the network. The connection is not reused until the cancel has settled.
   */
  settleInBackground(conn: Physical): void {
    if (conn.settling !== undefined || !conn.driver.isBusy()) return
    conn.settling = this.runCloser(
      Effect.ensuring(
        this.cancelAndSettle(conn),
        Effect.sync(() => {
          conn.settling = undefined
        })
      )
    )
  }

  usedAfterRelease(handle: Handle): ConnectionError {
    return new ConnectionError({
      message:
        `Connection used after it was returned to the pool (backend ${handle.backendPid}): keep the Scope of PgPool.connection open while you use it`
    })
  }

  invalidate(conn: Physical): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (conn.invalidated) return Effect.void
      conn.invalidated = true
      return Effect.uninterruptible(Scope.close(conn.scope, Exit.void))
    })
  }

  // ---------------------------------------------------------------------------------------------
  // checkout
  // ---------------------------------------------------------------------------------------------

  /** Pops a usable idle connection (closing dead and expired ones on the way); the caller owns it. */
  takeIdle(now: number): Physical | undefined {
    let conn: Physical | undefined
    while ((conn = this.idle.pop()) !== undefined) {
      if (conn.lost || conn.driver.isBroken()) {
        this.closeDetached(conn, "broken")
      } else if (now >= conn.expiresAt) {
        this.closeDetached(conn, "lifetime")
      } else if (!this.fits(conn)) {
        this.closeDetached(conn, "role")
      } else {
        return conn
      }
    }
    return undefined
  }

  needsPing(conn: Physical, now: number): boolean {
    const health = this.config.healthCheck
    return health.enabled && now - conn.idleSince >= health.idleThreshold
  }

  markBusy(conn: Physical, now: number, waited: number): void {
    conn.state = "busy"
    conn.checkedOutAt = now
    this.inUse++
    this.acquired++
    if (this.metrics !== undefined) {
      this.metrics.waitTime(waited)
      this.updateGauges()
    }
  }

  /** Why a checkout that found no idle connection must fail at once, if it must. */
  refusal(): Effect.Effect<never, PoolExhaustedError> | undefined {
    const config = this.config
    if (!config.blocking && this.size + this.closing >= config.maxConnections) return this.refuse("maxConnections")
    if (config.maxWaiting !== Infinity && this.waitingForBusy() >= config.maxWaiting) return this.refuse("maxWaiting")
    return undefined
  }

  /**
   * The waiters that no connect, in flight or one the pool may still start, will serve: those waiting for a
   * busy connection to come back. `maxWaiting` bounds these; a checkout the pool can open a connection for
   * does not count against it.
   */
  waitingForBusy(): number {
    const room = Math.max(0, this.config.maxConnections - this.size - this.closing)
    return this.waiting - this.pending - room
  }

  /** Takes a connection. Must run in an uninterruptible region; only the wait is made interruptible. */
  checkout(restore: Restore): Effect.Effect<Physical, PoolError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(this.closedError())
      const now = this.clock.unsafeCurrentTimeMillis()
      const conn = this.takeIdle(now)
      if (conn !== undefined) {
        if (this.needsPing(conn, now)) {
          return Effect.flatMap(this.validate(conn), (alive) => alive ? Effect.succeed(conn) : this.checkout(restore))
        }
        this.markBusy(conn, now, 0)
        return Effect.succeed(conn)
      }
      return this.refusal() ?? this.waitThen(restore, now, Effect.succeed)
    })
  }

  /** Queues for a connection (the wait is the only interruptible part) and continues with `then`. */
  waitThen<A, E, R>(
    restore: Restore,
    now: number,
    then: (conn: Physical) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | PoolError, R> {
    let waiter: CheckoutWaiter | undefined
    return Effect.matchCauseEffect(
      restore(Effect.async<Physical, PoolError>((resume) => {
        waiter = new CheckoutWaiter(resume, now, now + this.config.acquireTimeout)
        this.enqueue(waiter)
      })),
      {
        onFailure: (cause) =>
          waiter === undefined
            ? Effect.failCause(cause)
            : Effect.zipRight(this.cancelWaiter(waiter), Effect.failCause(cause)),
        onSuccess: then
      }
    )
  }

  /**
   * Pings a connection taken from the idle list; true (and checked out) if it answered. A ping cut off by an
   * interruption leaves a statement on the connection, so the connection is closed.
   */
  validate(conn: Physical): Effect.Effect<boolean> {
    conn.state = "checking"
    this.checking++
    return this.checked(conn, (now) => this.markBusy(conn, now, 0))
  }

  /**
   * Pings a connection in the "checking" state and settles it on every exit: `onAlive` takes it when it
   * answered (and the pool is open); otherwise (no answer, or the ping cut off by an interruption, which leaves a
   * statement on it) it is closed. True when it answered.
   */
  checked(conn: Physical, onAlive: (now: number) => void): Effect.Effect<boolean> {
    let alive = false
    return Effect.onExit(this.ping(conn), (exit) => {
      this.checking--
      const answered = Exit.isSuccess(exit) && exit.value
      alive = answered && !this.closed
      if (alive) onAlive(this.clock.unsafeCurrentTimeMillis())
      else this.closeDetached(conn, answered ? "poolClosed" : "broken")
      return Effect.void
    }).pipe(Effect.map(() => alive))
  }

  /** The keepalive of an idle connection (maintenance): back to the idle list if it answered, else closed. */
  keepAlive(conn: Physical): Effect.Effect<void> {
    return Effect.uninterruptible(Effect.suspend(() => {
      if (conn.state !== "idle" || this.closed) return Effect.void
      this.removeIdle(conn)
      conn.state = "checking"
      this.checking++
      return Effect.asVoid(this.checked(conn, (now) => {
        if (!this.deliver(conn, now)) this.putIdle(conn, now)
      }))
    }))
  }

  /** Puts a connection nobody waits for on the idle list. */
  putIdle(conn: Physical, now: number): void {
    conn.state = "idle"
    conn.idleSince = now
    this.idle.push(conn)
    this.updateGauges()
  }

  /** Runs `select 1` on `conn` within the health check's timeout: true if it answered. */
  ping(conn: Physical): Effect.Effect<boolean> {
    return Effect.interruptible(Connector.query(conn.driver, "select 1")).pipe(
      Effect.timeout(this.config.healthCheck.timeout),
      Effect.match({
        onFailure: () => {
          conn.lost = true
          return false
        },
        onSuccess: () => true
      })
    )
  }

  enqueue(waiter: Waiter & { enqueuedAt: number; deadline: number }): void {
    if (waiter.enqueuedAt === 0) {
      const now = this.clock.unsafeCurrentTimeMillis()
      waiter.enqueuedAt = now
      waiter.deadline = now + this.config.acquireTimeout
    }
    waiter.prev = this.tail
    if (this.tail === undefined) this.head = waiter
    else this.tail.next = waiter
    this.tail = waiter
    this.waiting++
    this.updateGauges()
    if (this.timerWake !== undefined && waiter.deadline !== Infinity) {
      const wake = this.timerWake
      this.timerWake = undefined
      wake(Effect.void)
    }
    this.fill()
  }

  refuse(reason: "maxConnections" | "maxWaiting"): Effect.Effect<never, PoolExhaustedError> {
    const error = new PoolExhaustedError({ reason, stats: this.snapshot() })
    return Effect.zipRight(this.logLimit(error), Effect.fail(error))
  }

  lastLimitLog = -Infinity
  suppressedLimitLogs = 0

  /** The annotations of every log line about one connection: the pool, the server, the backend. */
  connectionLog(conn: Physical): Record<string, unknown> {
    return {
      pool: this.config.name,
      host: conn.server.host.host,
      port: conn.server.host.port,
      backendPid: conn.driver.backendPid
    }
  }

  /** The annotations of a log line about a failed connect. */
  failureLog(error: ConnectionError): Record<string, unknown> {
    return { pool: this.config.name, host: error.host ?? "", port: error.port ?? 0, code: error.code ?? "" }
  }

  /** Logs a limit that was hit, at most once a second (with the number of similar events left out). */
  logLimit(error: PoolExhaustedError | ConnectionError): Effect.Effect<void> {
    const now = this.clock.unsafeCurrentTimeMillis()
    if (now - this.lastLimitLog < 1000) {
      this.suppressedLimitLogs++
      return Effect.void
    }
    this.lastLimitLog = now
    const suppressed = this.suppressedLimitLogs
    this.suppressedLimitLogs = 0
    return Effect.logWarning(error.message).pipe(
      Effect.annotateLogs(
        suppressed > 0
          ? { pool: this.config.name, error: error._tag, suppressedSimilar: suppressed }
          : { pool: this.config.name, error: error._tag }
      )
    )
  }

  unlink(waiter: Waiter): void {
    if (waiter.prev === undefined) this.head = waiter.next
    else waiter.prev.next = waiter.next
    if (waiter.next === undefined) this.tail = waiter.prev
    else waiter.next.prev = waiter.prev
    waiter.prev = waiter.next = undefined
    this.waiting--
    this.updateGauges()
  }

  /** An interrupted checkout: leave the queue, or give back the connection handed over meanwhile. */
  cancelWaiter(waiter: Waiter & { readonly conn: Physical | undefined }): Effect.Effect<void> {
    if (!waiter.settled) {
      waiter.settled = true
      this.unlink(waiter)
      return Effect.void
    }
    const conn = waiter.conn
    return conn === undefined ? Effect.void : this.release(conn)
  }

  /** Hands a connection to the first waiter (`now`: the time, when the caller has it at hand). */
  deliver(conn: Physical, now?: number): boolean {
    const waiter = this.head
    if (waiter === undefined) return false
    waiter.settled = true
    this.unlink(waiter)
    if (now === undefined) now = this.clock.unsafeCurrentTimeMillis()
    this.markBusy(conn, now, now - waiter.enqueuedAt)
    waiter.deliver(conn)
    return true
  }

  failHead(error: PoolError): void {
    const waiter = this.head
    if (waiter === undefined) return
    waiter.settled = true
    this.unlink(waiter)
    waiter.fail(error)
  }

  expire(waiter: Waiter, now: number): Effect.Effect<void> {
    waiter.settled = true
    this.unlink(waiter)
    this.timeouts++
    if (this.metrics !== undefined) this.metrics.timeout()
    const waited = now - waiter.enqueuedAt
    const last = this.lastConnectError
    const failing = this.consecutiveFailures > 0 && last !== undefined &&
      (this.pending > 0 || this.lastFailureAt >= waiter.enqueuedAt)
    const host = this.policy.candidates()[0]?.host ?? this.config.hosts[0]!
    const error: PoolError = failing
      ? new ConnectionError({
        message:
          `No connection within the acquire timeout (waited ${waited} ms): connecting kept failing (${this.consecutiveFailures} attempts), last: ${last.message}`,
        cause: last,
        host: last.host,
        port: last.port,
        database: last.database,
        code: last.code,
        attempts: this.consecutiveFailures
      })
      : this.connectingSince(now - waited / 2)
      ? new ConnectionError({
        message: `No connection within the acquire timeout (waited ${waited} ms): opening a connection to ${host.host}:${host.port}/${this.config.database} is still in progress`,
        host: host.host,
        port: host.port,
        database: this.config.database,
        attempts: this.consecutiveFailures
      })
      : new PoolExhaustedError({ reason: "acquireTimeout", stats: this.snapshot(), waitedMillis: waited })
    waiter.fail(error)
    return this.logLimit(error)
  }

  /** The fiber that times out waiters. Waiters share one timeout, so their deadlines grow along the queue. */
  readonly timerLoop: Effect.Effect<never> = Effect.suspend(() => {
    const head = this.head
    if (head === undefined || head.deadline === Infinity) {
      return Effect.async<void>((resume) => {
        this.timerWake = resume
        return Effect.sync(() => {
          this.timerWake = undefined
        })
      })
    }
    const now = this.clock.unsafeCurrentTimeMillis()
    if (head.deadline <= now) return this.expire(head, now)
    return Effect.sleep(head.deadline - now)
  }).pipe(Effect.forever)

  // ---------------------------------------------------------------------------------------------
  // return
  // ---------------------------------------------------------------------------------------------

  /** Gives a connection back: reset it per `reset`, then hand it on, keep it idle, or close it. */
  release(conn: Physical): Effect.Effect<void> {
    return this.counting
      ? Effect.flatMap(Ref.get(conn.usage), (usage) => this.releaseWith(conn, usage))
      : Effect.suspend(() => this.releaseWith(conn, 0))
  }

  releaseWith(conn: Physical, usage: number): Effect.Effect<void> {
    conn.deferred = undefined
    conn.beginLost = false
    if (conn.settling !== undefined) {
      // the cancel of an interrupted statement is still out: wait for it briefly (it takes a round trip on a
      // healthy network), else (or cut off) let the return finish in the background so the caller is not held up
      const settling = conn.settling
      const rest = Effect.suspend(() => this.releaseWith(conn, usage))
      const later = () => {
        this.runCloser(Effect.zipRight(Fiber.await(settling), rest))
        return Effect.void
      }
      return waitWithin(Fiber.await(settling), SETTLE_WAIT, { done: () => rest, timedOut: later, cutOff: later })
    }
    if (conn.leakWatch !== undefined) {
      const watch = conn.leakWatch
      conn.leakWatch = undefined
      return Effect.zipRight(Fiber.interruptFork(watch), this.releaseWith(conn, usage))
    }
    if (conn.invalidated) return this.discard(conn, "invalidated")
    if (conn.lost || conn.driver.isBroken()) return this.discard(conn, "broken")
    if (!this.fits(conn)) return this.discard(conn, "role")
    if (this.closed) return this.discard(conn, "poolClosed")
    if (conn.driver.isBusy()) return this.discard(conn, "busy")
    if (this.config.reset !== "transaction" || conn.driver.transactionStatus() !== "idle") {
      return this.reset(conn, usage)
    }
    return this.checkin(conn, usage)
  }

  reset(conn: Physical, usage: number): Effect.Effect<void> {
    const config = this.config
    const driver = conn.driver
    const statements: Array<string> = []
    if (config.reset !== "transaction" || driver.transactionStatus() !== "idle") statements.push("ROLLBACK")
    if (config.reset === "full") statements.push("DISCARD ALL", ...config.setSession)
    // a reset that failed, timed out or was cut off (the statements run in the timeout's child fiber, which an
    // interruption of the caller reaches even in this uninterruptible region) closes the connection
    return Effect.interruptible(Effect.forEach(statements, (text) => Connector.query(driver, text), { discard: true })).pipe(
      Effect.timeout(RESET_TIMEOUT),
      Effect.matchCauseEffect({
        onFailure: () => this.discard(conn, "reset"),
        onSuccess: () => driver.transactionStatus() === "idle" ? this.checkin(conn, usage) : this.discard(conn, "reset")
      }),
      Effect.uninterruptible
    )
  }

  checkin(conn: Physical, usage: number): Effect.Effect<void> {
    const config = this.config
    if (!config.pooling) return this.discard(conn, "unpooled")
    if (usage >= config.maxUsage) return this.discard(conn, "maxUsage")
    const now = this.clock.unsafeCurrentTimeMillis()
    if (now >= conn.expiresAt) return this.discard(conn, "lifetime")
    if (this.metrics !== undefined) this.metrics.useTime(now - conn.checkedOutAt)
    this.inUse--
    if (this.deliver(conn, now)) return Effect.void
    if (this.idle.length >= config.maxIdle) {
      this.inUse++
      return this.discard(conn, "maxIdle")
    }
    this.putIdle(conn, now)
    if (this.inUse === 0 && this.drained !== undefined) Deferred.unsafeDone(this.drained, Exit.void)
    if (now - this.idle[0]!.idleSince >= config.idleTimeout && this.size > config.minConnections) this.purge(now)
    return Effect.void
  }

  /** Closes a checked-out connection instead of returning it. */
  discard(conn: Physical, reason: PgPool.CloseReason): Effect.Effect<void> {
    if (this.metrics !== undefined) this.metrics.useTime(this.clock.unsafeCurrentTimeMillis() - conn.checkedOutAt)
    this.inUse--
    this.closeDetached(conn, reason)
    if (this.inUse === 0 && this.drained !== undefined) Deferred.unsafeDone(this.drained, Exit.void)
    return Effect.void
  }

  /** Closes a connection that is neither idle nor checked out, in the background. */
  closeDetached(conn: Physical, reason: PgPool.CloseReason): void {
    conn.state = "closing"
    this.size--
    this.closing++
    this.updateGauges()
    this.closedTotal++
    this.closedByReason[reason]++
    this.runCloser(
      Scope.close(conn.scope, Exit.void).pipe(
        Effect.zipRight(Effect.logDebug("connection closed")),
        Effect.annotateLogs({ ...this.connectionLog(conn), reason }),
        Effect.ensuring(Effect.sync(() => {
          this.closing--
          this.all.delete(conn)
          this.fill()
        })),
        Effect.uninterruptible
      )
    )
  }

  removeIdle(conn: Physical): void {
    const index = this.idle.indexOf(conn)
    if (index !== -1) this.idle.splice(index, 1)
  }

  /** Closes idle connections past idleTimeout (down to minConnections) or past their lifetime. */
  purge(now: number): number {
    const config = this.config
    let closed = 0
    for (const conn of this.idle.slice()) {
      if (now >= conn.expiresAt) {
        this.removeIdle(conn)
        this.closeDetached(conn, "lifetime")
        closed++
      } else if (now - conn.idleSince >= config.idleTimeout && this.size > config.minConnections) {
        this.removeIdle(conn)
        this.closeDetached(conn, "idle")
        closed++
      }
    }
    return closed
  }

  // ---------------------------------------------------------------------------------------------
  // connecting
  // ---------------------------------------------------------------------------------------------

  /** Starts connects for waiters not yet covered by one in flight, within maxConnections. */
  fill(): void {
    if (this.closed) return
    let demand = this.waiting - this.pending
    while (demand > 0 && this.size + this.closing < this.config.maxConnections) {
      this.startConnect()
      demand--
    }
  }

  topUp(): void {
    if (this.closed || !this.config.pooling) return
    while (this.size < this.config.minConnections && this.size + this.closing < this.config.maxConnections) {
      this.startConnect()
    }
  }

  needed(): boolean {
    return !this.closed && (this.waiting > 0 || this.size <= this.config.minConnections)
  }

  startConnect(): void {
    const token = this.beginConnect()
    this.runBackground(
      this.openRetrying((error) => !this.forReads && isTransientConnectError(error) && this.needed()).pipe(
        Effect.exit,
        Effect.flatMap((exit) => this.connected(exit, token))
      )
    )
  }

  beginConnect(): { readonly startedAt: number } {
    const token = { startedAt: this.clock.unsafeCurrentTimeMillis() }
    this.size++
    this.connects.add(token)
    this.updateGauges()
    return token
  }

  /**
   * True when a connect that started no later than `time` is still in flight. A waiter that times out while a
   * connect has been running for at least half of its wait waited on the database, not on busy connections.
   */
  connectingSince(time: number): boolean {
    for (const token of this.connects) if (token.startedAt <= time) return true
    return false
  }

  connected(exit: Exit.Exit<Physical, ConnectionError>, token: { readonly startedAt: number }): Effect.Effect<void> {
    this.connects.delete(token)
    this.updateGauges()
    if (Exit.isSuccess(exit)) {
      const conn = exit.value
      if (this.closed) {
        this.closeDetached(conn, "poolClosed")
        return Effect.void
      }
      if (this.deliver(conn)) return Effect.void
      if (this.idle.length >= this.config.maxIdle && this.size > this.config.minConnections) {
        this.closeDetached(conn, "maxIdle")
        return Effect.void
      }
      this.putIdle(conn, this.clock.unsafeCurrentTimeMillis())
      return Effect.void
    }
    this.size--
    this.updateGauges()
    const failure = Cause.failureOption(exit.cause)
    if (Option.isSome(failure)) {
      if (this.forReads) reroutable.set(failure.value, this)
      this.failHead(failure.value)
    }
    this.fill()
    return Effect.void
  }

  /**
   * One connect attempt: try the hosts of the policy in order until one connects (and, where roles matter,
   * is a server that fits), set the session up, wrap the connection.
   */
  readonly open: Effect.Effect<Physical, ConnectionError> = Effect.uninterruptibleMask((restore) =>
    Effect.gen(this, function*() {
      const policy = this.policy
      const startedAt = this.clock.unsafeCurrentTimeMillis()
      const failures: Array<string> = []
      let last: ConnectionError | undefined
      let mismatches = 0
      for (let pass = 0; pass < policy.passes; pass++) {
        for (const state of policy.candidates()) {
          const holder: { conn: Physical | undefined; lost: boolean } = { conn: undefined, lost: false }
          const attempt = yield* restore(this.openOn(state, policy.checkRole, holder)).pipe(Effect.exit)
          if (Exit.isFailure(attempt)) {
            const failure = Cause.failureOption(attempt.cause)
            if (Option.isNone(failure)) return yield* Effect.failCause(attempt.cause)
            last = failure.value
            if (pass === 0) failures.push(last.message)
            this.topology?.markDown(state, last)
            continue
          }
          const { driver, scope, server } = attempt.value
          if (server !== undefined) this.topology?.markUp(state, server)
          if (server !== undefined && !policy.accepts(server, pass)) {
            yield* Scope.close(scope, Exit.void)
            mismatches++
            if (pass === 0) failures.push(`${state.label} is a ${server.role}${server.readOnly ? " (read-only)" : ""}`)
            continue
          }
          return yield* this.wrap(driver, scope, state, holder, startedAt)
        }
      }
      const error = failures.length === 1 && last !== undefined && mismatches === 0
        ? last
        : noHostFits(policy, failures, last, mismatches > 0)
      this.connectFailures++
      this.consecutiveFailures++
      this.lastFailureAt = this.clock.unsafeCurrentTimeMillis()
      this.lastConnectError = error
      return yield* Effect.fail(error)
    })
  )

  /** Connects to one host: TCP, TLS, authentication, `setSession`, and the server's role when it matters. */
  openOn(
    state: HostState,
    checkRole: boolean,
    holder: { conn: Physical | undefined; lost: boolean }
  ): Effect.Effect<
    { readonly driver: Connector.Connection; readonly scope: Scope.CloseableScope; readonly server: ServerRole | undefined },
    ConnectionError
  > {
    const host = state.host
    const options = config_.connectOptions(this.config, host)
    return Effect.flatMap(Scope.make(), (scope) =>
      Effect.flatMap(
        this.connector.connect(options, (error) => this.lost(holder, error)),
        (driver) =>
          Effect.zipRight(
            this.setSession(driver, options),
            Effect.map(
              checkRole ? this.role(driver, state) : Effect.succeed(undefined),
              (server) => ({ driver, scope, server })
            )
          )
      ).pipe(
        Scope.extend(scope),
        Effect.timeoutFail({
          duration: this.config.connectTimeout,
          onTimeout: () =>
            new ConnectionError({
              message: `Cannot connect (${host.host}:${host.port}/${this.config.database}): connectTimeout of ${
                Duration.format(this.config.connectTimeout)
              } ran out`,
              host: host.host,
              port: host.port,
              database: this.config.database
            })
        }),
        Effect.onExit((exit) => Exit.isFailure(exit) ? Scope.close(scope, exit) : Effect.void)
      ))
  }

  role(driver: Connector.Connection, state: HostState): Effect.Effect<ServerRole | undefined, ConnectionError> {
    return Effect.mapError(queryRole(driver), (error) =>
      error._tag === "ConnectionError" ? error : new ConnectionError({
        message: `Cannot read the role of ${state.label}: ${error.message}`,
        cause: error,
        host: state.host.host,
        port: state.host.port,
        database: this.config.database
      }))
  }

  /** A new physical connection enters the pool's accounting. */
  wrap(
    driver: Connector.Connection,
    scope: Scope.CloseableScope,
    state: HostState,
    holder: { conn: Physical | undefined; lost: boolean },
    startedAt: number
  ): Effect.Effect<Physical> {
    return Effect.gen(this, function*() {
      const now = this.clock.unsafeCurrentTimeMillis()
      if (this.metrics !== undefined) this.metrics.createTime(now - startedAt)
      const lifetime = this.config.maxLifetime
      const jitter = this.config.maxLifetimeJitter > 0 ? (yield* this.random.next) * this.config.maxLifetimeJitter : 0
      const conn = new Physical(this.nextId++, driver, scope, state, now, now + lifetime - jitter, yield* Ref.make(0))
      holder.conn = conn
      if (holder.lost) conn.lost = true
      this.all.add(conn)
      this.created++
      this.consecutiveFailures = 0
      yield* Effect.logDebug("connection opened").pipe(Effect.annotateLogs(this.connectionLog(conn)))
      return conn
    })
  }

  /**
   * Opens a connection, retrying per the `reconnect` schedule while `retryWhile` holds; an attempt that comes
   * due when nobody needs the connection any more is not made.
   */
  openRetrying(retryWhile: (error: ConnectionError) => boolean): Effect.Effect<Physical, ConnectionError> {
    let attempt = 0
    const attemptIfNeeded = Effect.suspend(() =>
      attempt === 0 || this.needed() ? this.open : Effect.fail(this.notNeeded)
    )
    return attemptIfNeeded.pipe(
      Effect.tapError((error) => {
        if (error === this.notNeeded) return Effect.void
        attempt++
        return Effect.logWarning(`connect failed (attempt ${attempt}): ${error.message}`).pipe(
          Effect.annotateLogs({ ...this.failureLog(error), attempt })
        )
      }),
      Effect.retry({ schedule: this.config.reconnect, while: (error) => error !== this.notNeeded && retryWhile(error) })
    )
  }

  readonly notNeeded = new ConnectionError({ message: "Connect abandoned: no one needs the connection any more" })

  setSession(driver: Connector.Connection, options: Connector.ConnectOptions): Effect.Effect<void, ConnectionError> {
    if (this.config.setSession.length === 0) return Effect.void
    return Effect.forEach(this.config.setSession, (text) => Connector.query(driver, text), { discard: true }).pipe(
      Effect.mapError((error) =>
        error._tag === "ConnectionError" ? error : new ConnectionError({
          message: `setSession statement failed (${options.host}:${options.port}/${options.database}): ${error.message}`,
          cause: error,
          host: options.host,
          port: options.port,
          database: options.database,
          code: error.code
        })
      )
    )
  }

  /** The error listener's report: an idle connection is dropped at once; a busy one when it comes back. */
  lost(holder: { conn: Physical | undefined; lost: boolean }, error: ConnectionError): void {
    const conn = holder.conn
    if (conn === undefined) {
      holder.lost = true
      return
    }
    conn.lost = true
    if (conn.state === "idle") {
      this.removeIdle(conn)
      this.closeDetached(conn, "broken")
      this.runBackground(
        Effect.logWarning(`idle connection lost: ${error.message}`).pipe(
          Effect.annotateLogs(this.connectionLog(conn))
        )
      )
    }
  }

  // ---------------------------------------------------------------------------------------------
  // maintenance, start and shutdown
  // ---------------------------------------------------------------------------------------------

  readonly maintenance: Effect.Effect<void> = Effect.suspend(() => {
    if (this.closed) return Effect.void
    const now = this.clock.unsafeCurrentTimeMillis()
    this.purge(now)
    this.topUp()
    const health = this.config.healthCheck
    if (!health.enabled) return Effect.void
    const stale = this.idle.filter((conn) => now - conn.idleSince >= health.interval)
    if (stale.length === 0) return Effect.void
    return Effect.forEach(stale, (conn) => this.keepAlive(conn), { discard: true, concurrency: "unbounded" }).pipe(
      Effect.zipRight(Effect.sync(() => this.topUp()))
    )
  })

  readonly purgeExpired: Effect.Effect<number> = Effect.sync(() =>
    this.closed ? 0 : this.purge(this.clock.unsafeCurrentTimeMillis())
  )

  closedError(): PoolClosedError {
    return new PoolClosedError({ message: "The pool is closed: its layer's scope has been closed" })
  }

  readonly shutdown: Effect.Effect<void> = Effect.suspend(() => {
    if (this.closed) return Effect.void
    this.closed = true
    const error = this.closedError()
    while (this.head !== undefined) this.failHead(error)
    for (const conn of this.idle.splice(0)) this.closeDetached(conn, "poolClosed")
    const drain = this.inUse === 0 ? Effect.void : Effect.flatMap(Deferred.make<void>(), (drained) => {
      this.drained = drained
      const closeCheckedOut = (concurrency: "unbounded" | undefined) =>
        Effect.forEach(
          [...this.all].filter((conn) => conn.state === "busy" || conn.state === "checking"),
          (conn) => {
            conn.lost = true
            return Scope.close(conn.scope, Exit.void)
          },
          { discard: true, concurrency }
        )
      return waitWithin(Deferred.await(drained), this.config.drainTimeout, {
        done: () => Effect.void,
        timedOut: () =>
          Effect.logWarning(`closing ${this.inUse} connections still checked out after drainTimeout`).pipe(
            Effect.annotateLogs({ pool: this.config.name }),
            Effect.zipRight(closeCheckedOut("unbounded"))
          ),
        // the fiber closing the pool was interrupted: the connections still out are closed now, one by one (no
        // child fibers), since the pool's background fibers, which would close them when they come back, end
        // with its scope
        cutOff: () => closeCheckedOut(undefined)
      })
    })
    return drain.pipe(
      Effect.zipRight(Effect.logDebug("pool closed")),
      Effect.annotateLogs({ pool: this.config.name, created: this.created, closed: this.closedTotal })
    )
  })

  snapshot(): PgPool.PoolStats {
    return {
      size: this.size,
      idle: this.idle.length,
      inUse: this.inUse,
      waiting: this.waiting,
      pending: this.pending,
      maxConnections: this.config.maxConnections,
      created: this.created,
      closed: this.closedTotal,
      closedByReason: { ...this.closedByReason },
      acquired: this.acquired,
      timeouts: this.timeouts,
      connectFailures: this.connectFailures,
      hosts: this.root.hostStats()
    }
  }

  /** The stats of a pool of several hosts: its own and those of its read pools, added up. */
  aggregate(): PgPool.PoolStats {
    const all = this.cores.map((core) => core.snapshot())
    const sum = (f: (stats: PgPool.PoolStats) => number) => all.reduce((total, stats) => total + f(stats), 0)
    const closedByReason = emptyReasons()
    for (const stats of all) {
      for (const [reason, count] of Object.entries(stats.closedByReason)) {
        closedByReason[reason as PgPool.CloseReason] += count
      }
    }
    return {
      size: sum((s) => s.size),
      idle: sum((s) => s.idle),
      inUse: sum((s) => s.inUse),
      waiting: sum((s) => s.waiting),
      pending: sum((s) => s.pending),
      maxConnections: this.config.maxConnections,
      created: sum((s) => s.created),
      closed: sum((s) => s.closed),
      closedByReason,
      acquired: sum((s) => s.acquired),
      timeouts: sum((s) => s.timeouts),
      connectFailures: sum((s) => s.connectFailures),
      hosts: this.hostStats()
    }
  }

  /** Connections per host and role, across this pool and its read pools. */
  hostStats(): ReadonlyArray<PgPool.HostStats> {
    const states = this.topology?.states ?? [...new Set([...this.all].map((conn) => conn.server))]
    if (states.length === 0) {
      const host = this.config.hosts[0]!
      return [{ host: host.host, port: host.port, role: "unknown", up: true, size: 0, idle: 0, inUse: 0, forReads: 0 }]
    }
    return states.map((state) => {
      let size = 0
      let idle = 0
      let inUse = 0
      let forReads = 0
      for (const core of this.cores) {
        for (const conn of core.all) {
          if (conn.server.key !== state.key || conn.state === "closing") continue
          size++
          if (conn.state === "idle") idle++
          else if (conn.state === "busy") inUse++
          if (core !== this) forReads++
        }
      }
      return {
        host: state.host.host,
        port: state.host.port,
        role: state.role ?? "unknown",
        up: !state.down,
        size,
        idle,
        inUse,
        forReads
      }
    })
  }


  // ---------------------------------------------------------------------------------------------
  // the service
  // ---------------------------------------------------------------------------------------------

  /** Checks a connection out as a Handle. Must run in an uninterruptible region; only the wait is restored. */
  checkoutHandle(restore: Restore): Effect.Effect<Handle, PoolError> {
    const handle = Effect.map(this.checkout(restore), (conn) => new Handle(this, conn))
    if (this.config.leakDetectionThreshold === undefined) return handle
    return Effect.withFiberRuntime((fiber) =>
      Effect.tap(handle, (h) => {
        this.watchLeak(h.conn, Context.getOption(fiber.currentContext, Tracer.ParentSpan))
      })
    )
  }

  releaseHandle(handle: Handle): Effect.Effect<void> {
    return Effect.suspend(() => {
      handle.released = true
      return this.release(handle.conn)
    })
  }

  /** `PgPool.connection`: a checkout returned by a finalizer of the caller's Scope. */
  readonly scopedCheckout: Effect.Effect<Handle, PoolError, Scope.Scope> = Effect.uninterruptibleMask((restore) =>
    Effect.withFiberRuntime((fiber) => {
      const scope = Context.unsafeGet(fiber.currentContext, Scope.Scope)
      return Effect.flatMap(
        this.checkoutHandle(restore),
        (handle) => Effect.as(Scope.addFinalizer(scope, this.releaseHandle(handle)), handle)
      )
    })
  )

  /**
   * `withConnection`: runs `effect` with a connection checked out for it, pinned for the fiber, and returned on
   * every exit. An idle connection that needs no ping is taken without leaving the fiber's step; the pin and
   * the return are done in the same step as the end of `effect`.
   */
  withPinned<A, E, R>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    effect: Effect.Effect<A, E, R>,
    span?: Tracer.Span | undefined
  ) {
    return Effect.uninterruptibleMask((restore): Effect.Effect<A, E | PoolError, R> => {
      if (this.closed) return Effect.fail(this.closedError())
      const now = this.clock.unsafeCurrentTimeMillis()
      const use = (conn: Physical) => {
        if (span !== undefined) this.traceCheckout(span, conn, conn.checkedOutAt - now)
        return this.usePinned(fiber, new Handle(this, conn), effect, restore, span)
      }
      const conn = this.takeIdle(now)
      if (conn !== undefined) {
        if (!this.needsPing(conn, now)) {
          this.markBusy(conn, now, 0)
          return use(conn)
        }
        return Effect.flatMap(this.validate(conn), (alive) => alive ? use(conn) : Effect.flatMap(this.checkout(restore), use))
      }
      return this.refusal() ?? this.waitThen(restore, now, use)
    })
  }

  usePinned<A, E, R>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    handle: Handle,
    effect: Effect.Effect<A, E, R>,
    restore: Restore,
    span?: Tracer.Span | undefined
  ): Effect.Effect<A, E, R> {
    if (this.config.leakDetectionThreshold !== undefined && handle.conn.leakWatch === undefined) {
      this.watchLeak(handle.conn, Context.getOption(fiber.currentContext, Tracer.ParentSpan))
    }
    const box = ownPins(fiber)
    const previous = box.pins
    box.pins = { core: this, handle, next: previous }
    // the span of withConnection is the parent of the body's spans: set in the fiber's context in place and put
    // back in `done`, in the steps of this region (Effect.withParentSpan, a FiberRef.locally, costs 3 times more)
    const context = span === undefined ? undefined : fiber.currentContext
    if (span !== undefined) setRef(fiber, FiberRef.currentContext, Context.add(context!, Tracer.ParentSpan, span))
    const done = (): Effect.Effect<void> => {
      box.pins = previous
      if (context !== undefined) setRef(fiber, FiberRef.currentContext, context)
      handle.released = true
      return this.counting ? this.release(handle.conn) : this.releaseWith(handle.conn, 0)
    }
    return Effect.matchCauseEffect(restore(effect), {
      onFailure: (cause) => Effect.zipRight(done(), Effect.failCause(cause)),
      onSuccess: (value) => {
        const released = done()
        return released === Effect.void ? Effect.succeed(value) : Effect.as(released, value)
      }
    })
  }

  /** Logs a warning, naming the span and the code that checked the connection out, when it is held too long. */
  watchLeak(conn: Physical, span: Option.Option<Tracer.AnySpan>): void {
    const threshold = this.config.leakDetectionThreshold!
    const trace = new Error("connection checked out here").stack ?? ""
    const spanName = Option.match(span, {
      onNone: () => "(no span)",
      onSome: (span) => span._tag === "Span" ? span.name : `external span ${span.spanId}`
    })
    conn.leakWatch = this.runBackground(
      Effect.sleep(threshold).pipe(
        Effect.zipRight(Effect.logWarning(
          `possible connection leak: backend ${conn.driver.backendPid} has been checked out for more than ${threshold} ms, in span "${spanName}"`
        )),
        Effect.annotateLogs({ ...this.connectionLog(conn), span: spanName, checkedOutAt: trace })
      )
    )
  }

  /**
   * A statement outside of a pinned connection: check out, send, return, in one suspension of the fiber.
   * A statement that failed because its connection was lost is retried once on a fresh connection.
   */
  oneShot<A>(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A,
    retry: boolean,
    span?: Tracer.Span | undefined
  ): Effect.Effect<A, PoolError | QueryError> {
    if (this.config.queryTimeout !== undefined) return this.oneShotTimed(text, params, rowMode, project, retry, span)
    return Effect.uninterruptibleMask((restore): Effect.Effect<A, PoolError | QueryError> => {
      if (this.closed) return Effect.fail(this.closedError())
      const op = new QueryOp(this, text, params, rowMode, project, retry, restore, span)
      const now = this.clock.unsafeCurrentTimeMillis()
      const conn = this.takeIdle(now)
      if (conn !== undefined) {
        if (this.needsPing(conn, now)) {
          return Effect.flatMap(this.validate(conn), (alive) => {
            if (!alive) return restore(this.oneShot(text, params, rowMode, project, retry, span))
            if (span !== undefined) this.traceCheckout(span, conn, conn.checkedOutAt - now)
            op.conn = conn
            return Effect.matchCauseEffect(restore(Effect.async(op.register)), op)
          })
        }
        this.markBusy(conn, now, 0)
        if (span !== undefined) this.traceCheckout(span, conn, 0)
        op.conn = conn
      } else {
        const refused = this.refusal()
        if (refused !== undefined) return refused
        op.enqueuedAt = now
        op.deadline = now + this.config.acquireTimeout
      }
      return Effect.matchCauseEffect(restore(Effect.async(op.register)), op)
    })
  }

  /**
   * A one-shot statement under `queryTimeout`: the timeout bounds the statement only, not the wait for a
   * connection (which `acquireTimeout` bounds), so a full pool is never reported as a cancelled statement.
   */
  oneShotTimed<A>(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A,
    retry: boolean,
    span?: Tracer.Span | undefined
  ): Effect.Effect<A, PoolError | QueryError> {
    return Effect.uninterruptibleMask((restore) => {
      const since = span === undefined ? 0 : this.clock.unsafeCurrentTimeMillis()
      return Effect.flatMap(this.checkout(restore), (conn) => {
        if (span !== undefined) this.traceCheckout(span, conn, conn.checkedOutAt - since)
        return Effect.matchCauseEffect(
          restore(this.runThen(conn, text, params, rowMode, (result) => Effect.succeed(project(result)))),
          {
            onFailure: (cause) => {
              const failure = Cause.failureOption(cause)
              const lost = retry && Option.isSome(failure) && failure.value._tag === "ConnectionError" &&
                (conn.lost || conn.driver.isBroken()) && !this.closed
              return Effect.zipRight(
                this.release(conn),
                lost ? restore(this.oneShot(text, params, rowMode, project, false, span)) : Effect.failCause(cause)
              )
            },
            onSuccess: (value) => Effect.as(this.release(conn), value)
          }
        )
      })
    })
  }

  /** The statement of a one-shot op has been answered: count it, return the connection, hand out the result. */
  complete<A>(op: QueryOp<A>): Effect.Effect<A, PoolError | QueryError> {
    if (op.state === OpState.Released) {
      op.state = OpState.Finished
      return handOut(op.project, op.result!, op.releasing)
    }
    op.state = OpState.Finished
    return this.counting
      ? Effect.flatMap(Ref.updateAndGet(op.conn!.usage, increment), (usage) => this.finish(op, usage))
      : this.finish(op, 0)
  }

  finish<A>(op: QueryOp<A>, usage: number): Effect.Effect<A, PoolError | QueryError> {
    const conn = op.conn!
    const released = this.releaseWith(conn, usage)
    const error = op.error
    if (error === undefined) return handOut(op.project, op.result!, released)
    if (op.retry && error._tag === "ConnectionError" && (conn.lost || conn.driver.isBroken()) && !this.closed) {
      return Effect.zipRight(
        released,
        op.restore(this.oneShot(op.text, op.params, op.rowMode, op.project, false, op.span))
      )
    }
    return Effect.zipRight(released, Effect.fail(error))
  }

  /** A statement on the pinned connection of this fiber, if any, else a one-shot statement. */
  statement<A>(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A
  ): Effect.Effect<A, PoolError | QueryError> {
    return Effect.withFiberRuntime((fiber) => this.statementOn(fiber, text, params, rowMode, project))
  }

  statementOn<A>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A,
    span?: Tracer.Span | undefined
  ): Effect.Effect<A, PoolError | QueryError> {
    const pin = pinOf(fiber, this)
    if (pin !== undefined) {
      const handle = pin.handle
      if (handle.released) return Effect.fail(this.usedAfterRelease(handle))
      if (span !== undefined) handle.core.traceCheckout(span, handle.conn, undefined)
      return handle.core.runThen(handle.conn, text, params, rowMode, (result) => Effect.succeed(project(result)))
    }
    return this.router === undefined
      ? this.oneShot(text, params, rowMode, project, this.config.retryLostQueries, span)
      : this.routeOr(
        fiber,
        (target) => target.oneShot(text, params, rowMode, project, target.config.retryLostQueries, span)
      )
  }

  /** `PgPool.query`: a statement in a span of its own when a tracer is installed (see `Tracing.traced`). */
  queryOn(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    text: string,
    params: ReadonlyArray<unknown> | undefined
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, PoolError | QueryError> {
    return Tracing.traced(fiber)
      ? this.tracedQuery(fiber, text, params)
      : this.statementOn(fiber, text, params, undefined, rowsOf)
  }

  /**
   * The `PgPool.query` span: a client span, child of the caller's span, with the statement's text, the command
   * the server answered with, and how long the checkout waited.
   */
  tracedQuery(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    text: string,
    params: ReadonlyArray<unknown> | undefined
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, PoolError | QueryError> {
    return Effect.useSpan("PgPool.query", Tracing.clientSpan, (span) => {
      Tracing.annotate(span, this.spanAttributes)
      span.attribute("db.query.text", text)
      const project = (result: Connector.QueryResult): ReadonlyArray<PgPool.Row> => {
        Tracing.answered(span, result)
        return result.rows
      }
      return Effect.tapError(this.statementOn(fiber, text, params, undefined, project, span), (error) =>
        Tracing.failed(span, error))
    })
  }

  /**
   * Puts on `span` what the checkout of `conn` for its operation found (see `Tracing.checkedOut`): with several
   * hosts, the server and the pool; and how long it waited, unless the connection was held already.
   */
  traceCheckout(span: Tracer.Span, conn: Physical, waited: number | undefined): void {
    const several = this.topology !== undefined
    Tracing.checkedOut(
      span,
      several ? conn.server.host : undefined,
      several && this.forReads ? this.config.name : undefined,
      waited
    )
  }

  /**
   * Where new work of this fiber goes: this pool, or, inside `PgPool.readOnly` on a pool of several hosts, the
   * pool of a standby (or this one as the fallback; undefined when there is none).
   */
  route(fiber: Fiber.RuntimeFiber<unknown, unknown>): PoolCore | undefined {
    if (this.router === undefined || !fiber.getFiberRef(currentReadOnly)) return this
    return this.router.pick()
  }

  /**
   * Runs `f` on the pool the fiber's work goes to. When a standby's read pool cannot connect (the standby went
   * away since the last role check), the work, which never started, is sent where the router points now: to
   * another standby, or to the fallback.
   */
  routeOr<A, E, R>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    f: (target: PoolCore) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | ConnectionError, R> {
    return this.routeWith(this.route(fiber), f, () => Effect.fail(this.router!.noStandby()))
  }

  routeWith<A, E, R, E2>(
    target: PoolCore | undefined,
    f: (target: PoolCore) => Effect.Effect<A, E, R>,
    none: () => Effect.Effect<never, E2>
  ): Effect.Effect<A, E | E2, R> {
    if (target === undefined) return none()
    if (target === this) return f(target)
    return Effect.catchIf(f(target), isReroutable(target), (): Effect.Effect<A, E | E2, R> => {
      const again = this.router!.pick()
      return again === undefined ? none() : f(again)
    })
  }

  readonly connection: Effect.Effect<PgPool.PooledConnection, PoolError, Scope.Scope> = Effect.withFiberRuntime(
    (fiber) => {
      const pin = pinOf(fiber, this)
      return pin === undefined ? this.routeOr(fiber, (target) => target.scopedCheckout) : Effect.succeed(pin.handle)
    }
  )

  readonly query = (
    text: string,
    params?: ReadonlyArray<unknown>
  ): Effect.Effect<ReadonlyArray<PgPool.Row>, PoolError | QueryError> =>
    Effect.withFiberRuntime((fiber) => this.queryOn(fiber, text, params))

  readonly withConnection = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | PoolError, R> =>
    Effect.withFiberRuntime((fiber) => {
      if (pinOf(fiber, this) !== undefined) return effect
      if (Tracing.traced(fiber)) return this.tracedWithConnection(fiber, effect)
      return this.routeOr(fiber, (target) => target.withPinned(fiber, effect))
    })

  /**
   * The `PgPool.withConnection` span: the parent of the spans made inside (the statements on the pinned
   * connection), with how long the checkout waited. A nested `withConnection`, which reuses the connection
   * and does nothing else, has none.
   */
  tracedWithConnection<A, E, R>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    effect: Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | PoolError, R> {
    return Effect.useSpan("PgPool.withConnection", Tracing.internalSpan, (span) => {
      Tracing.annotate(span, this.spanAttributes)
      return this.routeOr(fiber, (target) => target.withPinned(fiber, effect, span))
    })
  }

  readonly readOnly = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.locally(effect, currentReadOnly, true)

  /** The pools of this one: itself, and the read pools of its standbys. */
  get cores(): ReadonlyArray<PoolCore> {
    return this.router === undefined ? [this] : [this, ...this.router.reads.map((read) => read.core)]
  }

  readonly service: PgPool.PgPool & { readonly [CoreId]: PoolCore } = {
    [TypeId]: TypeId,
    [CoreId]: this,
    connection: this.connection,
    query: this.query,
    withConnection: this.withConnection,
    readOnly: this.readOnly,
    stats: Effect.sync(() => {
      for (const core of this.cores) core.updateGauges()
      return this.router === undefined ? this.snapshot() : this.aggregate()
    }),
    purgeExpired: Effect.map(
      Effect.forEach(this.cores, (core) => core.purgeExpired),
      (counts) => counts.reduce((a, b) => a + b, 0)
    )
  }
}

/** A pool core in the current Scope, with its timer and maintenance fibers; closing the Scope drains it. */
const makeCore = (
  config: config_.ResolvedConfig,
  policy: HostPolicy,
  topology: Topology | undefined
): Effect.Effect<PoolCore, never, Scope.Scope | Connector.Connector> =>
  Effect.gen(function*() {
    const connector = yield* Connector.Connector
    const clock = yield* Effect.clock
    const random = yield* Effect.random
    const closers = yield* FiberSet.make<unknown, unknown>()
    const runCloser = yield* FiberSet.runtime(closers)<never>()
    const runBackground = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    const core = new PoolCore(config, connector, clock, random, runBackground, runCloser, policy, topology)
    yield* Effect.addFinalizer(() =>
      core.shutdown.pipe(
        Effect.zipRight(Effect.interruptible(FiberSet.awaitEmpty(closers)).pipe(Effect.timeoutOption(Duration.seconds(10)))),
        // cut off by an interruption of the closing fiber: the closers' set interrupts them (they close
        // uninterruptibly, so it waits for them)
        Effect.catchAllCause(() => Effect.void)
      )
    )
    runBackground(core.timerLoop)
    return core
  })

/** Forks the maintenance (and metrics) fibers of a core, after its warm-up. */
const startMaintenance = (core: PoolCore): void => {
  core.runBackground(
    core.maintenance.pipe(
      Effect.catchAllCause((cause) => Effect.logError("maintenance failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(core.config.maintenanceInterval)))
    )
  )
  core.updateGauges()
}

/** @internal */
export const make = (
  config: PgPool.Config
): Effect.Effect<PgPool.PgPool, ConnectionError | ConfigError.ConfigError, Scope.Scope | Connector.Connector> =>
  Effect.gen(function*() {
    const resolved = yield* config_.resolve(config)
    if (resolved.hosts.length === 1) {
      const core = yield* makeCore(resolved, mainPolicy(resolved, undefined), undefined)
      if (!resolved.lazy) yield* warmup(core)
      startMaintenance(core)
      return core.service
    }
    const connector = yield* Connector.Connector
    const runTopology = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    const topology = new Topology(resolved, connector, runTopology)
    const probeAll = Effect.forEach(topology.states, (state) => Effect.ignore(topology.probe(state)), {
      concurrency: "unbounded",
      discard: true
    })
    if (resolved.lazy) runTopology(Effect.zipRight(probeAll, topology.recheck))
    else {
      yield* probeAll
      runTopology(topology.recheck)
    }
    const main = yield* makeCore(resolved, mainPolicy(resolved, topology), topology)
    if (resolved.readRouting === "standby") {
      const reads: Array<ReadPool> = []
      for (const state of topology.states) {
        const readConfig: config_.ResolvedConfig = {
          ...resolved,
          minConnections: 0,
          maxIdle: Math.min(resolved.maxIdle, resolved.maxConnections),
          lazy: true,
          name: `${resolved.name}/read@${state.label}`
        }
        const core = yield* makeCore(readConfig, standbyPolicy(state), topology)
        core.root = main
        startMaintenance(core)
        reads.push({ state, core })
      }
      main.router = new Router(main, reads, resolved)
    }
    if (!resolved.lazy) yield* warmup(main)
    startMaintenance(main)
    return main.service
  })

/** Opens and checks one connection (plus minConnections) within connectTimeout, or fails. */
const warmup = (core: PoolCore): Effect.Effect<void, ConnectionError> => {
  const count = Math.max(1, core.config.pooling ? core.config.minConnections : 1)
  const tokens = Array.from({ length: count }, () => core.beginConnect())
  let attempts = 0
  const attempt = core.open.pipe(Effect.tapError((error) =>
    Effect.suspend(() => {
      attempts++
      return Effect.logWarning(`connect failed at start (attempt ${attempts}): ${error.message}`).pipe(
        Effect.annotateLogs({ ...core.failureLog(error), attempt: attempts })
      )
    })
  ))
  return Effect.forEach(
    tokens,
    (token) =>
      attempt.pipe(
        Effect.retry({ schedule: core.config.reconnect, while: isTransientConnectError }),
        Effect.onExit((exit) => core.connected(exit, token))
      ),
    { concurrency: "unbounded", discard: true }
  ).pipe(
    Effect.timeoutFail({
      duration: core.config.connectTimeout,
      onTimeout: () => {
        const last = core.lastConnectError
        const host = core.config.hosts[0]!
        const tried = attempts === 0
          ? `the connect to ${host.host}:${host.port} did not complete`
          : `${attempts} failed attempts, last: ${last?.message ?? "unknown"}`
        return new ConnectionError({
          message: `Cannot start the pool: no connection within connectTimeout (${
            Duration.format(core.config.connectTimeout)
          }): ${tried}`,
          cause: last,
          host: last?.host ?? core.config.hosts[0]?.host,
          port: last?.port ?? core.config.hosts[0]?.port,
          database: core.config.database,
          code: last?.code,
          attempts
        })
      }
    })
  )
}
