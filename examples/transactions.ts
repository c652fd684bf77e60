/**
 * Transactions: commit, rollback on failure, savepoints, isolation levels, and retrying a serialization
 * failure.
 *
 *   npx tsx examples/transactions.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Schedule } from "effect"
import { PgPool, Transaction } from "effect-pg-pool"
import { PoolLive } from "./database.js"

const balances = PgPool.query("select id, balance from ledger order by id")

/** Moves money between two accounts; fails (and rolls back) when the balance would go negative. */
const transfer = (from: number, to: number, amount: number) =>
  Transaction.withTransaction(
    Effect.gen(function*() {
      const [row] = yield* PgPool.query("update ledger set balance = balance - $2 where id = $1 returning balance", [
        from,
        amount
      ])
      if (Number(row!.balance) < 0) return yield* Effect.fail(`account ${from} cannot pay ${amount}`)
      yield* PgPool.query("update ledger set balance = balance + $2 where id = $1", [to, amount])
    }),
    { isolation: "serializable" }
  ).pipe(
    // serialization failures (SQLSTATE 40001) are expected under serializable isolation: run it again
    Effect.retry({
      while: (error) => typeof error === "object" && error._tag === "QueryError" && error.code === "40001",
      schedule: Schedule.exponential("10 millis").pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(5)))
    })
  )

const program = Effect.gen(function*() {
  yield* PgPool.query("drop table if exists ledger")
  yield* PgPool.query("create table ledger (id int primary key, balance int not null)")
  yield* PgPool.query("insert into ledger values (1, 100), (2, 0)")

  yield* transfer(1, 2, 30)
  yield* Console.log("after a transfer of 30:", yield* balances)

  const refused = yield* Effect.either(transfer(2, 1, 500))
  yield* Console.log("a transfer of 500 from account 2:", refused._tag === "Left" ? refused.left : "done")
  yield* Console.log("nothing changed:", yield* balances)

  // a nested transaction is a savepoint: its failure is undone on its own
  yield* Transaction.withTransaction(Effect.gen(function*() {
    yield* PgPool.query("update ledger set balance = balance + 1 where id = 1")
    const inner = yield* Effect.either(Transaction.withTransaction(Effect.gen(function*() {
      yield* PgPool.query("update ledger set balance = balance + 1000 where id = 2")
      return yield* Effect.fail("changed my mind")
    })))
    yield* Console.log("the inner savepoint:", inner._tag === "Left" ? `rolled back (${inner.left})` : "released")
  }))
  yield* Console.log("after the outer commit:", yield* balances)

  // ten concurrent transfers in both directions keep the total
  yield* Effect.forEach(
    Array.from({ length: 10 }, (_, i) => i),
    (i) => Effect.either(i % 2 === 0 ? transfer(1, 2, 3) : transfer(2, 1, 2)),
    { concurrency: "unbounded" }
  )
  const [total] = yield* PgPool.query("select sum(balance)::int as total from ledger")
  yield* Console.log("total after concurrent transfers:", total)

  const [row] = yield* Transaction.withTransaction(
    PgPool.query(
      "select current_setting('transaction_isolation') as isolation, current_setting('transaction_read_only') as read_only"
    ),
    { isolation: "repeatable read", readOnly: true }
  )
  yield* Console.log("a read-only report transaction:", row)
})

NodeRuntime.runMain(program.pipe(Effect.provide(PoolLive)))
