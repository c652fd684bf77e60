/**
 * In-memory stand-ins for a database connection, to measure pools without a server: every statement is
 * answered on the next microtask with one row, the cheapest asynchronous answer a driver could give.
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { EventEmitter } from "node:events"
import type pg from "pg"
import * as Connector from "../src/Connector.js"

const fakeResult: Connector.QueryResult = {
  rows: [{ "?column?": 1 }],
  fields: [{ name: "?column?", dataTypeID: 23 }],
  command: "SELECT",
  rowCount: 1
}

/** A resource for pools that only hand out opaque objects (tarn, generic-pool, effect/Pool). */
export interface FakeResource {
  readonly id: number
}

let nextId = 1

export const makeResource = (): FakeResource => ({ id: nextId++ })

const fakeConnection = (): Connector.Connection => ({
  backendPid: nextId++,
  send: (_text, _params, _rowMode, callback) => {
    queueMicrotask(() => callback(undefined, fakeResult))
  },
  cursor: () => ({ read: () => Effect.succeed([]), close: Effect.void }),
  transactionStatus: () => "idle",
  isBusy: () => false,
  awaitIdle: Effect.void,
  isBroken: () => false,
  cancel: Effect.void,
  onNotification: () => {}
})

/** A `Connector` whose connections answer from memory: the real pool core runs on top of it. */
const connector: Connector.Connector = {
  connect: () => Effect.sync(fakeConnection)
}

export const connectorLayer: Layer.Layer<Connector.Connector> = Layer.succeed(Connector.Connector, connector)

/**
 * A `pg.Client` look-alike for `pg.Pool`'s `Client` option, so pg-pool's own checkout, queueing and
 * `pool.query` paths run without a server. It implements only what pg-pool calls.
 */
class FakePgClient extends EventEmitter {
  _queryable = true
  _ending = false
  readonly processID = nextId++

  connect(callback: (error?: Error) => void): void {
    queueMicrotask(() => callback())
  }

  query(_text: string, values: unknown, callback?: (error: Error | undefined, result: unknown) => void): void {
    const done = typeof values === "function" ? values as typeof callback : callback
    queueMicrotask(() => done?.(undefined, fakeResult))
  }

  end(callback?: () => void): void {
    this._ending = true
    this._queryable = false
    if (callback !== undefined) queueMicrotask(callback)
  }

  ref(): void {}
  unref(): void {}
}

export const pgClientClass = FakePgClient as unknown as new() => pg.ClientBase
