// The rows a decision rewrites (its session's, its usage row, its audit
// chain's head) are updated in place on their page (HOT), not moved to
// another with a new entry in each of the table's indexes: their tables
// keep room on every page (migration 024). Without it the first update of
// a row on a page filled by its neighbours moves it.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DRIVERS } from "../helpers/databases.js";
import { USD, sessionRequest } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`room for updates (${driver})`, () => {
    const suite = storeSuite(driver, "room");

    test("sessions, usage rows and audit chain heads stay on their page through decisions", async () => {
      const agentId = suite.agent();
      const ids: string[] = [];
      // Enough sessions to fill several pages of each table.
      for (let i = 0; i < 120; i++) ids.push((await suite.store.createSession(sessionRequest(agentId, { daily: { maxValueMicros: USD(1000) } }), NO_HASH)).sessionId);
      const pages = async (table: string, key: string, keys: string[]) => {
        const { rows } = await suite.t.db.query<{ k: string; page: string }>(
          `SELECT ${key} AS k, (ctid::text::point)[0]::text AS page FROM ${table} WHERE ${key} = ANY($1::text[])`,
          [keys],
        );
        assert.equal(rows.length, keys.length, table);
        return new Map(rows.map((r) => [r.k, r.page]));
      };
      const moved = (before: Map<string, string>, after: Map<string, string>) => [...before].filter(([k, page]) => after.get(k) !== page).map(([k]) => k);
      const usageKeys = ids.map((id) => `s:${id}`);
      const sessions = await pages("sessions", "session_id", ids);
      const chains = await pages("audit_chains", "chain_id", ids);
      assert.ok(new Set(sessions.values()).size > 2, `the sessions fill ${new Set(sessions.values()).size} page(s)`);
      for (const id of ids) await suite.check(id, USD(1));
      // Usage rows are written by a scope's first decision.
      const usage = await pages("scope_usage", "scope_key", usageKeys);
      for (const id of ids) await suite.check(id, USD(1));
      assert.deepEqual(
        {
          sessions: moved(sessions, await pages("sessions", "session_id", ids)),
          chains: moved(chains, await pages("audit_chains", "chain_id", ids)),
          usage: moved(usage, await pages("scope_usage", "scope_key", usageKeys)),
        },
        { sessions: [], chains: [], usage: [] },
      );
    });
  });
}
