import { mkdirSync } from "node:fs";
import { PGlite, types } from "@electric-sql/pglite";
import { type Database, PLANNER_SETTINGS, type Queryable } from "./database.js";
import { trackStatements } from "./tracked-statements.js";
import { preparedStatements } from "./pglite-prepared.js";

/**
 * A {@link Database} on embedded PGlite (PostgreSQL compiled to WASM) in a
 * data directory, or in memory when `dataDir` is undefined. PGlite has one
 * connection, so transactions run one at a time.
 */
export async function createPgliteDatabase(dataDir: string | undefined): Promise<Database> {
  if (dataDir !== undefined) mkdirSync(dataDir, { recursive: true });
  // Return int8 as text, as pg does, so both drivers hand the store the
  // same shapes.
  const db = await PGlite.create(dataDir, { parsers: { [types.INT8]: (v: string) => v } });
  // Its one connection plans as the server's do.
  for (const [k, v] of Object.entries(PLANNER_SETTINGS)) await db.query(`SET ${k} = ${v}`);
  const asQueryable = (q: Pick<PGlite, "query">): Queryable => ({
    query: (sql, params) => q.query(sql, params as unknown[]) as never,
  });
  const prepared = preparedStatements(db);
  return {
    kind: "pglite",
    parallelism: 1,
    ...asQueryable(db),
    transaction: (fn, options) =>
      db.transaction(async (tx) => {
        // As on the pg driver: see TransactionOptions.genericPlans.
        if (options?.genericPlans === true) await tx.query("SET LOCAL plan_cache_mode = auto");
        // As on the pg driver, a body may leave its last statements running;
        // they finish before PGlite commits.
        const statements = trackStatements(prepared(asQueryable(tx)));
        const result = await statements.run(fn);
        await statements.settled();
        return result;
      }),
    // One process owns a PGlite store, so NOTIFY only ever reaches itself.
    listen: async (channel, onNotify) => {
      const unlisten = await db.listen(channel, () => onNotify());
      return unlisten;
    },
    close: () => db.close(),
  };
}
