/**
 * The one SQL surface the store needs, met by both drivers: `pg` against a
 * PostgreSQL server and PGlite embedded. Same dialect, same queries.
 */
export interface Queryable {
  /** Runs one statement with `$n` parameters. */
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<{ rows: R[] }>;
}

/** A database: statements, transactions and a close. */
export interface Database extends Queryable {
  /**
   * Runs `fn` inside BEGIN … COMMIT on one connection, rolling back when it
   * throws. Nothing `fn` wrote is visible unless it returns.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
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
