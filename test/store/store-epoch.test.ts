import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { readStoreEpoch } from "../../src/store/session-sync.js";
import { DRIVERS, openTestDatabase } from "../helpers/databases.js";

for (const driver of DRIVERS) {
  describe(`the store's epoch on ${driver}`, () => {
    test("is the same for every read of one store, and another for another store", async () => {
      const [a, b] = [await openTestDatabase(driver), await openTestDatabase(driver)];
      try {
        const first = await readStoreEpoch(a.db);
        assert.match(first, /^\d+\.\d+\.\d+$/, "cluster, timeline and database");
        assert.equal(await readStoreEpoch(a.db), first);
        assert.notEqual(await readStoreEpoch(b.db), first);
      } finally {
        await a.drop();
        await b.drop();
      }
    });
  });
}
