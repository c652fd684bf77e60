/**
 * effect-pg-pool: an Effect-native PostgreSQL connection pool.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 */
export * as Connector from "./Connector.js"

/**
 * @since 0.1.0
 */
export * as PgPool from "./PgPool.js"

/**
 * @since 0.1.0
 */
export * as PgPoolError from "./PgPoolError.js"

/**
 * @since 0.1.0
 */
export { PgPoolLive } from "./PgPool.js"

/**
 * @since 0.1.0
 */
export * as PgPoolSql from "./PgPoolSql.js"

/**
 * @since 0.1.0
 */
export * as Transaction from "./Transaction.js"

/**
 * @since 0.1.0
 */
export * as PgPoolTest from "./PgPoolTest.js"
