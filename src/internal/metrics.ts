/**
 * The pool's metrics, named after OpenTelemetry's semantic conventions for database client connection
 * pools (`db.client.connection.*`), every one tagged with `db.client.connection.pool.name`. Times are in
 * seconds, as the conventions ask.
 *
 * @internal
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

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
  readonly setGauges: (
    counts: {
      readonly idle: number
      readonly used: number
      readonly pending: number
      readonly max: number
      readonly idleMax: number
      readonly idleMin: number
    }
  ) => void
  readonly timeout: () => void
  readonly createTime: (millis: number) => void
  readonly waitTime: (millis: number) => void
  readonly useTime: (millis: number) => void
}

/** @internal */
export const names = {
  count: "db.client.connection.count",
  max: "db.client.connection.max",
  idleMax: "db.client.connection.idle.max",
  idleMin: "db.client.connection.idle.min",
  pending: "db.client.connection.pending_requests",
  timeouts: "db.client.connection.timeouts",
  createTime: "db.client.connection.create_time",
  waitTime: "db.client.connection.wait_time",
  useTime: "db.client.connection.use_time"
} as const

/** @internal */
export const make = (poolName: string): PoolMetrics => {
  const tag = <T extends Metric.Metric<any, any, any>>(metric: T): T => Metric.tagged(metric, POOL_NAME, poolName) as T
  const count = Metric.gauge(names.count, { description: "Connections of the pool, by state (idle, used)" })
  const idle = tag(Metric.tagged(count, STATE, "idle"))
  const used = tag(Metric.tagged(count, STATE, "used"))
  const max = tag(Metric.gauge(names.max, { description: "maxConnections" }))
  const idleMax = tag(Metric.gauge(names.idleMax, { description: "maxIdle" }))
  const idleMin = tag(Metric.gauge(names.idleMin, { description: "minConnections" }))
  const pending = tag(
    Metric.gauge(names.pending, { description: "Fibers waiting for a connection" })
  )
  const timeouts = tag(Metric.counter(names.timeouts, {
    description: "Checkouts that ran out of time",
    incremental: true
  }))
  const histogram = (name: string, description: string) =>
    tag(Metric.histogram(name, timeBoundaries, description))
  const createTime = histogram(names.createTime, "Time to open a connection, in seconds")
  const waitTime = histogram(names.waitTime, "Time a checkout waited for a connection, in seconds")
  const useTime = histogram(names.useTime, "Time a connection was checked out, in seconds")
  return {
    setGauges: (counts) => {
      idle.unsafeUpdate(counts.idle, noTags)
      used.unsafeUpdate(counts.used, noTags)
      pending.unsafeUpdate(counts.pending, noTags)
      max.unsafeUpdate(counts.max, noTags)
      idleMax.unsafeUpdate(counts.idleMax, noTags)
      idleMin.unsafeUpdate(counts.idleMin, noTags)
    },
    timeout: () => timeouts.unsafeUpdate(1, noTags),
    createTime: (millis) => createTime.unsafeUpdate(millis / 1000, noTags),
    waitTime: (millis) => waitTime.unsafeUpdate(millis / 1000, noTags),
    useTime: (millis) => useTime.unsafeUpdate(millis / 1000, noTags)
  }
}
