/** The catalogue of suites: what each measures, at which levels, with which candidates. */
import type { Target } from "./database.js"
import { ROWS } from "./database.js"
import * as PoolCandidates from "./pool-candidates.js"
import type { Settings } from "./settings.js"
import * as SqlCandidates from "./sql-candidates.js"
import type { SuiteSpec } from "./suite.js"

/** A suite against the database, or one of the pools alone. */
export type Suite =
  | { readonly _tag: "Database"; readonly spec: SuiteSpec<Target> }
  | { readonly _tag: "PoolAlone"; readonly spec: SuiteSpec<void> }

export type MeasuredSuiteId = "select1" | "transaction" | "txselect1" | "checkout" | "oneshot" | "tracing"

export const suite = (id: MeasuredSuiteId, settings: Settings): Suite => {
  const db = { durationMs: settings.dbDurationMs, warmupMs: settings.dbWarmupMs, repetitions: settings.repetitions }
  const pool = {
    durationMs: settings.poolDurationMs,
    warmupMs: settings.poolWarmupMs,
    repetitions: settings.repetitions
  }
  switch (id) {
    case "select1":
      return {
        _tag: "Database",
        spec: {
          id,
          title: "SELECT 1",
          description:
            "One `SELECT 1` per operation through each pool (10 connections); latency is per query, including the wait for a connection.",
          levels: [1, 8, 32, 128, 512, 2048],
          candidates: SqlCandidates.select1,
          latency: true,
          ...db
        }
      }
    case "transaction":
      return {
        _tag: "Database",
        spec: {
          id,
          title: "Transaction: BEGIN; SELECT a row by primary key; UPDATE its counter; COMMIT",
          description: `Rows picked at random from a ${
            ROWS.toLocaleString("en-US")
          }-row table; one operation is one transaction (4 statements), 10 connections.`,
          levels: [32],
          candidates: SqlCandidates.transaction("row"),
          latency: true,
          ...db
        }
      }
    case "txselect1":
      return {
        _tag: "Database",
        spec: {
          id,
          title: "Transaction: BEGIN; SELECT 1; COMMIT",
          description:
            "One operation is one transaction of 3 statements, 10 connections: what the transaction mechanism costs.",
          levels: [32],
          candidates: SqlCandidates.transaction("select1"),
          latency: true,
          ...db
        }
      }
    case "checkout":
      return {
        _tag: "PoolAlone",
        spec: {
          id,
          title: "Pool alone: checkout + return of a fake connection",
          description:
            "No database: each pool hands out in-memory connections (10 at most); one operation is a checkout and its return.",
          levels: [1, 64],
          candidates: PoolCandidates.checkout,
          latency: false,
          ...pool
        }
      }
    case "oneshot":
      return {
        _tag: "PoolAlone",
        spec: {
          id,
          title: "Pool alone: one-shot query on a fake connection",
          description:
            "No database: checkout, a statement the fake connection answers on the next microtask, return (10 connections at most).",
          levels: [1, 64],
          candidates: PoolCandidates.oneShot,
          latency: false,
          ...pool
        }
      }
    case "tracing":
      return {
        _tag: "Database",
        spec: {
          id,
          title: "SELECT 1 with a tracer installed",
          description:
            "`PgPool.query` with a tracer installed that keeps nothing, so each statement makes a `PgPool.query` span (the other suites run with no tracer, where the pool makes none); in a process of its own, since two tracers in one process slow every Effect candidate. Compare its ratio to pg.Pool with `PgPool.query`'s in the SELECT 1 suite.",
          levels: [1, 32],
          candidates: SqlCandidates.traced,
          latency: true,
          ...db
        }
      }
  }
}
