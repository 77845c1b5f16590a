import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Database } from "../../src/store/database.js";
import { HotStatements } from "../../src/store/hot-statements.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPostgresDatabase } from "../helpers/databases.js";

describe("HotStatements", () => {
  it("names a text from its third run on, with the same name every time", () => {
    const h = new HotStatements();
    const sql = "SELECT $1::int";
    assert.equal(h.config(sql, [1]).name, undefined);
    assert.equal(h.config(sql, [2]).name, undefined);
    const name = h.config(sql, [3]).name;
    assert.match(name ?? "", /^warden_[0-9a-f]{32}$/);
    assert.equal(h.config(sql, [4]).name, name);
    assert.deepEqual(h.config(sql, [5]).values, [5]);
    // Another process names the same text alike; another text differently.
    const other = new HotStatements({ runsBeforeNamed: 1 });
    assert.equal(other.config(sql, [1]).name, name);
    assert.notEqual(other.config("SELECT $1::text", ["a"]).name, name);
  });

  it("never names a statement without parameters", () => {
    const h = new HotStatements({ runsBeforeNamed: 1 });
    for (let i = 0; i < 5; i++) {
      assert.equal(h.config("BEGIN", undefined).name, undefined);
      assert.equal(h.config("SELECT 1", []).name, undefined);
    }
    assert.equal(h.size, 0);
  });

  it("names at most maxNamed texts; the rest keep running unnamed", () => {
    const h = new HotStatements({ maxNamed: 2, runsBeforeNamed: 1 });
    const a = h.config("SELECT $1::int AS a", [1]).name;
    const b = h.config("SELECT $1::int AS b", [1]).name;
    assert.ok(a !== undefined && b !== undefined);
    for (let i = 0; i < 3; i++) assert.equal(h.config("SELECT $1::int AS c", [1]).name, undefined);
    assert.equal(h.config("SELECT $1::int AS a", [1]).name, a);
    assert.equal(h.size, 2);
  });
});

describe("createPgDatabase: hot statements on a real PostgreSQL", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let db: Database;
  before(async () => {
    pgdb = await createPostgresDatabase();
    db = createPgDatabase({ connectionString: pgdb.url, maxConnections: 2 });
  });
  after(async () => {
    await db.close();
    await pgdb.drop();
  });

  it("a statement run again is prepared once on its connection and keeps answering right", async () => {
    const sql = "SELECT $1::int + 1 AS v";
    const { results, prepared } = await db.transaction(async (tx) => {
      const results: number[] = [];
      for (let i = 0; i < 5; i++) results.push((await tx.query<{ v: number }>(sql, [i])).rows[0]!.v);
      const { rows } = await tx.query<{ name: string; statement: string }>("SELECT name, statement FROM pg_prepared_statements");
      return { results, prepared: rows };
    });
    assert.deepEqual(results, [1, 2, 3, 4, 5]);
    assert.deepEqual(
      prepared.filter((p) => p.statement === sql).map((p) => p.name),
      [new HotStatements({ runsBeforeNamed: 1 }).config(sql, [0]).name],
    );
  });

  it("every connection plans each run for its parameters, so no plan made on a small table outlives its growth", async () => {
    const modes = await Promise.all(
      [0, 1].map(() => db.transaction(async (tx) => (await tx.query<{ plan_cache_mode: string }>("SHOW plan_cache_mode")).rows[0]!.plan_cache_mode)),
    );
    assert.deepEqual(modes, ["force_custom_plan", "force_custom_plan"]);
  });

  it("a prepared statement outlives a rolled-back transaction, and a failing one fails cleanly each time", async () => {
    const sql = "SELECT 10 / $1::int AS v";
    for (let i = 0; i < 4; i++) {
      await assert.rejects(
        db.transaction((tx) => tx.query(sql, [0])),
        /division by zero/,
      );
    }
    for (let i = 0; i < 4; i++) assert.equal((await db.query<{ v: number }>(sql, [5])).rows[0]!.v, 2);
    // A text the server cannot parse: the same error every time, never a
    // missing prepared statement.
    for (let i = 0; i < 5; i++) await assert.rejects(db.query("SELECT * FROM no_such_table WHERE x = $1", [1]), /relation "no_such_table" does not exist/);
  });
});
