/**
 * The pool's metrics, named after OpenTelemetry's semantic conventions for database client connection
 * pools (`db.client.connection.*`), every one tagged with `db.client.connection.pool.name`. Times are in
 * seconds, as the conventions ask.
 *
 * @internal
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import type * as MetricKeyType from "effect/MetricKeyType"
import * as MetricLabel from "effect/MetricLabel"

const POOL_NAME = "db.client.connection.pool.name"
const STATE = "db.client.connection.state"

const timeBoundaries = MetricBoundaries.fromIterable([
  0.0001,
  0.0005,
  0.001,
  0.005,
  0.01,
  0.05,
  0.1,
  0.5,
  1,
  5,
  10,
  60
])

const noTags: ReadonlyArray<never> = []

/** @internal */
export interface PoolMetrics {
  /** Sets the connection counts (by state) and the pending requests. */
  readonly setCounts: (idle: number, used: number, pending: number) => void
  readonly timeout: () => void
  /** A checkout refused as sure to time out (`shedLoad`): counted as a timeout, and as shed. */
  readonly shed: () => void
  readonly createTime: (millis: number) => void
  readonly waitTime: (millis: number) => void
  readonly useTime: (millis: number) => void
  /** Sets the limit gauges (after `PgPool.resize`). */
  readonly setLimits: (limits: { readonly max: number; readonly idleMax: number; readonly idleMin: number }) => void
}

/** @internal */
const names = {
  count: "db.client.connection.count",
  max: "db.client.connection.max",
  idleMax: "db.client.connection.idle.max",
  idleMin: "db.client.connection.idle.min",
  pending: "db.client.connection.pending_requests",
  timeouts: "db.client.connection.timeouts",
  shed: "db.client.connection.shed",
  createTime: "db.client.connection.create_time",
  waitTime: "db.client.connection.wait_time",
  useTime: "db.client.connection.use_time"
} as const

/**
 * The pool's metrics. Each one is made from a key that already carries its tags, so an update finds its
 * hook in the metric's cache (a metric tagged with `Metric.tagged` looks its hook up in the registry on every
 * update, which costs more than a whole checkout).
 *
 * @internal
 */
export const make = (
  poolName: string,
  limits: { readonly max: number; readonly idleMax: number; readonly idleMin: number }
): PoolMetrics => {
  const pool = MetricLabel.make(POOL_NAME, poolName)
  const metric = <Type extends MetricKeyType.MetricKeyType<any, any>>(
    key: MetricKey.MetricKey<Type>,
    tags: ReadonlyArray<MetricLabel.MetricLabel> = []
  ) => Metric.fromMetricKey(MetricKey.taggedWithLabels(key, [...tags, pool]))
  const count = (state: string) =>
    metric(
      MetricKey.gauge(names.count, { description: "Connections of the pool, by state (idle, used)" }),
      [MetricLabel.make(STATE, state)]
    )
  const idle = count("idle")
  const used = count("used")
  const pending = metric(MetricKey.gauge(names.pending, { description: "Fibers waiting for a connection" }))
  const timeouts = metric(MetricKey.counter(names.timeouts, {
    description: "Checkouts that ran out of time",
    incremental: true
  }))
  const shedCounter = metric(MetricKey.counter(names.shed, {
    description: "Checkouts refused at once because the predicted wait exceeded the acquire timeout (shedLoad)",
    incremental: true
  }))
  const histogram = (name: string, description: string) =>
    metric(MetricKey.histogram(name, timeBoundaries, description))
  const createTime = histogram(names.createTime, "Time to open a connection, in seconds")
  const waitTime = histogram(
    names.waitTime,
    "Time a checkout, or a statement sent behind others on a busy connection after it queued, waited, in seconds"
  )
  const useTime = histogram(names.useTime, "Time a connection was checked out, in seconds")
  const max = metric(MetricKey.gauge(names.max, { description: "maxConnections" }))
  const idleMax = metric(MetricKey.gauge(names.idleMax, { description: "maxIdle" }))
  const idleMin = metric(MetricKey.gauge(names.idleMin, { description: "minConnections" }))
  const setLimits = (limits: { readonly max: number; readonly idleMax: number; readonly idleMin: number }) => {
    max.unsafeUpdate(limits.max, noTags)
    idleMax.unsafeUpdate(limits.idleMax, noTags)
    idleMin.unsafeUpdate(limits.idleMin, noTags)
  }
  setLimits(limits)
  return {
    setLimits,
    setCounts: (idleCount, usedCount, pendingCount) => {
      idle.unsafeUpdate(idleCount, noTags)
      used.unsafeUpdate(usedCount, noTags)
      pending.unsafeUpdate(pendingCount, noTags)
    },
    timeout: () => timeouts.unsafeUpdate(1, noTags),
    shed: () => {
      timeouts.unsafeUpdate(1, noTags)
      shedCounter.unsafeUpdate(1, noTags)
    },
    createTime: (millis) => createTime.unsafeUpdate(millis / 1000, noTags),
    waitTime: (millis) => waitTime.unsafeUpdate(millis / 1000, noTags),
    useTime: (millis) => useTime.unsafeUpdate(millis / 1000, noTags)
  }
}
