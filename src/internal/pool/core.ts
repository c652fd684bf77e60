/**
 * The pool core: a bounded set of physical connections, the idle ones and a FIFO queue of waiters, written
 * from Effect primitives. All bookkeeping is synchronous JavaScript run inside Effect steps (one thread, so a
 * step is atomic with respect to other fibers); only connecting, resetting, pinging and closing are effects,
 * and they run in fibers of the pool's own FiberSets. The return path is in `release.ts`, connecting in
 * `connecting.ts`, the one-shot statement in `oneShot.ts`, maintenance and shutdown in `maintenance.ts`.
 *
 * Invariants (each also stated where it is kept):
 * - one fiber per connection: a connection is idle, handed to one waiter, or checked out;
 * - no connection sits idle while a fiber waits (every path that frees one offers it to the queue first);
 * - waiters are served first come, first served, and all share one acquire timeout;
 * - `size + closing <= maxConnections`.
 *
 * @internal
 */
import type * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type * as Random from "effect/Random"
import * as Scope from "effect/Scope"
import type * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import { ConnectionError, PoolClosedError, type PoolError, PoolExhaustedError } from "../../PgPoolError.js"
import type { ResolvedConfig } from "../config/resolve.js"
import type { HostPolicy, HostState } from "../connection/hosts.js"
import type { ConnState, Physical, SessionEnv } from "../connection/physical.js"
import type { Topology } from "../connection/topology.js"
import { fill, topUp } from "./connecting.js"
import * as Metrics from "./metrics.js"
import { release } from "./release.js"
import { connectionLog, hostStats, LimitLog, snapshot, Tally, timeoutError } from "./stats.js"
import { CheckoutWaiter, type Waiter, WaiterQueue } from "./waiters.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * With pipelining, a connection on which nothing was answered for this long (ms) takes no more statements
 * behind the ones in flight: its statement is a long one.
 */
const PIPELINE_STALL = 20

/** A connect in flight: what `size` counts until it ends. @internal */
export interface ConnectToken {
  readonly startedAt: number
}

/** What a pool core is for, besides its configuration. @internal */
export interface CoreRole {
  readonly policy: HostPolicy
  readonly topology: Topology
  /** The hosts this pool's connections may go to. */
  readonly hosts: ReadonlyArray<HostState>
  /**
   * A standby's read pool: a failed connect goes to its waiter at once (the router picks again), where the pool
   * for ordinary work retries per `reconnect` while someone waits; its name tells spans the connection served
   * reads.
   */
  readonly forReads: boolean
  /** What a waiter gets when a connect failed (a read pool marks it for the router). */
  readonly onConnectFailure: ((error: ConnectionError) => ConnectionError) | undefined
}

/** @internal */
export class PoolCore {
  readonly idle: Array<Physical> = []
  /** Every connection of the pool (opened, not closed yet), whatever its state. */
  readonly all = new Set<Physical>()
  readonly queue = new WaiterQueue()
  /**
   * With pipelining (`pipelineDepth` > 1): the connections checked out by one-shot statements, which more
   * one-shot statements may ride (sent behind the ones in flight), up to `pipelineDepth` in flight each. A
   * connection leaves when its last statement is answered; whichever statement that is gives it back.
   */
  readonly pipelines: Array<Physical> = []
  /**
   * How long pipelines take per statement answered, over every connection (a moving average, clock ms; -1
   * before the first answer): the pace a connection not measured yet is taken to have.
   */
  pipelinePace = -1
  readonly connects = new Set<ConnectToken>()
  /** Connections checked out ("busy"): changed only by `setState`. */
  inUse = 0
  /** Connections being closed: changed only by `setState` and the closer. */
  closing = 0
  closed = false
  readonly tally = new Tally()
  consecutiveFailures = 0
  lastFailureAt = 0
  lastConnectError: ConnectionError | undefined = undefined
  timerWake: ((effect: Effect.Effect<void>) => void) | undefined = undefined
  drained: Deferred.Deferred<void> | undefined = undefined
  readonly metrics: Metrics.PoolMetrics | undefined
  readonly limits: LimitLog
  readonly env: SessionEnv
  readonly policy: HostPolicy
  readonly topology: Topology
  /** Host stats across the pools of one service (set by the service with several hosts). */
  hostsView: (() => ReadonlyArray<PgPool.HostStats>) | undefined = undefined

  constructor(
    /** Replaced as a whole by `PgPool.resize` (its sizes): read it where it is used, never keep it. */
    public config: ResolvedConfig,
    readonly connector: Connector.Connector,
    readonly clock: Clock.Clock,
    readonly random: Random.Random,
    readonly runBackground: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>,
    readonly runCloser: <A, E>(effect: Effect.Effect<A, E>) => Fiber.RuntimeFiber<A, E>,
    readonly role: CoreRole
  ) {
    this.policy = role.policy
    this.topology = role.topology
    this.metrics = config.metrics
      ? Metrics.make(config.name, {
        max: config.maxConnections,
        idleMax: config.maxIdle,
        idleMin: config.minConnections
      })
      : undefined
    this.limits = new LimitLog(config.name)
    this.env = {
      counting: config.maxUsage !== Infinity,
      queryTimeout: config.queryTimeout,
      pingTimeout: config.healthCheck.timeout,
      runCloser
    }
  }

  /** Open connections, idle + in use + being opened (closing ones not). */
  get size(): number {
    return this.all.size - this.closing + this.connects.size
  }

  get waiting(): number {
    return this.queue.length
  }

  get pending(): number {
    return this.connects.size
  }

  /** Statements are counted per connection only when `maxUsage` is set. */
  get counting(): boolean {
    return this.env.counting
  }

  hostStats(): ReadonlyArray<PgPool.HostStats> {
    return this.hostsView === undefined ? hostStats(this, [this]) : this.hostsView()
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

  /**
   * The one place a connection's state changes. It keeps `inUse` and `closing`, records how long a checkout
   * held the connection when it leaves "busy" (once per checkout), sets the gauges, and completes the drain of
   * a closing pool when the last checked-out connection comes back.
   */
  setState(conn: Physical, next: ConnState, now: number): void {
    const previous = conn.state
    if (previous === "busy") {
      this.inUse--
      const held = now - conn.checkedOutAt
      if (this.metrics !== undefined) this.metrics.useTime(held)
      if (this.config.shedLoad) {
        // how long checkouts hold a connection lately (shedLoad's prediction)
        this.holdAverage = this.holdSamples === 0 ? held : this.holdAverage * 0.9 + held * 0.1
        this.holdSamples++
      }
    }
    if (next === "busy") {
      this.inUse++
      conn.checkedOutAt = now
    } else if (next === "idle") {
      conn.idleSince = now
    } else if (next === "closing") {
      this.closing++
    }
    conn.state = next
    if (this.inUse < 0) throw new Error(`effect-pg-pool bug: inUse went below 0 (${previous} -> ${next})`)
    this.updateGauges()
    if (previous === "busy" && this.inUse === 0 && this.drained !== undefined) {
      Deferred.unsafeDone(this.drained, Exit.void)
    }
  }

  /** Checks a connection out to a fiber that waited `waited` ms. */
  markBusy(conn: Physical, now: number, waited: number): void {
    this.setState(conn, "busy", now)
    this.tally.acquired++
    if (this.metrics !== undefined) this.metrics.waitTime(waited)
  }

  /** Puts a connection nobody waits for on the idle list. */
  putIdle(conn: Physical, now: number): void {
    this.idle.push(conn)
    this.setState(conn, "idle", now)
  }

  /**
   * A connection comes free: to the first waiter, else onto the idle list when there is `room`, else closed.
   * Every path that frees a connection goes through here, so no connection sits idle while a fiber waits.
   */
  offer(conn: Physical, now: number, room: boolean): void {
    if (this.deliver(conn, now)) return
    if (room) this.putIdle(conn, now)
    else this.closeDetached(conn, "maxIdle")
  }

  /** Pops a usable idle connection (closing dead and expired ones on the way); the caller owns it. */
  takeIdle(now: number, probe = false): Physical | undefined {
    let conn: Physical | undefined
    while ((conn = this.idle.pop()) !== undefined) {
      if (conn.broken) this.closeDetached(conn, "broken")
      else if (now >= conn.expiresAt) this.closeDetached(conn, "lifetime")
      else if (!this.fits(conn)) this.closeDetached(conn, "role")
      // (one given back within this millisecond answered its last statement just now: not probed, which under
      // load, where a connection is taken again as soon as it is back, would cost a system call per checkout)
      else if (probe && now > conn.idleSince && conn.driver.probe?.() === false) this.closeDetached(conn, "broken")
      else return conn
    }
    return undefined
  }

  /**
   * The checkout prelude, in one step (no yield between taking a connection and marking it, so no other fiber
   * can take it): a usable idle connection, checked out, or, when it has been idle long enough to need a ping,
   * in "checking" (the caller `validate`s it); undefined when none is idle. With `probe` (a checkout whose first
   * statement could not be sent again on another connection: pinned, scoped, transactions), an idle connection
   * the network has reset is found and closed before it is handed out (see `Connection.probe`); a one-shot
   * statement needs no probe: written into a reset socket, it never left, and is sent again.
   */
  takeIdleOrPing(now: number, probe = false): Physical | undefined {
    const conn = this.takeIdle(now, probe)
    if (conn === undefined) return undefined
    const health = this.config.healthCheck
    if (health.enabled && now - conn.idleSince >= health.idleThreshold) this.setState(conn, "checking", now)
    else this.markBusy(conn, now, 0)
    return conn
  }

  /** The moving average of how long a checkout held its connection (ms), and how many it has seen. */
  holdAverage = 0
  holdSamples = 0

  /**
   * The wait a new checkout can expect when it must queue for a busy connection: the waiters ahead of it
   * (and itself), served `maxConnections` at a time, each holding a connection `holdAverage` (undefined
   * before enough checkouts were seen, or when a connect will serve it).
   */
  predictedWait(): number | undefined {
    if (this.holdSamples < 10) return undefined
    const ahead = this.waitingForBusy() + 1
    if (ahead <= 0) return undefined
    return (ahead / this.config.maxConnections) * this.holdAverage
  }

  /** `PgPool.drain`: connections opened at or before this time are closed instead of reused. */
  drainBefore = -Infinity
  /** The drains in progress, resumed once no connection of theirs is left (see `checkDrains`). */
  readonly drains = new Set<{ readonly before: number; readonly done: () => void }>()

  /** How many connections opened at or before `before` are still open (or closing). */
  olderThan(before: number): number {
    let n = 0
    for (const conn of this.all) if (conn.createdAt <= before) n++
    return n
  }

  /** Resumes the drains that have nothing left to wait for. */
  checkDrains(): void {
    for (const drain of this.drains) {
      if (this.olderThan(drain.before) === 0) {
        this.drains.delete(drain)
        drain.done()
      }
    }
  }

  /** A connection broke since the last successful connect: the server may be going away. */
  suspect = false

  /**
   * With no open connection (a cold pool), or after a connection broke (the server may be restarting), one
   * connect at a time until one succeeds: the waiters wait for its outcome, and a failure marks the host down,
   * so that a burst of demand is not a burst of connects against a server that may not answer.
   */
  gated(): boolean {
    return this.connects.size > 0 && (this.suspect || this.all.size - this.closing === 0)
  }

  /** The last `strandedError`. */
  private stranded: ConnectionError | undefined = undefined

  /** False while every host of the pool is down and probed: no connect is started until a probe gets in. */
  reachable(): boolean {
    for (const state of this.role.hosts) if (!state.leftToProbe) return true
    return false
  }

  /**
   * The error of a checkout nothing can serve: every host is down, and no connection is out (to come back) or
   * being opened. Undefined when something may still serve it.
   */
  strandedError(): ConnectionError | undefined {
    if (this.inUse > 0 || this.connects.size > 0 || this.reachable()) return undefined
    const hosts = this.role.hosts
    const last = hosts.length === 1 ? hosts[0]!.lastError : hosts.find((state) => state.lastError)?.lastError
    const attempts = hosts.reduce((n, state) => n + state.failures, 0)
    // the same state gives the same error: callers failing fast at a high rate build it once
    const cached = this.stranded
    if (cached !== undefined && cached.cause === last && cached.attempts === attempts) return cached
    return this.stranded = new ConnectionError({
      message: hosts.length === 1
        ? hosts[0]!.unreachable
        : `No host is up: ${hosts.map((state) => state.unreachable).join("; ")}`,
      cause: last,
      host: last?.host ?? hosts[0]!.host.host,
      port: last?.port ?? hosts[0]!.host.port,
      database: this.config.database,
      code: last?.code,
      attempts
    })
  }

  /** Why a checkout that found no idle connection must fail at once, if it must. */
  refusal(): Effect.Effect<never, PoolExhaustedError | ConnectionError> | undefined {
    const stranded = this.strandedError()
    if (stranded !== undefined) return Effect.fail(stranded)
    const config = this.config
    if (!config.blocking && this.size + this.closing >= config.maxConnections) return this.refuse("maxConnections")
    if (config.maxWaiting !== Infinity && this.waitingForBusy() >= config.maxWaiting) return this.refuse("maxWaiting")
    if (config.shedLoad) {
      const predicted = this.predictedWait()
      if (predicted !== undefined && predicted > config.acquireTimeout) return this.shed(predicted)
    }
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

  /** A checkout refused as sure to time out (`shedLoad`): counted as a timeout and as shed. */
  shed(predicted: number): Effect.Effect<never, PoolExhaustedError> {
    this.tally.timeouts++
    this.tally.shed++
    if (this.metrics !== undefined) this.metrics.shed()
    const error = new PoolExhaustedError({
      reason: "overloaded",
      stats: snapshot(this),
      waitedMillis: Math.round(predicted)
    })
    return Effect.zipRight(this.limits.log(error, this.clock.unsafeCurrentTimeMillis()), Effect.fail(error))
  }

  refuse(reason: "maxConnections" | "maxWaiting"): Effect.Effect<never, PoolExhaustedError> {
    const error = new PoolExhaustedError({ reason, stats: snapshot(this) })
    return Effect.zipRight(this.limits.log(error, this.clock.unsafeCurrentTimeMillis()), Effect.fail(error))
  }

  /** Takes a connection. Must run in an uninterruptible region; only the wait is made interruptible. */
  checkout(restore: Restore): Effect.Effect<Physical, PoolError> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.fail(this.closedError())
      const now = this.clock.unsafeCurrentTimeMillis()
      const conn = this.takeIdleOrPing(now, true)
      if (conn === undefined) return this.refusal() ?? this.waitThen(restore, now, Effect.succeed)
      if (conn.state === "busy") return Effect.succeed(conn)
      return Effect.flatMap(this.validate(conn), (alive) => alive ? Effect.succeed(conn) : this.checkout(restore))
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

  /** Pings a connection in "checking" taken for a checkout: true (and checked out) if it answered. */
  validate(conn: Physical): Effect.Effect<boolean> {
    return this.checked(conn, (now) => this.markBusy(conn, now, 0))
  }

  /**
   * Pings a connection in "checking" and settles it on every exit: `onAlive` takes it when it answered (and the
   * pool is open); otherwise (no answer, or the ping cut off by an interruption, which leaves a statement on it)
   * it is closed. True when it answered.
   */
  checked(conn: Physical, onAlive: (now: number) => void): Effect.Effect<boolean> {
    let alive = false
    return Effect.onExit(conn.ping, (exit) => {
      const answered = Exit.isSuccess(exit) && exit.value
      alive = answered && !this.closed
      if (alive) onAlive(this.clock.unsafeCurrentTimeMillis())
      else this.closeDetached(conn, answered ? "poolClosed" : "broken")
      return Effect.void
    }).pipe(Effect.map(() => alive))
  }

  /** Queues a waiter (FIFO: at the tail), wakes the timer for its deadline, and starts a connect if there is room. */
  enqueue(waiter: Waiter): void {
    if (waiter.enqueuedAt === 0) {
      const now = this.clock.unsafeCurrentTimeMillis()
      waiter.enqueuedAt = now
      waiter.deadline = now + this.config.acquireTimeout
    }
    this.queue.push(waiter)
    this.updateGauges()
    if (this.timerWake !== undefined && waiter.deadline !== Infinity) {
      const wake = this.timerWake
      this.timerWake = undefined
      wake(Effect.void)
    }
    fill(this)
  }

  /** An interrupted checkout: leave the queue, or give back the connection handed over meanwhile. */
  cancelWaiter(waiter: Waiter & { readonly conn: Physical | undefined }): Effect.Effect<void> {
    if (this.queue.remove(waiter)) {
      this.updateGauges()
      return Effect.void
    }
    const conn = waiter.conn
    return conn === undefined ? Effect.void : release(this, conn)
  }

  /** Hands a connection to the first waiter (FIFO: the head), checked out before the waiter resumes. */
  deliver(conn: Physical, now: number): boolean {
    const waiter = this.queue.shift()
    if (waiter === undefined) return false
    this.markBusy(conn, now, now - waiter.enqueuedAt)
    waiter.deliver(conn)
    // a one-shot statement took it: the one-shot statements waiting behind it ride it, in the same write
    if (conn.oneShots > 0) this.refill(conn, now)
    return true
  }

  /**
   * The connection a one-shot statement that would wait may ride instead: the least loaded of the pipelines
   * with room, once the pool has all the connections it may have; none while anything waits (first come,
   * first served) or for a connection due to be replaced.
   */
  pipelineHost(now: number): Physical | undefined {
    // while the pool may grow, a statement waits for a new connection as it always has
    if (this.queue.length > 0 || this.size < this.config.maxConnections) return undefined
    const depth = this.config.pipelineDepth
    let best: Physical | undefined
    for (const conn of this.pipelines) {
      if (
        conn.oneShots < depth && (best === undefined || conn.oneShots < best.oneShots) &&
        this.ridable(conn, now, this.config.acquireTimeout)
      ) {
        best = conn
      }
    }
    return best
  }

  /**
   * Whether more statements may be sent behind the ones in flight on `conn`: not when it is broken, due to be
   * replaced, or stalled (nothing answered on it for `PIPELINE_STALL` ms: a long statement there would hold up
   * every statement behind it, which had better wait for another connection); and only once its pace is known
   * (its own, or the pool's for a connection not measured yet) and the wait it predicts for one more statement
   * (pace times the statements ahead) is within half of what is `left` of the statement's acquire timeout, the
   * bound it has while it waits for a connection instead. With `maxUsage`, not once the statements sent on it
   * reach it: the ones in flight run, and the connection is replaced when the last of them gives it back.
   */
  private ridable(conn: Physical, now: number, left: number): boolean {
    const pace = conn.pipelinePace >= 0 ? conn.pipelinePace : this.pipelinePace
    return pace >= 0 && pace * conn.oneShots * 2 <= left && !conn.broken &&
      now - conn.pipelineMoved < PIPELINE_STALL && now < conn.expiresAt && conn.createdAt > this.drainBefore &&
      this.size <= this.config.maxConnections && conn.sent < this.config.maxUsage
  }

  /** Sends the one-shot statements at the head of the queue on `conn`, while it has room (pipelining). */
  refill(conn: Physical, now: number): void {
    const depth = this.config.pipelineDepth
    let moved = false
    while (conn.oneShots < depth) {
      const head = this.queue.head
      if (head?.ride === undefined || head.exclusive === true || !this.ridable(conn, now, head.deadline - now)) break
      this.queue.shift()
      head.ride(conn, now)
      moved = true
    }
    // the gauges change only when a statement left the queue (this runs at every answer while any wait)
    if (moved) this.updateGauges()
  }

  /**
   * A pipelined statement of `conn` was answered (`answered`), or gives back a place it never used: true when
   * it was the last in flight (it gives `conn` back).
   */
  leavePipeline(conn: Physical, answered: boolean): boolean {
    if (answered) {
      const now = this.clock.unsafeCurrentTimeMillis()
      const took = now - conn.pipelineMoved
      conn.pipelinePace = conn.pipelinePace < 0 ? took : conn.pipelinePace * 0.8 + took * 0.2
      this.pipelinePace = this.pipelinePace < 0 ? took : this.pipelinePace * 0.95 + took * 0.05
      conn.pipelineMoved = now
    }
    if (--conn.oneShots > 0) return false
    const at = this.pipelines.indexOf(conn)
    if (at !== -1) this.pipelines.splice(at, 1)
    return true
  }

  /** A one-shot statement is sent on `conn` with pipelining. */
  joinPipeline(conn: Physical): void {
    if (conn.oneShots++ === 0) {
      conn.pipelineMoved = this.clock.unsafeCurrentTimeMillis()
      this.pipelines.push(conn)
    }
  }

  failHead(error: PoolError): void {
    const waiter = this.queue.shift()
    if (waiter === undefined) return
    this.updateGauges()
    waiter.fail(error)
  }

  expire(waiter: Waiter, now: number): Effect.Effect<void> {
    this.queue.remove(waiter)
    this.updateGauges()
    this.tally.timeouts++
    if (this.metrics !== undefined) this.metrics.timeout()
    const error = timeoutError(this, waiter, now)
    waiter.fail(error)
    return this.limits.log(error, now)
  }

  /**
   * The fiber that times out waiters. Waiters share one acquire timeout, so their deadlines grow along the
   * queue and only the head's needs a timer.
   */
  readonly timerLoop: Effect.Effect<never> = Effect.suspend(() => {
    const head = this.queue.head
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
    return Effect.sleep(Duration.millis(head.deadline - now))
  }).pipe(Effect.forever)

  removeIdle(conn: Physical): void {
    const index = this.idle.indexOf(conn)
    if (index !== -1) this.idle.splice(index, 1)
  }

  /** Closes a connection that is neither idle (the caller took it off the list) nor handed out, in the background. */
  closeDetached(conn: Physical, reason: PgPool.CloseReason): void {
    if (reason === "broken") this.suspect = true
    this.setState(conn, "closing", this.clock.unsafeCurrentTimeMillis())
    this.tally.closed++
    this.tally.closedByReason[reason]++
    this.runCloser(
      Scope.close(conn.scope, Exit.void).pipe(
        Effect.zipRight(Effect.logDebug("connection closed")),
        Effect.annotateLogs({ ...connectionLog(this, conn), reason }),
        Effect.ensuring(Effect.sync(() => {
          this.closing--
          this.all.delete(conn)
          fill(this)
          // a drained connection is replaced at once (minConnections), not at the next maintenance
          if (reason === "drained") topUp(this)
          if (this.drains.size > 0) this.checkDrains()
        })),
        Effect.uninterruptible
      )
    )
  }

  /**
   * True when a connect that started no later than `time` is still in flight. A waiter that times out while a
   * connect has been running for at least half of its wait waited on the database, not on busy connections.
   */
  connectingSince(time: number): boolean {
    for (const token of this.connects) if (token.startedAt <= time) return true
    return false
  }

  closedError(): PoolClosedError {
    return new PoolClosedError({ message: "The pool is closed: its layer's scope has been closed" })
  }
}
