/**
 * Read-your-writes over streaming replication: once a fiber has done work on the primary, its read-only work
 * runs only on a standby that has replayed up to the primary's WAL position after that work, else (after
 * waiting up to `readYourWritesTimeout`) on the primary.
 *
 * The position is read lazily: work on the primary only marks the fiber's position as pending (no round trip
 * on the write path); the first read-only work after it reads `pg_current_wal_insert_lsn()` on the primary,
 * which is at or past the end of every transaction committed before (the commit records of the fiber's
 * writes among them). Each standby's replay position (`pg_last_wal_replay_lsn()`) is remembered, and read
 * again, by one query at a time per standby, only while some read waits for it.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import { type PoolError, QueryError } from "../../PgPoolError.js"
import type { PoolCore } from "../pool/core.js"
import { oneShot } from "../pool/oneShot.js"
import { sharedWhileRunning } from "../shared.js"

/** True inside `PgPool.readYourWrites`. @internal */
export const currentReadYourWrites: FiberRef.FiberRef<boolean> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentReadYourWrites"),
  () => FiberRef.unsafeMake(false)
)

/** Where a fiber's writes on one pool are: the last position read, and whether work on the primary came since. */
interface Mark {
  readonly lsn: bigint | undefined
  readonly pending: boolean
}

/** The fiber's marks, by pool (the key is the pool's service: LSNs of different clusters do not compare). */
type Marks = ReadonlyMap<object, Mark>

/** @internal */
export const currentWrites: FiberRef.FiberRef<Marks> = globalValue(
  Symbol.for("effect-pg-pool/PgPool/currentWrites"),
  () => FiberRef.unsafeMake<Marks>(new Map())
)

const withMark = (marks: Marks, pool: object, mark: Mark): Marks => new Map(marks).set(pool, mark)

const max = (a: bigint | undefined, b: bigint | undefined): bigint | undefined =>
  a === undefined ? b : b === undefined ? a : a > b ? a : b

/** Work on the primary came: the fiber's position on `pool` is to be read again before its next read. @internal */
export const markWrite = (pool: object): Effect.Effect<void> =>
  FiberRef.update(currentWrites, (marks) => {
    const mark = marks.get(pool)
    return mark?.pending === true ? marks : withMark(marks, pool, { lsn: mark?.lsn, pending: true })
  })

/** Sets the fiber's position on `pool` to at least `lsn` (a position carried from another request). @internal */
export const carried = (pool: object, lsn: bigint) => (marks: Marks): Marks => {
  const mark = marks.get(pool)
  return withMark(marks, pool, { lsn: max(mark?.lsn, lsn), pending: mark?.pending ?? false })
}

/** PostgreSQL's text form of an LSN, `16/B374D848`, as a number. @internal */
export const parseLsn = (text: string): bigint | undefined => {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  return match === null ? undefined : (BigInt(`0x${match[1]}`) << 32n) + BigInt(`0x${match[2]}`)
}

/** An LSN in PostgreSQL's text form. @internal */
export const formatLsn = (lsn: bigint): string =>
  `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`

/** The error for a carried position that is not an LSN. @internal */
export const invalidLsn = (text: string): QueryError =>
  new QueryError({
    message: `Invalid WAL position ${
      JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text)
    } for PgPool.readYourWrites: expected an LSN as PgPool.writeLsn gives it, such as "16/B374D848" (SQLSTATE 22P02)`,
    code: "22P02"
  })

const WAL_PAGE = 8192n
/** The long page header at the start of a WAL segment (the short one, 24 bytes, is shorter). */
const PAGE_HEADER = 40n

/**
 * The replay position a standby must reach to have replayed everything before `lsn`, an insert position:
 * right after a page boundary the insert position points past the page's header, which a standby that
 * replayed the record ending at the boundary reports as the boundary itself.
 */
export const replayTarget = (lsn: bigint): bigint => {
  const offset = lsn % WAL_PAGE
  return offset > 0n && offset <= PAGE_HEADER ? lsn - offset : lsn
}

/** The primary's WAL insert position now: at or past the end of every transaction committed before. */
const primaryPosition = (main: PoolCore): Effect.Effect<bigint | undefined, PoolError | QueryError> =>
  Effect.map(
    oneShot(
      main,
      "select pg_current_wal_insert_lsn()::text as lsn",
      undefined,
      undefined,
      (result) => result.rows,
      false
    ),
    (rows) => {
      const text = rows[0]?.lsn
      return typeof text === "string" ? parseLsn(text) : undefined
    }
  )

/**
 * The fiber's position on `pool`: read from the primary when work came there since it was last read (and
 * kept in the fiber), `undefined` when the fiber has not written in this scope.
 *
 * @internal
 */
export const writePosition = (
  pool: object,
  main: PoolCore
): Effect.Effect<bigint | undefined, PoolError | QueryError> =>
  Effect.flatMap(FiberRef.get(currentWrites), (marks) => {
    const mark = marks.get(pool)
    if (mark === undefined) return Effect.succeed(undefined)
    if (!mark.pending) return Effect.succeed(mark.lsn)
    return Effect.flatMap(primaryPosition(main), (lsn) => {
      const position = max(mark.lsn, lsn)
      return Effect.as(
        FiberRef.update(currentWrites, (now) => withMark(now, pool, { lsn: position, pending: false })),
        position
      )
    })
  })

/**
 * A standby's replay position as last read, read again by one query at a time however many reads wait for
 * it (they share the query's outcome).
 *
 * @internal
 */
export class Replay {
  replayed = -1n
  readonly refresh: Effect.Effect<void>

  constructor(core: PoolCore) {
    this.refresh = sharedWhileRunning(
      oneShot(
        core,
        "select pg_last_wal_replay_lsn()::text as lsn",
        undefined,
        undefined,
        (result) => result.rows,
        false
      ).pipe(
        Effect.map((rows) => {
          const text = rows[0]?.lsn
          const lsn = typeof text === "string" ? parseLsn(text) : undefined
          if (lsn !== undefined && lsn > this.replayed) this.replayed = lsn
        }),
        Effect.ignore
      )
    )
  }
}
