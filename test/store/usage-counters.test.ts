// saveCounters: the rows loadCounters found are updated, new ones inserted,
// and a scope saved twice in one transaction is inserted once.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { counterKey, LIFETIME_START_MS } from "../../src/core/evaluate.js";
import { loadCounters, saveCounters } from "../../src/store/usage-counters.js";
import { DRIVERS } from "../helpers/databases.js";
import { storeSuite } from "../helpers/store-suite.js";

const lifetime = (scopeKey: string) => ({ scopeKey, window: "lifetime" as const, startMs: LIFETIME_START_MS });

for (const driver of DRIVERS) {
  describe(`usage counters on ${driver}`, () => {
    // Scopes of no session: the books check would look for their actions.
    const suite = storeSuite(driver, "usage", { ledgerCheck: false });

    test("a new scope is inserted, then updated, also when saved twice in one transaction", async () => {
      const key = `s:usage-${driver}-${Date.now()}`;
      const a = lifetime(key);
      await suite.t.db.transaction(async (tx) => {
        const usage = await loadCounters(tx, [a]);
        assert.equal(usage.stored.has(key), false);
        usage.get(counterKey(key, "lifetime", LIFETIME_START_MS))!.committedValue = 5n;
        await saveCounters(tx, usage);
        usage.get(counterKey(key, "lifetime", LIFETIME_START_MS))!.committedValue = 7n;
        await saveCounters(tx, usage);
      });
      const again = await suite.t.db.transaction(async (tx) => {
        const usage = await loadCounters(tx, [a]);
        assert.equal(usage.stored.has(key), true);
        usage.get(counterKey(key, "lifetime", LIFETIME_START_MS))!.committedActions = 3n;
        await saveCounters(tx, usage);
        return loadCounters(tx, [a]);
      });
      const c = again.get(counterKey(key, "lifetime", LIFETIME_START_MS))!;
      assert.deepEqual([c.committedValue, c.committedActions], [7n, 3n]);
      const { rows } = await suite.t.db.query<{ n: string }>("SELECT count(*) AS n FROM scope_usage WHERE scope_key = $1", [key]);
      assert.equal(Number(rows[0]!.n), 1);
    });
  });
}
