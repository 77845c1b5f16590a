import type { Database, Queryable } from "../../src/store/database.js";

/**
 * `db` with `hook` run before every statement, in a transaction or not: a
 * hook that rejects fails the statement (a connection lost mid-call), one
 * that waits holds it back (a busy server's scheduling). Everything else is
 * the real database's.
 */
export function withQueryHook(db: Database, hook: (sql: string) => void | Promise<void>): Database {
  const hooked = (q: Queryable): Queryable => ({
    query: async (sql: string, params?: readonly unknown[]) => {
      await hook(sql);
      return q.query(sql, params);
    },
  } as Queryable);
  return {
    kind: db.kind,
    parallelism: db.parallelism,
    query: (sql, params) => hooked(db).query(sql, params),
    listen: (c, f) => db.listen(c, f),
    close: () => db.close(),
    transaction: (fn, opts) => db.transaction((tx) => fn(hooked(tx)), opts),
  };
}
