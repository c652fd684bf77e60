/**
 * Pins: the connection a fiber holds for `withConnection` or a transaction, which `PgPool.query`,
 * `PgPool.connection` and the SqlClient inside reuse; and whether the fiber's work is read-only. This is the
 * only module that uses effect's private API (a FiberRef set in place, the context's map): each use is
 * measured to cost less than the public way, which copies the fiber's refs or the context on every call.
 *
 * @internal
 */
import * as Context from "effect/Context"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import type { Physical, TxToken } from "../connection/physical.js"
import type { PoolCore } from "../pool/core.js"
import type { Handle, PgPoolService } from "./service.js"

/**
 * A pinned connection: whose pool it is, the pool core it came from, the transaction it is the pin of (none
 * for `withConnection`), and the pin it was made inside. @internal
 */
export interface Pin {
  readonly owner: PgPoolService
  readonly core: PoolCore
  readonly handle: Handle
  readonly tx: TxToken | undefined
  readonly next: Pin | undefined
}

/**
 * The connections pinned by `withConnection` for one fiber, innermost first. The box is set on a fiber once
 * (a FiberRef write copies all of the fiber's refs, which costs more than a whole checkout) and then changed in
 * place. A fiber forked inside `withConnection` (including the ones `Effect.timeout`, `Effect.race` and a
 * concurrent `Effect.all` run their effects in) gets a box of its own (`owner` undefined until it pins
 * something itself) with the pins of its parent at the fork: it uses the same connection, taking turns with
 * the other fibers on it (see `Physical.runThen`), and never waits for a second connection that the pinned one
 * blocks. A pin whose `withConnection` has ended is passed over. A transaction's pin travels in the context
 * instead (`InheritedPin`), so fibers forked inside a transaction stay in it.
 */
class PinBox {
  constructor(readonly owner: Fiber.RuntimeFiber<unknown, unknown> | undefined, public pins: Pin | undefined) {}
}

const currentPins: FiberRef.FiberRef<PinBox | undefined> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentPins"),
  () =>
    FiberRef.unsafeMake<PinBox | undefined>(undefined, {
      fork: (parent) =>
        parent === undefined || parent.pins === undefined ? undefined : new PinBox(undefined, parent.pins),
      join: (parent) => parent
    })
)

/** True inside `PgPool.readOnly`: the work may run on a standby. @internal */
export const currentReadOnly: FiberRef.FiberRef<boolean> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentReadOnly"),
  () => FiberRef.unsafeMake(false)
)

/** Sets a FiberRef of `fiber` in place: only from a step that `fiber` itself runs. @internal */
export const setRef = <A>(fiber: Fiber.RuntimeFiber<unknown, unknown>, ref: FiberRef.FiberRef<A>, value: A): void =>
  (fiber as unknown as { setFiberRef<A>(ref: FiberRef.FiberRef<A>, value: A): void }).setFiberRef(ref, value)

/** The box of `fiber`'s pins, made the first time it pins a connection. @internal */
export const ownPins = (fiber: Fiber.RuntimeFiber<unknown, unknown>): PinBox => {
  const box = fiber.getFiberRef(currentPins)
  if (box !== undefined && box.owner === fiber) return box
  // a box inherited at a fork: the fiber's own pins go in front of its parent's
  const own = new PinBox(fiber, box?.owner === undefined ? box?.pins : undefined)
  setRef(fiber, currentPins, own)
  return own
}

/** The pins `fiber` set with `withConnection`, and those it inherited from the fiber it was forked by. */
const pinsSetBy = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Pin | undefined => {
  const box = fiber.getFiberRef(currentPins)
  return box !== undefined && (box.owner === fiber || box.owner === undefined) ? box.pins : undefined
}

/** The pin of a transaction, in the context of the fibers that run in it (forked ones included). @internal */
export const InheritedPin: Context.Tag<Pin, Pin> = Context.GenericTag<Pin>("effect-pg-pool/PgPool/InheritedPin")

/** A service of `fiber`'s context, read without building an Option (`Context.getOption` allocates). @internal */
const serviceIn = <I, S>(fiber: Fiber.RuntimeFiber<unknown, unknown>, tag: Context.Tag<I, S>): S | undefined =>
  fiber.currentContext.unsafeMap.get(tag.key)

/** The pinned connection of `fiber` for the pool `owner`, if any. @internal */
export const pinOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, owner: PgPoolService): Pin | undefined =>
  findPin(pinsSetBy(fiber), owner) ?? findPin(serviceIn(fiber, InheritedPin), owner)

/** The pins of `fiber`, innermost first. @internal */
export const pinsOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Pin | undefined =>
  pinsSetBy(fiber) ?? serviceIn(fiber, InheritedPin)

/** The innermost pin of the pool `owner` among `pins` (a pin whose connection went back is passed over). @internal */
export const findPin = (pins: Pin | undefined, owner: PgPoolService): Pin | undefined => {
  while (pins !== undefined && (pins.owner !== owner || pins.handle.released)) pins = pins.next
  return pins
}

/**
 * True when `fiber` was forked inside a transaction of the pool `owner` that has ended: its statements are
 * refused rather than run outside of it. @internal
 */
export const outlivedTransaction = (fiber: Fiber.RuntimeFiber<unknown, unknown>, owner: PgPoolService): boolean => {
  const inherited = serviceIn(fiber, InheritedPin)
  return inherited !== undefined && inherited.owner === owner && inherited.tx?.ended === true
}

/**
 * The transaction `fiber` runs in on the connection `conn`, if any: its turn on the connection is that
 * transaction's (see `Physical.runThen`). @internal
 */
export const memberOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, conn: Physical): TxToken | undefined => {
  const inherited = serviceIn(fiber, InheritedPin)
  return inherited !== undefined && inherited.handle.conn === conn ? inherited.tx : undefined
}
