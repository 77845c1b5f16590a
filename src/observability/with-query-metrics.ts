import type { Database, Queryable } from "../store/database.js";
import type { Metrics } from "./metrics.js";

/**
 * Wraps a {@link Database} so that every statement and every transaction
 * is timed into `warden_store_query_duration_seconds`: op "transaction"
 * for the whole of `transaction` (BEGIN to COMMIT, including waiting for a
 * connection and the locks), op "query" for each statement, inside a
 * transaction or not. Failures are timed too: a statement that times out
 * is exactly the one worth seeing.
 *
 * Everything else of the database (`kind`, `listen`, `close`, …) is passed
 * through, so the store cannot tell the difference.
 */
export function withQueryMetrics(db: Database, metrics: Pick<Metrics, "observeStoreQuery">): Database {
  const timed = (q: Queryable): Queryable["query"] =>
    function query(sql, params) {
      const start = performance.now();
      const done = () => metrics.observeStoreQuery("query", (performance.now() - start) / 1000);
      const p = q.query(sql, params);
      p.then(done, done);
      return p;
    } as Queryable["query"];
  return {
    // Both drivers return plain objects, so a spread carries every member,
    // including ones added to the interface later.
    ...db,
    query: timed(db),
    async transaction(fn, options) {
      const start = performance.now();
      try {
        return await db.transaction((tx) => fn({ query: timed(tx) }), options);
      } finally {
        metrics.observeStoreQuery("transaction", (performance.now() - start) / 1000);
      }
    },
  };
}
