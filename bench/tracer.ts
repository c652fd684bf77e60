/**
 * An installed tracer that keeps nothing: with it the pool makes its spans (`PgPool.query`, ...), so a
 * candidate run under it shows what the spans cost, apart from any exporter's own cost. The default
 * candidates run with no tracer installed, where the pool makes no span at all.
 */
import type * as Context from "effect/Context"
import type * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import * as Tracer from "effect/Tracer"

class NoopSpan implements Tracer.Span {
  readonly _tag = "Span"
  readonly spanId = "span"
  readonly traceId = "trace"
  readonly sampled = true
  readonly attributes: ReadonlyMap<string, unknown> = new Map()
  status: Tracer.SpanStatus
  constructor(
    readonly name: string,
    readonly parent: Option.Option<Tracer.AnySpan>,
    readonly context: Context.Context<never>,
    readonly links: ReadonlyArray<Tracer.SpanLink>,
    startTime: bigint,
    readonly kind: Tracer.SpanKind
  ) {
    this.status = { _tag: "Started", startTime }
  }
  end(endTime: bigint, exit: Exit.Exit<unknown, unknown>): void {
    this.status = { _tag: "Ended", startTime: this.status.startTime, endTime, exit }
  }
  attribute(): void {}
  event(): void {}
  addLinks(): void {}
}

const noopTracer: Tracer.Tracer = Tracer.make({
  span: (name, parent, context, links, startTime, kind) => new NoopSpan(name, parent, context, links, startTime, kind),
  context: (f) => f()
})

/** Installs the no-op tracer for everything run by a runtime built with this layer. */
export const noopTracerLayer: Layer.Layer<never> = Layer.setTracer(noopTracer)
