/**
 * The one-shot statement, the hot path of `PgPool.query`: check out, send, return, hand out the result, in one
 * suspension of the calling fiber. The statement goes out the moment a connection is handed over (directly by
 * the fiber or driver callback that frees it, FIFO), and a statement that succeeded gives its connection back
 * in the driver's callback, so the next waiter's statement goes out in the same turn of the event loop (as
 * pg.Pool does).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import type * as Tracer from "effect/Tracer"
import type * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import { type ConnectionError, type PoolError, QueryError } from "../../PgPoolError.js"
import type { Physical } from "../connection/physical.js"
import { unsendableStatement } from "../connector/limits.js"
import { mayOpenTransaction } from "../connector/text.js"
import { checkedOutFrom } from "../tracing.js"
import type { PoolCore } from "./core.js"
import { release, releaseWith } from "./release.js"
import type { Waiter } from "./waiters.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

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
 * handed over. The fiber resumes with the op once the statement was answered.
 */
class QueryOp<A = unknown> implements Waiter {
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
  /** Sent with pipelining (`Connection.sendPipelined`): `handle` cancels exactly it. */
  piped = false
  handle: Connector.InFlight | undefined = undefined
  /** Sent behind the statements in flight on a connection it did not check out (it gives nothing back unless last). */
  rider = false
  /** The last statement in flight on its connection when it was answered: it gives the connection back. */
  last = true
  /** Interrupted while it ran with pipelining: its answer only settles the connection's bookkeeping. */
  abandoned = false
  constructor(
    readonly core: PoolCore,
    readonly text: string,
    readonly params: ReadonlyArray<unknown> | undefined,
    readonly rowMode: "array" | undefined,
    readonly project: (result: Connector.QueryResult) => A,
    readonly retry: boolean,
    readonly restore: Restore,
    /** The span of `PgPool.query`, when a tracer is installed. */
    readonly span: Tracer.Span | undefined,
    /** How many times the statement was sent again already because it provably never ran (see `lostAgain`). */
    readonly resent: number,
    /**
     * It may leave a transaction open (`mayOpenTransaction`): it is never pipelined, nor is anything sent behind
     * it, which would run inside that transaction (and be rolled back with it when the connection is returned).
     */
    readonly exclusive: boolean
  ) {}
  /** The handlers of the wait (the op is its own `matchCauseEffect` options, to save allocations). */
  readonly onFailure = (cause: Cause.Cause<PoolError>): Effect.Effect<never, PoolError> =>
    Effect.zipRight(this.abandon(), Effect.failCause(cause))
  readonly onSuccess = (): Effect.Effect<A, PoolError | QueryError> => complete(this)
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
    if (this.span !== undefined) checkedOutFrom(this.span, this.core, conn, conn.checkedOutAt - this.enqueuedAt)
    this.send(conn)
  }
  /**
   * Takes a place behind the statements in flight on `conn` (pipelining), held from now on, so that `conn` is
   * not given back before this statement is sent.
   */
  board(conn: Physical, waited = 0): void {
    this.conn = conn
    this.rider = true
    this.piped = true
    if (this.core.counting) conn.sent++
    this.core.joinPipeline(conn)
    this.core.tally.pipelined++
    if (this.span !== undefined) checkedOutFrom(this.span, this.core, conn, waited)
  }
  /**
   * Sent behind the statements in flight on `conn`, after waiting in the queue: that wait is its
   * `db.client.connection.wait_time` (span and histogram), as a checkout's would be.
   */
  ride(conn: Physical, now: number): void {
    const waited = now - this.enqueuedAt
    this.core.metrics?.waitTime(waited)
    this.board(conn, waited)
    this.send(conn)
  }
  fail(error: PoolError): void {
    this.state = OpState.Finished
    this.resume!(Effect.fail(error))
  }
  send(conn: Physical): void {
    this.state = OpState.Running
    // (a rider was counted when it boarded)
    if (this.core.counting && !this.rider) conn.sent++
    const driver = conn.driver
    if (this.core.config.pipelineDepth > 1 && driver.sendPipelined !== undefined && !this.exclusive) {
      // a rider took its place when it boarded
      if (!this.piped) {
        this.piped = true
        this.core.joinPipeline(conn)
      }
      this.handle = driver.sendPipelined(this.text, this.params, this.rowMode, this.onResult)
    } else {
      driver.send(this.text, this.params, this.rowMode, this.onResult)
    }
  }
  readonly onResult = (
    error: QueryError | ConnectionError | undefined,
    result: Connector.QueryResult | undefined
  ): void => {
    const core = this.core
    const conn = this.conn!
    const last = this.piped ? core.leavePipeline(conn, true) : true
    if (this.state !== OpState.Running) {
      // interrupted while it ran (pipelining): the last statement in flight gives the connection back
      if (this.abandoned && last) core.runBackground(release(core, conn))
      return
    }
    // a transaction left open ends with the checkout: rolled back when the connection is returned, so the
    // statement fails instead of reporting what is undone (alone on its connection: see `exclusive`)
    const status = error === undefined && !this.piped ? conn.driver.transactionStatus() : "idle"
    const failure = inTransaction(status) ? leftOpen(status) : error === undefined ? error : conn.explain(error)
    this.error = failure
    this.result = result
    this.last = last
    // resumed first (the fiber runs later, on the scheduler), so it comes back before the next waiter's fiber
    this.resume!(Effect.succeed(this))
    if (failure === undefined && !core.counting) {
      this.state = OpState.Released
      this.releasing = last ? releaseWith(core, conn, 0) : Effect.void
    } else {
      this.state = OpState.Done
    }
    // room on the connection: the next one-shot statement waiting rides it
    if (!last && core.queue.length > 0) core.refill(conn, core.clock.unsafeCurrentTimeMillis())
  }
  /**
   * Drops what the op came to hold after it was made (the answer, the cancel handle, the return of the
   * connection, the fiber's callback), once the fiber has taken them. An op that waited long enough to be moved
   * to the old generation stays there until a full collection: whatever young object it still points to
   * survives every young-generation collection meanwhile and is moved there too (at 2,048 workers, about 1 KB
   * per statement when V8 had begun to allocate some of Effect's objects in the old generation directly).
   */
  forget(): void {
    this.result = undefined
    this.error = undefined
    this.releasing = Effect.void
    this.handle = undefined
    this.resume = undefined
  }
  /**
   * The fiber was interrupted while waiting or while the statement ran: leave the queue, or cancel the
   * statement, let it settle and give the connection back. Every state is covered.
   */
  abandon(): Effect.Effect<void> {
    const state = this.state
    this.state = OpState.Finished
    switch (state) {
      case OpState.Pending:
        if (this.conn === undefined) return Effect.void
        // a rider not sent yet gives back its place (and the connection, if it was the last)
        if (this.rider) return this.core.leavePipeline(this.conn, false) ? release(this.core, this.conn) : Effect.void
        return release(this.core, this.conn)
      case OpState.Waiting:
        return this.core.cancelWaiter(this)
      case OpState.Running:
        if (this.piped && this.conn!.oneShots === 1) {
          // alone on its connection: it leaves the pipeline now, and the connection goes back the way an
          // unpipelined one does (cancelled, settled, then returned: counted back at once)
          this.piped = false
          this.core.leavePipeline(this.conn!, false)
        }
        if (this.piped) {
          // exactly this statement is cancelled; its answer (57014, or its own outcome) settles the connection
          this.abandoned = true
          if (this.handle !== undefined) this.core.runBackground(this.handle.cancel)
          return Effect.void
        }
        this.conn!.settleInBackground()
        return release(this.core, this.conn!)
      case OpState.Done:
        return this.last ? release(this.core, this.conn!) : Effect.void
      case OpState.Released:
        return this.releasing
      case OpState.Finished:
        return Effect.void
    }
  }
}

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

/**
 * The failure of a one-shot statement that left its connection in a transaction (a BEGIN without its COMMIT):
 * the transaction cannot outlive the statement, whose connection goes back to the pool, where it is rolled
 * back.
 */
const inTransaction = (status: Connector.TransactionStatus): boolean => status === "transaction" || status === "failed"

const leftOpen = (status: Connector.TransactionStatus): QueryError =>
  new QueryError({
    message: `The statement left a transaction open (${status === "failed" ? "failed" : "in progress"}), which ` +
      `cannot outlive it: its connection goes back to the pool, where the transaction is rolled back. Run the ` +
      `statements of a transaction in Transaction.withTransaction (or on one connection, PgPool.withConnection), ` +
      `or end the transaction in the same text (SQLSTATE 25000)`,
    code: "25000"
  })

/** @internal */
export const rowsOf = (result: Connector.QueryResult): ReadonlyArray<PgPool.Row> => result.rows

/**
 * What to do with a one-shot statement that failed with `error` on `conn`: `"resend"` when its connection was
 * lost before the statement reached a live backend (`safeToRetry`: it never ran, so it is sent again on another
 * connection, whatever `retryLostQueries` says; at most `maxConnections` times, each of which cost a broken
 * connection), `"retry"` when its connection was lost otherwise and `retry` (`retryLostQueries`: at-least-once,
 * once), else `undefined`: the caller gets the error.
 */
const lostAgain = (
  core: PoolCore,
  conn: Physical,
  error: PoolError | QueryError,
  retry: boolean,
  resent: number
): "resend" | "retry" | undefined => {
  if (error._tag !== "ConnectionError" || !conn.broken || core.closed) return undefined
  if (error.safeToRetry === true && resent < core.config.maxConnections) return "resend"
  return retry ? "retry" : undefined
}

/**
 * A statement outside of a pinned connection: check out, send, return, in one suspension of the fiber.
 * A statement whose connection was lost before it reached a live backend is sent again on another connection;
 * with `retry` (`retryLostQueries`) one whose connection was lost otherwise is too, once (at-least-once).
 *
 * @internal
 */
export const oneShot = <A>(
  core: PoolCore,
  text: string,
  params: ReadonlyArray<unknown> | undefined,
  rowMode: "array" | undefined,
  project: (result: Connector.QueryResult) => A,
  retry: boolean,
  span?: Tracer.Span | undefined,
  resent = 0
): Effect.Effect<A, PoolError | QueryError> => {
  const unsendable = unsendableStatement(text, params)
  if (unsendable !== undefined) return Effect.fail(unsendable)
  if (core.config.queryTimeout !== undefined) {
    return oneShotTimed(core, text, params, rowMode, project, retry, span, resent)
  }
  return Effect.uninterruptibleMask((restore): Effect.Effect<A, PoolError | QueryError> => {
    if (core.closed) return Effect.fail(core.closedError())
    // (only pipelining can put a statement behind it)
    const exclusive = core.config.pipelineDepth > 1 && mayOpenTransaction(text)
    const op = new QueryOp(core, text, params, rowMode, project, retry, restore, span, resent, exclusive)
    const now = core.clock.unsafeCurrentTimeMillis()
    const conn = core.takeIdleOrPing(now)
    const host = conn === undefined && core.config.pipelineDepth > 1 && !exclusive
      ? core.pipelineHost(now)
      : undefined
    if (host !== undefined) {
      // every connection is busy: sent behind the statements in flight on one of them
      op.board(host)
    } else if (conn === undefined) {
      const refused = core.refusal()
      if (refused !== undefined) return refused
      op.enqueuedAt = now
      op.deadline = now + core.config.acquireTimeout
    } else if (conn.state === "busy") {
      if (span !== undefined) checkedOutFrom(span, core, conn, 0)
      op.conn = conn
    } else {
      return Effect.flatMap(core.validate(conn), (alive) => {
        if (!alive) return restore(oneShot(core, text, params, rowMode, project, retry, span, resent))
        if (span !== undefined) checkedOutFrom(span, core, conn, conn.checkedOutAt - now)
        op.conn = conn
        return Effect.matchCauseEffect(restore(Effect.async(op.register)), op)
      })
    }
    return Effect.matchCauseEffect(restore(Effect.async(op.register)), op)
  })
}

/**
 * A one-shot statement under `queryTimeout`: the timeout bounds the statement only, not the wait for a
 * connection (which `acquireTimeout` bounds), so a full pool is never reported as a cancelled statement.
 */
const oneShotTimed = <A>(
  core: PoolCore,
  text: string,
  params: ReadonlyArray<unknown> | undefined,
  rowMode: "array" | undefined,
  project: (result: Connector.QueryResult) => A,
  retry: boolean,
  span: Tracer.Span | undefined,
  resent: number
): Effect.Effect<A, PoolError | QueryError> =>
  Effect.uninterruptibleMask((restore) => {
    const since = span === undefined ? 0 : core.clock.unsafeCurrentTimeMillis()
    return Effect.flatMap(core.checkout(restore), (conn) => {
      if (span !== undefined) checkedOutFrom(span, core, conn, conn.checkedOutAt - since)
      return Effect.matchCauseEffect(
        restore(conn.runThen(text, params, rowMode, (result) => Effect.succeed(project(result)), undefined)),
        {
          onFailure: (cause) => {
            const failure = Cause.failureOption(cause)
            const again = Option.isSome(failure) ? lostAgain(core, conn, failure.value, retry, resent) : undefined
            return Effect.zipRight(
              release(core, conn),
              again === "resend"
                ? restore(oneShot(core, text, params, rowMode, project, retry, span, resent + 1))
                : again === "retry"
                ? restore(oneShot(core, text, params, rowMode, project, false, span, resent))
                : Effect.failCause(cause)
            )
          },
          onSuccess: (value) => {
            const status = conn.driver.transactionStatus()
            return inTransaction(status)
              ? Effect.zipRight(release(core, conn), Effect.fail(leftOpen(status)))
              : Effect.as(release(core, conn), value)
          }
        }
      )
    })
  })

/** The statement of a one-shot op has been answered: count it, return the connection, hand out the result. */
const complete = <A>(op: QueryOp<A>): Effect.Effect<A, PoolError | QueryError> => {
  const result = op.result
  const error = op.error
  const releasing = op.releasing
  op.forget()
  if (op.state === OpState.Released) {
    op.state = OpState.Finished
    return handOut(op.project, result!, releasing)
  }
  op.state = OpState.Finished
  return op.core.counting
    ? Effect.flatMap(Ref.updateAndGet(op.conn!.usage, increment), (usage) => finish(op, usage, result, error))
    : finish(op, 0, result, error)
}

const increment = (n: number) => n + 1

const finish = <A>(
  op: QueryOp<A>,
  usage: number,
  result: Connector.QueryResult | undefined,
  error: QueryError | ConnectionError | undefined
): Effect.Effect<A, PoolError | QueryError> => {
  const core = op.core
  const conn = op.conn!
  const released = op.last ? releaseWith(core, conn, usage) : Effect.void
  if (error === undefined) return handOut(op.project, result!, released)
  const again = lostAgain(core, conn, error, op.retry, op.resent)
  if (again !== undefined) {
    return Effect.zipRight(
      released,
      op.restore(
        again === "resend"
          ? oneShot(core, op.text, op.params, op.rowMode, op.project, op.retry, op.span, op.resent + 1)
          : oneShot(core, op.text, op.params, op.rowMode, op.project, false, op.span, op.resent)
      )
    )
  }
  return Effect.zipRight(released, Effect.fail(error))
}
