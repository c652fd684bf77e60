/**
 * The pools alone, no database: every connection is a fake that answers on the next microtask (see
 * `fake.ts`). Two workloads: checkout + return of a connection, and a one-shot `SELECT 1` on a fake
 * connection (checkout, statement, return), the path `PgPool.query` fuses into one suspension.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Pool from "effect/Pool"
import * as Scope from "effect/Scope"
import * as genericPool from "generic-pool"
import pg from "pg"
import * as tarn from "tarn"
import * as PgPool from "../src/PgPool.js"
import { fromPromise, fromRuntime, ready } from "./candidate.js"
import type { Candidate } from "./candidate.js"
import * as Fake from "./fake.js"
import { POOL_SIZE } from "./sql-candidates.js"

/** Our real pool core over the fake Connector. */
const ourFakeLayer: Layer.Layer<PgPool.PgPool, unknown> = Layer.scoped(
  PgPool.PgPool,
  PgPool.make({ maxConnections: POOL_SIZE })
).pipe(Layer.provide(Layer.merge(Fake.connectorLayer, Logger.minimumLogLevel(LogLevel.Warning))))

/** pg.Pool (pg-pool) over a fake `pg.Client`: its own checkout and queueing code, no socket. */
const fakePgPool = (): pg.Pool =>
  new pg.Pool({ Client: Fake.pgClientClass, max: POOL_SIZE, idleTimeoutMillis: 10 * 60_000 })

const effectPool = async (): Promise<
  { readonly pool: Pool.Pool<Fake.FakeResource>; readonly scope: Scope.CloseableScope }
> => {
  const scope = Effect.runSync(Scope.make())
  const pool = await Effect.runPromise(
    Scope.extend(Pool.make({ acquire: Effect.sync(Fake.makeResource), size: POOL_SIZE }), scope)
  )
  return { pool, scope }
}

export const checkout: ReadonlyArray<Candidate<void>> = [
  ready(
    "PgPool.withConnection",
    "ours",
    () => fromRuntime(ManagedRuntime.make(ourFakeLayer), PgPool.withConnection(Effect.void))
  ),
  ready(
    "PgPool.connection (scoped)",
    "ours",
    () => fromRuntime(ManagedRuntime.make(ourFakeLayer), Effect.scoped(PgPool.connection))
  ),
  ready("pg.Pool connect/release", "alternative", async () => {
    const pool = fakePgPool()
    const op = async () => {
      const client = await pool.connect()
      client.release()
    }
    return fromPromise(op, () => pool.end())
  }),
  ready("tarn", "alternative", async () => {
    const pool = new tarn.Pool<Fake.FakeResource>({
      create: () => Promise.resolve(Fake.makeResource()),
      destroy: () => {},
      min: 0,
      max: POOL_SIZE,
      idleTimeoutMillis: 10 * 60_000
    })
    const op = async () => {
      const resource = await pool.acquire().promise
      pool.release(resource)
    }
    return fromPromise(op, async () => {
      await pool.destroy()
    })
  }),
  ready("generic-pool", "alternative", async () => {
    const pool = genericPool.createPool<Fake.FakeResource>({
      create: () => Promise.resolve(Fake.makeResource()),
      destroy: () => Promise.resolve()
    }, { min: 0, max: POOL_SIZE })
    const op = async () => {
      const resource = await pool.acquire()
      void pool.release(resource)
    }
    return fromPromise(op, async () => {
      await pool.drain()
      await pool.clear()
    })
  }),
  ready("effect/Pool", "alternative", async () => {
    const { pool, scope } = await effectPool()
    const opened = await fromRuntime(ManagedRuntime.make(Layer.empty), Effect.scoped(Pool.get(pool)))
    return {
      workload: opened.workload,
      close: async () => {
        await opened.close()
        await Effect.runPromise(Scope.close(scope, Exit.void))
      }
    }
  })
]

/** The floor: the fake statement alone, as an Effect and as a Promise, with no pool around it. */
const bareEffect = Effect.async<number>((resume) => {
  queueMicrotask(() => resume(Effect.succeed(1)))
})
const barePromise = () => new Promise<number>((resolve) => queueMicrotask(() => resolve(1)))

export const oneShot: ReadonlyArray<Candidate<void>> = [
  ready(
    "PgPool.query",
    "ours",
    () => fromRuntime(ManagedRuntime.make(ourFakeLayer), Effect.suspend(() => PgPool.query("SELECT 1")))
  ),
  ready("pg.Pool pool.query", "alternative", async () => {
    const pool = fakePgPool()
    return fromPromise(() => pool.query("SELECT 1"), () => pool.end())
  }),
  ready(
    "no pool: Effect.async + microtask",
    "reference",
    () => fromRuntime(ManagedRuntime.make(Layer.empty), bareEffect)
  ),
  ready("no pool: Promise + microtask", "reference", async () => fromPromise(barePromise, async () => {}))
]
