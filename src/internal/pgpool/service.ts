/**
 * The `PgPool` service: the pool for ordinary work and, with several hosts, the read pools of the standbys and
 * the router over them (the composite lives here, above the pool cores). It pins connections for
 * `withConnection`, routes work, watches for leaks, makes the spans of `PgPool.query` and `withConnection`,
 * and builds the pools in `make`.
 *
 * @internal
 */
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as FiberSet from "effect/FiberSet"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as Connector from "../../Connector.js"
import type * as PgPool from "../../PgPool.js"
import {
  ConnectionError,
  type DrainTimeoutError,
  type PoolClosedError,
  type PoolError,
  type QueryError
} from "../../PgPoolError.js"
import { resolve, type ResolvedConfig, resolveSizes } from "../config/resolve.js"
import { mainPolicy, standbyPolicy } from "../connection/hosts.js"
import { endedError, type Physical } from "../connection/physical.js"
import { Topology } from "../connection/topology.js"
import type { PoolCore } from "../pool/core.js"
import { drain, makeCore, purgeExpired, resize, startMaintenance, warmup } from "../pool/maintenance.js"
import { oneShot, rowsOf } from "../pool/oneShot.js"
import { release, releaseWith } from "../pool/release.js"
import { aggregate, connectionLog, hostStats, snapshot } from "../pool/stats.js"
import * as Tracing from "../tracing.js"
import { currentReadOnly, memberOf, outlivedTransaction, ownPins, pinOf, setRef } from "./pin.js"
import {
  carried,
  currentReadYourWrites,
  currentWrites,
  formatLsn,
  invalidLsn,
  markWrite,
  parseLsn,
  Replay,
  replayTarget,
  writePosition
} from "./readYourWrites.js"
import { markReroutable, type ReadPool, Router } from "./routing.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** @internal */
export const tag: Context.Tag<PgPool.PgPool, PgPool.PgPool> = Context.GenericTag<PgPool.PgPool>("effect-pg-pool/PgPool")

/** @internal */
export const TypeId: PgPool.TypeId = Symbol.for("effect-pg-pool/PgPool") as PgPool.TypeId

const ServiceId: unique symbol = Symbol.for("effect-pg-pool/PgPool/service")

/** The implementation behind a `PgPool` built by this package (undefined for another implementation). @internal */
export const serviceOf = (pool: PgPool.PgPool): PgPoolService | undefined =>
  (pool as { readonly [ServiceId]?: PgPoolService })[ServiceId]

/** A checked-out connection as the user sees it. @internal */
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
    Effect.withFiberRuntime((fiber) =>
      this.released ? Effect.fail(usedAfterRelease(this)) : this.conn.rows(text, params, memberOf(fiber, this.conn))
    )
  get invalidate(): Effect.Effect<void> {
    return Effect.suspend(() => this.released ? Effect.void : this.conn.invalidate)
  }
}

/** The error of a handle used after its connection went back. @internal */
export const usedAfterRelease = (handle: Handle): ConnectionError =>
  new ConnectionError({
    message:
      `Connection used after it was returned to the pool (backend ${handle.backendPid}): keep the Scope of PgPool.connection open while you use it`
  })

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
    const pool = Context.unsafeGet(fiber.currentContext, tag)
    const service = serviceOf(pool)
    return service === undefined ? pool.query(text, params) : service.queryOn(fiber, text, params)
  })

/** @internal */
export class PgPoolService {
  /** The attributes of this pool's spans that never change (see `Tracing.poolAttributes`). */
  readonly spanAttributes: Tracing.Attributes
  /** The pools of this service: the pool for ordinary work, and the read pools of its standbys. */
  readonly cores: ReadonlyArray<PoolCore>
  readonly service: PgPool.PgPool & { readonly [ServiceId]: PgPoolService }

  constructor(readonly main: PoolCore, readonly router: Router | undefined) {
    this.spanAttributes = Tracing.poolAttributes(main.config)
    const cores = router === undefined ? [main] : [main, ...router.reads.map((read) => read.core)]
    this.cores = cores
    if (router !== undefined) {
      const view = () => hostStats(main, cores)
      for (const core of cores) core.hostsView = view
    }
    this.service = {
      [TypeId]: TypeId,
      [ServiceId]: this,
      connection: this.connection,
      query: this.query,
      withConnection: this.withConnection,
      readOnly: this.readOnly,
      readYourWrites: this.readYourWrites,
      writeLsn: this.writeLsn,
      stats: Effect.sync(() => {
        for (const core of cores) core.updateGauges()
        return router === undefined ? snapshot(main) : aggregate(main, cores)
      }),
      purgeExpired: Effect.map(
        Effect.forEach(cores, (core) => purgeExpired(core)),
        (counts) => counts.reduce((a, b) => a + b, 0)
      ),
      drain: Effect.suspend((): Effect.Effect<void, DrainTimeoutError | PoolClosedError> =>
        main.closed
          ? Effect.fail(main.closedError())
          : Effect.forEach(cores, (core) => drain(core), { concurrency: "unbounded", discard: true })
      ),
      resize: (options) =>
        Effect.suspend((): Effect.Effect<void, ConfigError.ConfigError | PoolClosedError> => {
          if (main.closed) return Effect.fail(main.closedError())
          const sizes = resolveSizes(main.config, options)
          if (ConfigError.isConfigError(sizes)) return Effect.fail(sizes)
          for (const core of cores) {
            // a standby's read pool keeps its minConnections (0)
            resize(core, core === main ? sizes : { ...sizes, minConnections: core.config.minConnections })
          }
          return Effect.logDebug(
            `pool resized: minConnections ${sizes.minConnections}, maxConnections ${sizes.maxConnections}`
          ).pipe(Effect.annotateLogs({ pool: main.config.name }))
        })
    }
  }

  get config(): ResolvedConfig {
    return this.main.config
  }

  /** Runs `f` on the pool the fiber's work goes to (sent on when a standby cannot connect). */
  routeOr<A, E, R>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    f: (target: PoolCore) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | ConnectionError, R> {
    const router = this.router
    if (router === undefined) return f(this.main)
    return this.routeWith(fiber, fiber.getFiberRef(currentReadOnly), f, () => Effect.fail(router.noStandby()))
  }

  /**
   * Runs `f` on the pool for work that is read-only or not, on a pool of several hosts with read routing:
   * read-only work on a standby (`none` when there is none and no fallback), the rest on the pool for ordinary
   * work. With read-your-writes, work on the primary marks the fiber's position as to be read, and read-only
   * work after it goes only to a standby that has replayed that position (see `Router.caughtUp`).
   */
  routeWith<A, E, R, E2>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    readOnly: boolean,
    f: (target: PoolCore) => Effect.Effect<A, E, R>,
    none: () => Effect.Effect<never, E2>
  ): Effect.Effect<A, E | E2, R> {
    const router = this.router!
    if (!this.config.readYourWrites && !fiber.getFiberRef(currentReadYourWrites)) {
      return readOnly ? router.runOn(router.pick(), f, none) : f(this.main)
    }
    if (!readOnly) return Effect.ensuring(f(this.main), markWrite(this))
    if (!fiber.getFiberRef(currentWrites).has(this)) return router.runOn(router.pick(), f, none)
    return Effect.flatMap(
      Effect.matchEffect(writePosition(this, this.main), {
        // the primary's position cannot be read (it is away): only the primary is sure to have the writes
        onFailure: () => Effect.succeed(this.main),
        onSuccess: (lsn) =>
          lsn === undefined
            ? Effect.sync(() => router.pick())
            : router.caughtUp(replayTarget(lsn), this.config.readYourWritesTimeout)
      }),
      (target) => router.runOn(target, f, none)
    )
  }

  /** Checks a connection of `core` out as a Handle. Must run in an uninterruptible region; the wait is restored. */
  checkoutHandle(core: PoolCore, restore: Restore): Effect.Effect<Handle, PoolError> {
    const handle = Effect.map(core.checkout(restore), (conn) => new Handle(core, conn))
    if (core.config.leakDetectionThreshold === undefined) return handle
    return Effect.withFiberRuntime((fiber) =>
      Effect.tap(handle, (h) => {
        watchLeak(core, h.conn, Context.getOption(fiber.currentContext, Tracer.ParentSpan))
      })
    )
  }

  releaseHandle(handle: Handle): Effect.Effect<void> {
    return Effect.suspend(() => {
      // given back already: handed over to the next waiter with its transaction's COMMIT (see `handOver`)
      if (handle.released) return Effect.void
      handle.released = true
      return release(handle.core, handle.conn)
    })
  }

  /** `PgPool.connection` on `core`: a checkout given back by a finalizer of the caller's Scope. */
  scopedCheckout(core: PoolCore): Effect.Effect<Handle, PoolError, Scope.Scope> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.withFiberRuntime((fiber) => {
        const scope = Context.unsafeGet(fiber.currentContext, Scope.Scope)
        return Effect.flatMap(
          this.checkoutHandle(core, restore),
          (handle) => Effect.as(Scope.addFinalizer(scope, this.releaseHandle(handle)), handle)
        )
      })
    )
  }

  /**
   * `withConnection` on `core`: runs `effect` with a connection checked out for it, pinned for the fiber, and
   * returned on every exit. An idle connection that needs no ping is taken without leaving the fiber's step;
   * the pin and the return are done in the same step as the end of `effect`.
   */
  withPinned<A, E, R>(
    core: PoolCore,
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    effect: Effect.Effect<A, E, R>,
    span: Tracer.Span | undefined
  ): Effect.Effect<A, E | PoolError, R> {
    return Effect.uninterruptibleMask((restore): Effect.Effect<A, E | PoolError, R> => {
      if (core.closed) return Effect.fail(core.closedError())
      const now = core.clock.unsafeCurrentTimeMillis()
      const use = (conn: Physical) => {
        if (span !== undefined) Tracing.checkedOutFrom(span, core, conn, conn.checkedOutAt - now)
        return this.usePinned(core, fiber, new Handle(core, conn), effect, restore, span)
      }
      const conn = core.takeIdleOrPing(now, true)
      if (conn === undefined) return core.refusal() ?? core.waitThen(restore, now, use)
      if (conn.state === "busy") return use(conn)
      return Effect.flatMap(
        core.validate(conn),
        (alive) => alive ? use(conn) : Effect.flatMap(core.checkout(restore), use)
      )
    })
  }

  usePinned<A, E, R>(
    core: PoolCore,
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    handle: Handle,
    effect: Effect.Effect<A, E, R>,
    restore: Restore,
    span: Tracer.Span | undefined
  ): Effect.Effect<A, E, R> {
    if (core.config.leakDetectionThreshold !== undefined && handle.conn.leakWatch === undefined) {
      watchLeak(core, handle.conn, Context.getOption(fiber.currentContext, Tracer.ParentSpan))
    }
    const box = ownPins(fiber)
    const previous = box.pins
    box.pins = { owner: this, core, handle, tx: undefined, next: previous }
    // the span of withConnection is the parent of the body's spans: set in the fiber's context in place and put
    // back in `done`, in the steps of this region (Effect.withParentSpan, a FiberRef.locally, costs 3 times more)
    const context = span === undefined ? undefined : fiber.currentContext
    if (span !== undefined) setRef(fiber, FiberRef.currentContext, Context.add(context!, Tracer.ParentSpan, span))
    const done = (): Effect.Effect<void> => {
      box.pins = previous
      if (context !== undefined) setRef(fiber, FiberRef.currentContext, context)
      handle.released = true
      return core.counting ? release(core, handle.conn) : releaseWith(core, handle.conn, 0)
    }
    return Effect.matchCauseEffect(restore(effect), {
      onFailure: (cause) => Effect.zipRight(done(), Effect.failCause(cause)),
      onSuccess: (value) => {
        const released = done()
        return released === Effect.void ? Effect.succeed(value) : Effect.as(released, value)
      }
    })
  }

  /** A statement on the pinned connection of this fiber, if any, else a one-shot statement. */
  statement<A>(
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A
  ): Effect.Effect<A, PoolError | QueryError> {
    return Effect.withFiberRuntime((fiber) => this.statementOn(fiber, text, params, rowMode, project, undefined))
  }

  statementOn<A>(
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    text: string,
    params: ReadonlyArray<unknown> | undefined,
    rowMode: "array" | undefined,
    project: (result: Connector.QueryResult) => A,
    span: Tracer.Span | undefined
  ): Effect.Effect<A, PoolError | QueryError> {
    const pin = pinOf(fiber, this)
    if (pin !== undefined) {
      const handle = pin.handle
      if (handle.released) return Effect.fail(usedAfterRelease(handle))
      if (span !== undefined) Tracing.checkedOutFrom(span, handle.core, handle.conn, undefined)
      return handle.conn.runThen(
        text,
        params,
        rowMode,
        (result) => Effect.succeed(project(result)),
        memberOf(fiber, handle.conn)
      )
    }
    if (outlivedTransaction(fiber, this)) return Effect.fail(endedError())
    return this.router === undefined
      ? oneShot(this.main, text, params, rowMode, project, this.main.config.retryLostQueries, span)
      : this.routeOr(
        fiber,
        (target) => oneShot(target, text, params, rowMode, project, target.config.retryLostQueries, span)
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
      : this.statementOn(fiber, text, params, undefined, rowsOf, undefined)
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
      return Effect.tapError(
        this.statementOn(fiber, text, params, undefined, project, span),
        (error) => Tracing.failed(span, error)
      )
    })
  }

  readonly connection: Effect.Effect<PgPool.PooledConnection, PoolError, Scope.Scope> = Effect.withFiberRuntime(
    (fiber) => {
      const pin = pinOf(fiber, this)
      return pin === undefined
        ? this.routeOr(fiber, (target) => this.scopedCheckout(target))
        : Effect.succeed(pin.handle)
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
      return this.routeOr(fiber, (target) => this.withPinned(target, fiber, effect, undefined))
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
      return this.routeOr(fiber, (target) => this.withPinned(target, fiber, effect, span))
    })
  }

  readonly readOnly = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.locally(effect, currentReadOnly, true)

  readonly readYourWrites = <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options?: PgPool.ReadYourWritesOptions
  ): Effect.Effect<A, E | QueryError, R> => {
    const after = options?.after
    const lsn = after === undefined ? undefined : parseLsn(String(after))
    if (after !== undefined && lsn === undefined) return Effect.fail(invalidLsn(String(after)))
    const body = lsn === undefined
      ? effect
      : Effect.zipRight(FiberRef.update(currentWrites, carried(this, lsn)), effect)
    // a scope of its own: the positions of writes inside it are forgotten after it
    return body.pipe(Effect.locally(currentReadYourWrites, true), Effect.locally(currentWrites, new Map()))
  }

  get writeLsn(): Effect.Effect<Option.Option<string>, PoolError | QueryError> {
    return Effect.map(writePosition(this, this.main), (lsn) => Option.map(Option.fromNullable(lsn), formatLsn))
  }
}

/** Logs a warning, naming the span and the code that checked the connection out, when it is held too long. */
const watchLeak = (core: PoolCore, conn: Physical, span: Option.Option<Tracer.AnySpan>): void => {
  const threshold = core.config.leakDetectionThreshold!
  const trace = new Error("connection checked out here").stack ?? ""
  const spanName = Option.match(span, {
    onNone: () => "(no span)",
    onSome: (span) => span._tag === "Span" ? span.name : `external span ${span.spanId}`
  })
  conn.leakWatch = core.runBackground(
    Effect.sleep(threshold).pipe(
      Effect.zipRight(Effect.logWarning(
        `possible connection leak: backend ${conn.driver.backendPid} has been checked out for more than ${threshold} ms, in span "${spanName}"`
      )),
      Effect.annotateLogs({ ...connectionLog(core, conn), span: spanName, checkedOutAt: trace })
    )
  )
}

/** @internal */
export const make = (
  config: PgPool.Config
): Effect.Effect<PgPool.PgPool, ConnectionError | ConfigError.ConfigError, Scope.Scope | Connector.Connector> =>
  Effect.gen(function*() {
    const resolved = yield* resolve(config)
    const connector = yield* Connector.Connector
    const runTopology = yield* FiberSet.makeRuntime<never, unknown, unknown>()
    const topology = new Topology(resolved, connector, runTopology)
    resolved.pooler.report = (log) => void runTopology(Effect.annotateLogs(log, { pool: resolved.name }))
    if (resolved.hosts.length === 1) {
      const core = yield* makeCore(resolved, {
        policy: mainPolicy(resolved, topology),
        topology,
        hosts: topology.states,
        forReads: false,
        onConnectFailure: undefined
      })
      if (!resolved.lazy) yield* warmup(core)
      startMaintenance(core)
      return new PgPoolService(core, undefined).service
    }
    const probeAll = Effect.forEach(topology.states, (state) => Effect.ignore(topology.probe(state)), {
      concurrency: "unbounded",
      discard: true
    })
    if (resolved.lazy) runTopology(Effect.zipRight(probeAll, topology.recheck))
    else {
      yield* probeAll
      runTopology(topology.recheck)
    }
    const main = yield* makeCore(resolved, {
      policy: mainPolicy(resolved, topology),
      topology,
      hosts: topology.states,
      forReads: false,
      onConnectFailure: undefined
    })
    let router: Router | undefined
    if (resolved.readRouting === "standby") {
      const reads: Array<ReadPool> = []
      for (const state of topology.states) {
        const readConfig: ResolvedConfig = {
          ...resolved,
          minConnections: 0,
          maxIdle: Math.min(resolved.maxIdle, resolved.maxConnections),
          lazy: true,
          name: `${resolved.name}/read@${state.key}`
        }
        const read: PoolCore = yield* makeCore(readConfig, {
          policy: standbyPolicy(state),
          topology,
          hosts: [state],
          forReads: true,
          onConnectFailure: (error) => markReroutable(read)(error)
        })
        startMaintenance(read)
        reads.push({ state, core: read, replay: new Replay(read) })
      }
      router = new Router(main, reads, resolved)
    }
    if (!resolved.lazy) yield* warmup(main)
    startMaintenance(main)
    return new PgPoolService(main, router).service
  })
