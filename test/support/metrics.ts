/**
 * The pool's metrics as a test reads them: the state of one metric of one pool (metrics are global, tagged by
 * `db.client.connection.pool.name`, so every test gives its pool a name of its own).
 */
import { Effect, Metric, MetricState, Option } from "effect"

/** The state of one of the pool's metrics, for this pool's name (and extra tags). */
const metricState = (name: string, pool: string, tags: Record<string, string> = {}) =>
  Effect.map(Metric.snapshot, (pairs) => {
    for (const pair of pairs) {
      if (pair.metricKey.name !== name) continue
      const labels = new Map(pair.metricKey.tags.map((t) => [t.key, t.value]))
      if (labels.get("db.client.connection.pool.name") !== pool) continue
      if (Object.entries(tags).every(([k, v]) => labels.get(k) === v)) return Option.some(pair.metricState)
    }
    return Option.none()
  })

export const histogramCount = (name: string, pool: string) =>
  Effect.map(metricState(name, pool), (state) =>
    Option.match(state, {
      onNone: () => 0,
      onSome: (s) => MetricState.isHistogramState(s) ? s.count : -1
    }))

export const gaugeValue = (name: string, pool: string, tags: Record<string, string> = {}) =>
  Effect.map(metricState(name, pool, tags), (state) =>
    Option.match(state, {
      onNone: () => -1,
      onSome: (s) => MetricState.isGaugeState(s) ? Number(s.value) : -2
    }))

export const counterValue = (name: string, pool: string) =>
  Effect.map(metricState(name, pool), (state) =>
    Option.match(state, {
      onNone: () => 0,
      onSome: (s) => MetricState.isCounterState(s) ? Number(s.count) : -1
    }))
