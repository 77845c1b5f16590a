import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { LOCK_SESSIONS_SQL } from "../../src/store/scope-locks.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";

/**
 * A decision batch looks its rows up by key, tens at a time. On a store of
 * a few thousand sessions the planner must still probe the index for them,
 * not read and compare every row (what it chose at PostgreSQL's default
 * random_page_cost: see PLANNER_SETTINGS). The rows are as the store
 * writes them, not yet analyzed, as in the benchmark where this was found.
 */
for (const driver of DRIVERS) {
  describe(`planner settings (${driver})`, () => {
    let t: TestDatabase;
    const ROWS = 3000;
    const ids = Array.from({ length: 30 }, (_, i) => `ses_fill${String(i * 97).padStart(5, "0")}`);

    before(async () => {
      t = await openTestDatabase(driver);
      await t.db.query("INSERT INTO agents (agent_id, create_time, update_time) VALUES ('agent-plan', now(), now())");
      await t.db.query(
        `INSERT INTO sessions (session_id, agent_id, policy, status, create_time, update_time, expire_time, last_activity_time)
         SELECT 'ses_fill' || lpad(g::text, 5, '0'), 'agent-plan', '\\x0a03555344'::bytea, 1, now(), now(), now() + interval '1 hour', now()
           FROM generate_series(0, $1::int - 1) AS g`,
        [ROWS],
      );
    });
    after(() => t.drop());

    const plan = async (sql: string) => {
      const { rows } = await t.db.query<{ "QUERY PLAN": string }>(`EXPLAIN ${sql}`, [ids]);
      return rows.map((r) => r["QUERY PLAN"]).join("\n");
    };

    it("locks a batch's sessions through the primary key", async () => {
      const p = await plan(LOCK_SESSIONS_SQL);
      assert.match(p, /Index Scan using sessions_pkey|Bitmap Index Scan on sessions_pkey/, p);
      assert.doesNotMatch(p, /Seq Scan/, p);
    });
  });
}
