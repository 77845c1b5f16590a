import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";

/**
 * Database.transaction on both drivers, for a body that leaves statements
 * running (the decision batch sends its writes unawaited, so the COMMIT
 * travels with them; see tracked-statements.ts): the transaction commits
 * only once every one of them succeeded, rolls back otherwise, and names
 * the statement that failed first.
 */
for (const driver of DRIVERS) {
  describe(`Database.transaction (${driver})`, () => {
    let t: TestDatabase;
    const ids = async () => (await t.db.query<{ id: number }>("SELECT id FROM tx_probe ORDER BY id")).rows.map((r) => r.id);
    const code = (e: unknown) => (e as { code?: string }).code;

    before(async () => {
      t = await openTestDatabase(driver);
      await t.db.query("CREATE TABLE tx_probe (id integer PRIMARY KEY)");
    });
    after(() => t.drop());

    it("commits the statements the body did not await before it resolves", async () => {
      await t.db.query("DELETE FROM tx_probe");
      const result = await t.db.transaction(async (tx) => {
        await tx.query("INSERT INTO tx_probe VALUES ($1)", [1]);
        void tx.query("INSERT INTO tx_probe VALUES ($1)", [2]);
        void tx.query("INSERT INTO tx_probe VALUES ($1)", [3]);
        return "done";
      });
      assert.equal(result, "done");
      assert.deepEqual(await ids(), [1, 2, 3]);
    });

    it("runs statements in the order sent, awaited or not", async () => {
      await t.db.query("DELETE FROM tx_probe");
      const seen = await t.db.transaction(async (tx) => {
        void tx.query("INSERT INTO tx_probe VALUES ($1)", [10]);
        void tx.query("UPDATE tx_probe SET id = id + 1 WHERE id = $1", [10]);
        return (await tx.query<{ id: number }>("SELECT id FROM tx_probe")).rows.map((r) => r.id);
      });
      assert.deepEqual(seen, [11]);
      assert.deepEqual(await ids(), [11]);
    });

    it("rolls back everything when a statement the body did not await fails, with that statement's error", async () => {
      await t.db.query("DELETE FROM tx_probe");
      await t.db.query("INSERT INTO tx_probe VALUES (1)");
      await assert.rejects(
        t.db.transaction(async (tx) => {
          await tx.query("INSERT INTO tx_probe VALUES ($1)", [2]);
          void tx.query("INSERT INTO tx_probe VALUES ($1)", [1]);
          return "never";
        }),
        (e) => code(e) === "23505",
      );
      assert.deepEqual(await ids(), [1]);
    });

    it("names the first statement that failed, not a later one the aborted transaction refused", async () => {
      await t.db.query("DELETE FROM tx_probe");
      await t.db.query("INSERT INTO tx_probe VALUES (1)");
      await assert.rejects(
        t.db.transaction(async (tx) => {
          void tx.query("INSERT INTO tx_probe VALUES ($1)", [1]);
          // Refused with "current transaction is aborted" (25P02).
          await tx.query("INSERT INTO tx_probe VALUES ($1)", [5]);
        }),
        (e) => code(e) === "23505",
      );
      assert.deepEqual(await ids(), [1]);
    });

    it("passes on an error the body throws itself, rolling back", async () => {
      await t.db.query("DELETE FROM tx_probe");
      await assert.rejects(
        t.db.transaction(async (tx) => {
          void tx.query("INSERT INTO tx_probe VALUES ($1)", [7]);
          throw new Error("refused by the body");
        }),
        /refused by the body/,
      );
      assert.deepEqual(await ids(), []);
    });

    it("leaves its connections usable after a failure", async () => {
      await t.db.query("DELETE FROM tx_probe");
      await t.db.query("INSERT INTO tx_probe VALUES (1)");
      for (let i = 0; i < 20; i++) {
        await assert.rejects(t.db.transaction(async (tx) => void tx.query("INSERT INTO tx_probe VALUES ($1)", [1])));
      }
      await Promise.all(Array.from({ length: 20 }, (_, i) => t.db.transaction(async (tx) => void tx.query("INSERT INTO tx_probe VALUES ($1)", [100 + i]))));
      assert.equal((await ids()).length, 21);
    });
  });
}
