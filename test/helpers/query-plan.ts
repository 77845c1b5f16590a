import type { Database } from "../../src/store/database.js";

/**
 * The EXPLAIN text of `sql` (parameters already written in) with sequential
 * scans priced out: if an index can serve the statement, the plan names it.
 * A statement no index can serve still plans a sequential scan.
 */
export function planWithoutSeqScans(db: Database, sql: string): Promise<string> {
  return db.transaction(async (tx) => {
    await tx.query("SET LOCAL enable_seqscan = off");
    const { rows } = await tx.query<{ "QUERY PLAN": string }>(`EXPLAIN ${sql}`);
    return rows.map((r) => r["QUERY PLAN"]).join("\n");
  });
}
