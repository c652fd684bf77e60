/**
 * `listen` of the SqlClient: LISTEN on a dedicated connection to the primary (outside the pool), opened again
 * on the primary of the moment when it is lost, with every channel listened to again.
 *
 * @internal
 */
import { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as RcRef from "effect/RcRef"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type * as Connector from "../../Connector.js"
import { type ConnectionError, type QueryError } from "../../PgPoolError.js"
import type { HostState } from "../connection/hosts.js"
import { isTransientConnectError, noHostFits, openOn, tryHosts } from "../connection/open.js"
import type { PoolCore } from "../pool/core.js"
import { toSqlError } from "./connection.js"

const quoteIdent = (name: string) => `"${name.replace(/"/g, "\"\"")}"`

/** A `listen` stream: where its payloads go, and how it ends when its channel cannot be listened to. */
interface Subscriber {
  readonly emit: (payload: string) => void
  readonly fail: (error: SqlError) => void
}

/** Why a life of the listen connection failed, and whether opening it again (per `reconnect`) may help. */
class ListenFailure extends Data.TaggedError("ListenFailure")<{
  readonly error: ConnectionError | QueryError
  readonly transient: boolean
}> {}

/**
 * A LISTEN error is about the server (a `ListenFailure`) or about the channel (the `QueryError` itself, e.g.
 * an empty name). About the server: the connection is gone, the server is shutting down or out of resources,
 * or it is in recovery (SQLSTATE 25006). A new connection may succeed; after a 25006 only when hosts are chosen
 * by their role (the server was a primary when its role was read, and a new choice finds the primary of
 * now): a pool that does not read roles (one host, `targetSessionAttrs: "any"`) would reach the same standby.
 */
const classify = (core: PoolCore, error: ConnectionError | QueryError): ListenFailure | QueryError => {
  if (error._tag === "ConnectionError") return new ListenFailure({ error, transient: isTransientConnectError(error) })
  if (error.code.startsWith("25")) return new ListenFailure({ error, transient: core.policy.checkRole })
  return /^(08|53|57)/.test(error.code) ? new ListenFailure({ error, transient: true }) : error
}

/**
 * Opens the listen connection on the primary, where `notify` (a write) runs and notifications are
 * delivered. Hosts are tried in the order of the pool's own policy for ordinary work (`loadBalanceHosts`),
 * hosts known to be standbys after the others and hosts that are down last, each opened as the pool opens its
 * connections (connect, `setSession`, and the server's role when the pool reads roles: several hosts, or a
 * `targetSessionAttrs` other than "any") and marked up or down in the pool's topology; a standby, which cannot
 * LISTEN, is closed again. The failure is transient when a host did not answer: it may come back, or a standby
 * may be promoted meanwhile (a failover); when every host answered and none is a primary, it is not.
 */
const openListen = (
  core: PoolCore,
  onLost: () => void
): Effect.Effect<Connector.Connection, ListenFailure, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) => {
    const policy = core.policy
    return tryHosts(core.topology, restore, {
      passes: 1,
      candidates: () => [...policy.candidates()].sort((a, b) => listenRank(a) - listenRank(b)),
      accepts: (server) => server === undefined || server.role === "primary",
      open: (state) => openOn(core, state, { setSession: true, checkRole: policy.checkRole }),
      skipKnown: true
    }).pipe(
      Effect.matchEffect({
        onFailure: (failure) =>
          Effect.fail(
            new ListenFailure({
              error: noHostFits(
                "No primary to LISTEN on (notifications are delivered on the primary)",
                failure,
                core.config.database
              ),
              transient: failure.transient
            })
          ),
        onSuccess: ({ opened }) => {
          opened.loss.attach(() => onLost())
          return Effect.as(Effect.addFinalizer((end) => Scope.close(opened.scope, end)), opened.driver)
        }
      })
    )
  })

const listenRank = (state: HostState): number => state.down ? 2 : state.role === "standby" ? 1 : 0

/**
 * LISTEN on a dedicated connection (outside the pool), on the primary (see `openListen`). When that connection
 * is lost it is reopened, on the server that is the primary by then, and every channel with subscribers is
 * listened to again; failed opens are retried per the pool's `reconnect` schedule while they are transient.
 * A LISTEN the server rejects is a failure, never silence: a channel it rejects (e.g. an empty name) fails
 * the streams of that channel; a rejection that is about the server (it is in recovery) opens the connection
 * again; when opening it fails for good, every stream fails with the error and the next `listen` tries again.
 * A semaphore keeps subscriptions and the (re)start of the connection from interleaving.
 */
class Listener {
  readonly channels = new Map<string, Set<Subscriber>>()
  readonly lock = Effect.unsafeMakeSemaphore(1)
  driver: Connector.Connection | undefined = undefined
  /** Ends the current life of the connection: succeeds when it was lost, fails when it must be replaced. */
  end: Deferred.Deferred<void, ListenFailure> | undefined = undefined
  up: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  demand: Deferred.Deferred<void> = Deferred.unsafeMake<void>(FiberId.none)
  constructor(readonly core: PoolCore) {}

  dispatch = (notification: Connector.Notification) => {
    const subscribers = this.channels.get(notification.channel)
    if (subscribers === undefined) return
    for (const subscriber of subscribers) subscriber.emit(notification.payload)
  }

  execute(driver: Connector.Connection, text: string): Effect.Effect<void, QueryError | ConnectionError> {
    return Effect.async<void, QueryError | ConnectionError>((resume) => {
      driver.send(text, undefined, undefined, (error) => resume(error === undefined ? Effect.void : Effect.fail(error)))
    })
  }

  /** The server rejected LISTEN for this channel: its streams fail. */
  reject(channel: string, error: QueryError): void {
    const subscribers = this.channels.get(channel)
    this.channels.delete(channel)
    if (subscribers === undefined) return
    const failure = listenError(channel, error)
    for (const subscriber of subscribers) subscriber.fail(failure)
  }

  /** Listening failed for good: every stream fails, and the next subscription starts afresh. */
  failAll(failure: ListenFailure): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      const error = toSqlError(failure.error)
      const subscribers = [...this.channels.values()].flatMap((set) => [...set])
      this.channels.clear()
      this.demand = Deferred.unsafeMake<void>(FiberId.none)
      for (const subscriber of subscribers) subscriber.fail(error)
      return Effect.logWarning(`listen failed: ${failure.error.message}`).pipe(
        Effect.annotateLogs({ ...this.failureLog(failure), streams: subscribers.length })
      )
    }))
  }

  /** One life of the dedicated connection: connect, LISTEN to every channel, wait until it is lost. */
  readonly session: Effect.Effect<void, ListenFailure> = Effect.scoped(Effect.gen(this, function*() {
    const end = yield* Deferred.make<void, ListenFailure>()
    const driver = yield* openListen(this.core, () => Deferred.unsafeDone(end, Exit.void))
    driver.onNotification(this.dispatch)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        this.driver = undefined
        this.end = undefined
        this.up = Deferred.unsafeMake<void>(FiberId.none)
      })
    )
    yield* this.lock.withPermits(1)(Effect.gen(this, function*() {
      for (const channel of [...this.channels.keys()]) {
        const result = yield* Effect.either(this.execute(driver, `LISTEN ${quoteIdent(channel)}`))
        if (Either.isRight(result)) continue
        const failure = classify(this.core, result.left)
        if (failure._tag === "ListenFailure") return yield* Effect.fail(failure)
        this.reject(channel, failure)
      }
      this.driver = driver
      this.end = end
      yield* Deferred.succeed(this.up, undefined)
    }))
    yield* Effect.logDebug("listen connection ready").pipe(
      Effect.annotateLogs({ pool: this.core.config.name, backendPid: driver.backendPid })
    )
    yield* Deferred.await(end)
    yield* Effect.logWarning("listen connection lost; reconnecting").pipe(
      Effect.annotateLogs({ pool: this.core.config.name, backendPid: driver.backendPid })
    )
  }))

  failureLog(failure: ListenFailure): Record<string, unknown> {
    const error = failure.error
    return {
      pool: this.core.config.name,
      host: error._tag === "ConnectionError" ? error.host ?? "" : "",
      port: error._tag === "ConnectionError" ? error.port ?? 0 : 0
    }
  }

  /** Waits until some channel has a subscriber. */
  readonly wanted: Effect.Effect<void> = Effect.suspend(() =>
    this.channels.size > 0 ? Effect.void : Deferred.await(this.demand)
  )

  get supervise(): Effect.Effect<never> {
    return this.wanted.pipe(
      Effect.zipRight(this.session.pipe(
        Effect.tapError((failure) =>
          Effect.logWarning(`listen connection failed: ${failure.error.message}`).pipe(
            Effect.annotateLogs({ ...this.failureLog(failure), transient: failure.transient })
          )
        ),
        Effect.retry({ schedule: this.core.config.reconnect, while: (failure) => failure.transient }),
        Effect.catchAll((failure) => this.failAll(failure))
      )),
      Effect.forever
    )
  }

  subscribe(channel: string, subscriber: Subscriber): Effect.Effect<void, SqlError> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      let subscribers = this.channels.get(channel)
      const first = subscribers === undefined
      if (subscribers === undefined) {
        subscribers = new Set()
        this.channels.set(channel, subscribers)
      }
      subscribers.add(subscriber)
      Deferred.unsafeDone(this.demand, Exit.void)
      const driver = this.driver
      if (!first || driver === undefined) return Effect.void
      return Effect.catchAll(this.execute(driver, `LISTEN ${quoteIdent(channel)}`), (error) => {
        const failure = classify(this.core, error)
        if (failure._tag === "QueryError") {
          this.channels.delete(channel)
          return Effect.fail(listenError(channel, failure))
        }
        if (this.end !== undefined) Deferred.unsafeDone(this.end, Exit.fail(failure))
        return Effect.void
      })
    }))
  }

  unsubscribe(channel: string, subscriber: Subscriber): Effect.Effect<void> {
    return this.lock.withPermits(1)(Effect.suspend(() => {
      const subscribers = this.channels.get(channel)
      if (subscribers === undefined || !subscribers.delete(subscriber) || subscribers.size > 0) return Effect.void
      this.channels.delete(channel)
      if (this.channels.size === 0) this.demand = Deferred.unsafeMake<void>(FiberId.none)
      const driver = this.driver
      return driver === undefined ? Effect.void : Effect.ignore(this.execute(driver, `UNLISTEN ${quoteIdent(channel)}`))
    }))
  }

  /** Completes once the dedicated connection is up and listening. */
  readonly ready: Effect.Effect<void> = Effect.suspend(() => Deferred.await(this.up))
}

const listenError = (channel: string, error: QueryError): SqlError =>
  new SqlError({ cause: error, message: `LISTEN ${quoteIdent(channel)} failed: ${error.message}` })

/** The longest name PostgreSQL keeps, in bytes (NAMEDATALEN - 1). */
const MAX_NAME_BYTES = 63

/**
 * A channel name the server would not listen to as given, or `undefined`. A longer name than 63 bytes is
 * shortened by LISTEN (with only a NOTICE), so its notifications would arrive under the shortened name, never
 * this stream's (and `notify`'s pg_notify refuses it); a NUL would end the statement's text.
 */
const invalidChannel = (channel: string): SqlError | undefined => {
  if (typeof channel !== "string") {
    return new SqlError({ message: `A channel name must be a string; got ${typeof channel}` })
  }
  const bytes = Buffer.byteLength(channel)
  const why = bytes > MAX_NAME_BYTES
    ? `a channel name is at most ${MAX_NAME_BYTES} bytes, this one has ${bytes} (PostgreSQL would shorten it, and ` +
      `its notifications would arrive under the shortened name, never on this stream)`
    : channel.includes("\0")
    ? "a channel name cannot hold a NUL character"
    : undefined
  return why === undefined ? undefined : new SqlError({ message: `Cannot listen to ${quoteIdent(channel)}: ${why}` })
}

/** `listen` with `pooler: "transaction"`: refused, as a transaction pooler does not keep a LISTEN anywhere. */
const behindPooler = (channel: string): SqlError =>
  new SqlError({
    message: `Cannot listen to ${
      quoteIdent(channel)
    } with pooler: "transaction": a transaction pooler keeps no session, so a LISTEN would stay on a server connection other clients get next and its notifications would never reach this one. Listen on a pool with a direct connection to the server (its own url, without the pooler)`
  })

/**
 * `PgClient.listen` on the pool `core`: the streams of all channels share one dedicated connection, opened
 * while some stream is listening (and a second longer).
 *
 * @internal
 */
export const makeListen = (
  core: PoolCore
): Effect.Effect<(channel: string) => Stream.Stream<string, SqlError>, never, Scope.Scope> =>
  Effect.map(
    RcRef.make({
      acquire: Effect.gen(function*() {
        const listener = new Listener(core)
        yield* Effect.forkScoped(listener.supervise)
        return listener
      }),
      idleTimeToLive: "1 second"
    }),
    (listener) => (channel: string) => {
      const invalid = invalidChannel(channel)
      if (invalid !== undefined) return Stream.fail(invalid)
      return core.config.pooler.mode === "transaction" ?
        Stream.fail(behindPooler(channel)) :
        Stream.asyncPush<string, SqlError>((emit) =>
          Effect.gen(function*() {
            const active = yield* RcRef.get(listener)
            const failed = yield* Deferred.make<void>()
            const subscriber: Subscriber = {
              emit: (payload) => {
                emit.single(payload)
              },
              fail: (error) => {
                emit.fail(error)
                Deferred.unsafeDone(failed, Exit.void)
              }
            }
            yield* Effect.acquireRelease(
              active.subscribe(channel, subscriber),
              () => active.unsubscribe(channel, subscriber)
            )
            yield* Effect.timeoutOption(
              Effect.raceFirst(active.ready, Deferred.await(failed)),
              core.config.connectTimeout
            )
          })
        )
    }
  )
