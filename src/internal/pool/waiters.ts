/**
 * The fibers waiting for a connection, first come, first served: an intrusive doubly linked list, so a waiter
 * that times out or is interrupted leaves it in O(1). A waiter settles exactly once: the queue marks it when it
 * takes it out (`shift`, `remove`), and only a waiter still in the queue can be taken out.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import type { PoolError } from "../../PgPoolError.js"
import type { Physical } from "../connection/physical.js"

/**
 * A fiber (or a one-shot statement) queued for a connection. The two kinds (`CheckoutWaiter`, `QueryOp`) are
 * the only shapes, so the calls of `deliver` and `fail` stay cheap.
 *
 * @internal
 */
export interface Waiter {
  enqueuedAt: number
  deadline: number
  prev: Waiter | undefined
  next: Waiter | undefined
  /** Out of the queue: it was given a connection or an error, or it left. */
  settled: boolean
  deliver(conn: Physical): void
  fail(error: PoolError): void
  /** A one-shot statement only: sent behind the statements in flight on `conn` (pipelining). */
  ride?: ((conn: Physical, now: number) => void) | undefined
  /** A one-shot statement that may leave a transaction open: it never rides, and nothing rides behind it. */
  readonly exclusive?: boolean | undefined
}

/** A fiber waiting for a connection of its own (`PgPool.connection`, `withConnection`, transactions). @internal */
export class CheckoutWaiter implements Waiter {
  prev: Waiter | undefined = undefined
  next: Waiter | undefined = undefined
  settled = false
  conn: Physical | undefined = undefined
  constructor(
    readonly resume: (effect: Effect.Effect<Physical, PoolError>) => void,
    public enqueuedAt: number,
    public deadline: number
  ) {}
  deliver(conn: Physical): void {
    this.conn = conn
    this.resume(Effect.succeed(conn))
  }
  fail(error: PoolError): void {
    this.resume(Effect.fail(error))
  }
}

/** @internal */
export class WaiterQueue {
  head: Waiter | undefined = undefined
  tail: Waiter | undefined = undefined
  length = 0

  push(waiter: Waiter): void {
    waiter.prev = this.tail
    if (this.tail === undefined) this.head = waiter
    else this.tail.next = waiter
    this.tail = waiter
    this.length++
  }

  /** Takes the first waiter out, settled; undefined when none waits. */
  shift(): Waiter | undefined {
    const waiter = this.head
    if (waiter !== undefined) this.unlink(waiter)
    return waiter
  }

  /** Takes `waiter` out, settled, if it is still in the queue: false when it had settled already. */
  remove(waiter: Waiter): boolean {
    if (waiter.settled) return false
    this.unlink(waiter)
    return true
  }

  private unlink(waiter: Waiter): void {
    waiter.settled = true
    if (waiter.prev === undefined) this.head = waiter.next
    else waiter.prev.next = waiter.next
    if (waiter.next === undefined) this.tail = waiter.prev
    else waiter.next.prev = waiter.prev
    waiter.prev = waiter.next = undefined
    this.length--
  }
}
