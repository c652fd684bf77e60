/**
 * Small statistics helpers: a latency recorder that does no allocation on the hot path, quantiles,
 * medians and the spread of repeated measurements.
 */

/** Counts completed operations and, optionally, keeps each one's latency (in milliseconds). */
export class Recorder {
  ops = 0
  count = 0
  samples: Float64Array

  constructor(initialCapacity = 1 << 14) {
    this.samples = new Float64Array(initialCapacity)
  }

  record(latencyMs: number): void {
    if (this.count === this.samples.length) {
      const grown = new Float64Array(this.samples.length * 2)
      grown.set(this.samples)
      this.samples = grown
    }
    this.samples[this.count++] = latencyMs
    this.ops++
  }

  /** The recorded latencies, sorted ascending. */
  sorted(): Float64Array {
    return this.samples.slice(0, this.count).sort()
  }
}

/** The q-quantile (0..1) of an ascending array, by the nearest-rank method; NaN when empty. */
export const quantile = (sorted: ArrayLike<number>, q: number): number => {
  if (sorted.length === 0) return NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]!
}

export interface Spread {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly n: number
}

/** Median, min and max of repeated measurements (NaN values, from failed runs, are left out). */
export const spread = (values: ReadonlyArray<number>): Spread => {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b)
  const n = sorted.length
  if (n === 0) return { median: NaN, min: NaN, max: NaN, n }
  const median = n % 2 === 1 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2
  return { median, min: sorted[0]!, max: sorted[n - 1]!, n }
}
