// On PGlite, statements a transaction runs often are prepared once by
// name (pglite-prepared.ts). They must answer exactly as PGlite's own
// query() does, fail the same way, and leave the connection usable.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { Database } from "../../src/store/database.js";
import { createPgliteDatabase } from "../../src/store/pglite-database.js";

describe("prepared statements on PGlite", () => {
  let db: Database;
  before(async () => {
    db = await createPgliteDatabase(undefined);
    await db.query(
      "CREATE TABLE t (id text PRIMARY KEY, n bigint, s smallint, at timestamptz, body bytea, tags text[], doc jsonb, ok boolean)",
    );
  });
  after(() => db.close());

  const names = async () => (await db.query<{ name: string }>("SELECT name FROM pg_prepared_statements ORDER BY name")).rows.map((r) => r.name);
  const INSERT = "INSERT INTO t SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::timestamptz[]) AS u(id, n, s, at) RETURNING id, n, s, at";
  const SELECT = "SELECT id, n, s, at, body, tags, doc, ok FROM t WHERE id = ANY($1::text[]) ORDER BY id";

  test("a statement a transaction runs again and again is prepared by name, and answers as query() does", async () => {
    const ids = ["a", "b", "c", "d", "e"];
    for (const [i, id] of ids.entries()) {
      const inserted = await db.transaction((tx) =>
        tx.query(INSERT, [[id], [i === 0 ? "-9223372036854775808" : String(i * 1_000_000)], [i - 2], [new Date(Date.UTC(2026, 11, 7, i)).toISOString()]]),
      );
      assert.deepEqual(inserted.rows, [{ id, n: i === 0 ? "-9223372036854775808" : String(i * 1_000_000), s: i - 2, at: new Date(Date.UTC(2026, 11, 7, i)) }]);
    }
    await db.query("UPDATE t SET body = '\\x00ff'::bytea, tags = ARRAY['x', NULL, 'y,z'], doc = '{\"k\": [1, \"two\"]}', ok = true WHERE id = 'a'");
    const direct = await db.query(SELECT, [ids]);
    for (let run = 0; run < 4; run++) {
      const inTx = await db.transaction((tx) => tx.query(SELECT, [ids]));
      assert.deepEqual(inTx.rows, direct.rows, `run ${run}`);
    }
    const prepared = await names();
    assert.equal(prepared.filter((n) => n.startsWith("warden_")).length, 2, prepared.join(", "));
  });

  test("a failing prepared statement fails as query() would, rolls its transaction back and leaves the connection usable", async () => {
    const before = (await db.query<{ n: string }>("SELECT count(*)::text AS n FROM t")).rows[0]!.n;
    const err = await db
      .transaction(async (tx) => {
        await tx.query(INSERT, [["z1"], ["1"], [1], [new Date(0).toISOString()]]);
        // A key already there: a unique violation from the prepared INSERT.
        return tx.query(INSERT, [["a"], ["1"], [1], [new Date(0).toISOString()]]);
      })
      .then(
        () => assert.fail("the duplicate key was accepted"),
        (e: { code?: string }) => e,
      );
    assert.equal(err.code, "23505");
    assert.equal((await db.query<{ n: string }>("SELECT count(*)::text AS n FROM t")).rows[0]!.n, before, "nothing of the transaction stayed");
    const again = await db.transaction((tx) => tx.query<{ id: string }>(SELECT, [["b"]]));
    assert.deepEqual(again.rows.map((r) => r.id), ["b"]);
  });
});
