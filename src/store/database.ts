/**
 * The one SQL surface the store needs, met by both drivers: `pg` against a
 * PostgreSQL server and PGlite embedded. Same dialect, same queries.
 */
export interface Queryable {
  /** Runs one statement with `$n` parameters. */
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<{ rows: R[] }>;
}

/** Options of {@link Database.transaction}. */
export interface TransactionOptions {
  /**
   * Plan the transaction's prepared statements once per connection, for no
   * values in particular, where PostgreSQL finds that no dearer than a plan
   * for each run's values (its plan cache, `plan_cache_mode = auto`),
   * instead of for each run (PLANNER_SETTINGS). Only for transactions whose
   * statements look rows up by key, whose plan is the index at any table
   * size (test/store/generic-plans checks every statement they run): a
   * range scan planned once could read a whole table for ever after. On
   * PGlite too, whose transactions prepare their frequent statements
   * (pglite-prepared.ts).
   */
  readonly genericPlans?: boolean;
}

/** A database: statements, transactions and a close. */
export interface Database extends Queryable {
  /**
   * Runs `fn` inside BEGIN … COMMIT on one connection, rolling back when it
   * throws. Nothing `fn` wrote is visible unless it returns.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Which driver: for logs and metrics. */
  readonly kind: "postgres" | "pglite";
  /** How many transactions can usefully run at once. */
  readonly parallelism: number;
  /**
   * Calls `onNotify` on every NOTIFY to `channel` (after the notifying
   * transaction commits), until the returned function is called. On
   * PostgreSQL it holds one connection of its own and reconnects after a
   * failure, calling `onNotify` once it is back (a notification sent while
   * disconnected is lost, so listeners re-read on that call).
   */
  listen(channel: string, onNotify: () => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/**
 * How the store's connections plan their statements (both drivers).
 * - plan_cache_mode: frequent statements are prepared per connection (see
 *   hot-statements.ts), and planned for their parameters on every run: a
 *   generic plan, made once while a table is small, could scan the whole
 *   table for ever after, as nothing re-plans it until the table is next
 *   analyzed. Decision batches, lease grants and sidecar reports cache
 *   theirs (TransactionOptions): their statements look rows up by key,
 *   planned through the index from an empty store on at this
 *   random_page_cost (test/store/generic-plans); with a batch's tens of
 *   keys PostgreSQL then plans each statement once. Over 1,000 sessions
 *   that spared it ~28 µs of CPU per decision: its backends spent 107-128
 *   µs per decision instead of 155-163, and the server made 3,042-3,370
 *   decisions/s instead of 2,947-2,979 (scratch runs of 20,000 Checks, 64
 *   in flight, one sitting; the servers' metrics wrapper used to drop the
 *   option, so until then every run was planned).
 * - random_page_cost: the store's rows are looked up by key a batch at a
 *   time (`id = ANY($1)`, 30 to 500 keys). At the default (4, a spinning
 *   disk's seek) the planner prices those index probes above reading the
 *   whole table while it is small, so a decision batch over the
 *   benchmark's 1,000 sessions read and compared all 2,000 stored ones to
 *   lock its 30: 0.55-0.7 ms a batch against 0.14-0.19 ms through the
 *   index (EXPLAIN ANALYZE), and more with every session stored until the
 *   planner changed its mind. The hot tables are cached in memory; 1.1 is
 *   the usual value for data in RAM or on SSD.
 */
export const PLANNER_SETTINGS = { plan_cache_mode: "force_custom_plan", random_page_cost: "1.1" } as const;
