import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { LOCK_SESSIONS_SQL } from "../../src/store/scope-locks.js";
import { READ_USAGE_SQL } from "../../src/store/usage-counters.js";
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

    /**
     * The plans a decision batch caches (genericPlans: planned once per
     * connection, for no values in particular), made while the store is
     * nearly empty, as on a fresh install's first batches: they must
     * already be the index, as they are kept as the store grows.
     */
    const genericPlan = (sql: string) =>
      t.db.transaction(async (tx) => {
        await tx.query("SET LOCAL plan_cache_mode = force_generic_plan");
        await tx.query(`PREPARE plan_probe AS ${sql}`);
        try {
          const { rows } = await tx.query<{ "QUERY PLAN": string }>("EXPLAIN EXECUTE plan_probe('{a,b}')");
          return rows.map((r) => r["QUERY PLAN"]).join("\n");
        } finally {
          await tx.query("DEALLOCATE plan_probe");
        }
      });
    let early: string[] = [];

    before(async () => {
      t = await openTestDatabase(driver);
      await t.db.query("INSERT INTO agents (agent_id, create_time, update_time) VALUES ('agent-early', now(), now())");
      await t.db.query(
        `INSERT INTO sessions (session_id, agent_id, policy, status, create_time, update_time, expire_time, last_activity_time)
         SELECT 'ses_early' || g, 'agent-early', '\\x0a03555344'::bytea, 1, now(), now(), now() + interval '1 hour', now()
           FROM generate_series(1, 20) AS g`,
      );
      early = [await genericPlan(LOCK_SESSIONS_SQL), await genericPlan(READ_USAGE_SQL)];
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

    it("caches plans through the primary keys even when made on a nearly empty store", () => {
      assert.match(early[0]!, /sessions_pkey/, early[0]);
      assert.match(early[1]!, /scope_usage_pkey/, early[1]);
      for (const p of early) assert.doesNotMatch(p, /Seq Scan/, p);
    });

    it("locks a batch's sessions through the primary key", async () => {
      const p = await plan(LOCK_SESSIONS_SQL);
      assert.match(p, /Index Scan using sessions_pkey|Bitmap Index Scan on sessions_pkey/, p);
      assert.doesNotMatch(p, /Seq Scan/, p);
    });
  });
}
