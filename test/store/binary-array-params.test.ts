// Array parameters sent in PostgreSQL's binary format must arrive as the
// very values their text form gives: checked against the real server, each
// encoded array read back beside the same array sent as text.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { arrayParamTypes, encodeArray, withBinaryArrays } from "../../src/store/binary-array-params.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { ADMIN_URL, createPostgresDatabase } from "../helpers/databases.js";

describe("binary array parameters", () => {
  let client: pg.Client;
  before(async () => {
    client = new pg.Client({ connectionString: ADMIN_URL });
    await client.connect();
  });
  after(() => client.end());

  /** The array as PostgreSQL prints it, sent in binary and as text. */
  const both = async (type: string, values: unknown[]) => {
    const t = arrayParamTypes(`SELECT $1::${type}[]`)[0];
    assert.ok(t, type);
    const binary = encodeArray(t, values);
    assert.ok(binary, `${type}: ${values.join(", ")} has a binary form`);
    const { rows } = await client.query<{ b: string; t: string }>(`SELECT $1::${type}[]::text AS b, $2::${type}[]::text AS t`, [binary, values]);
    return rows[0]!;
  };

  const cases: [string, unknown[]][] = [
    ["text", ["", "plain", 'quo"te', "back\\slash", "{braces,comma}", "NULL", "ünïcödé 😀", '{"json":[1,"two"]}', null, 42, 7n]],
    ["text", []],
    ["bigint", ["0", "-9223372036854775808", "9223372036854775807", "9007199254740993", "-123456789012345", "1234567890123456", 123n, 5, -17, null]],
    ["int8", ["1", "2"]],
    ["integer", [2147483647, -2147483648, 0, "12", null]],
    ["smallint", [32767, -32768, 1, null]],
    [
      "timestamptz",
      [
        "2026-12-07T00:00:00.123Z",
        "1999-12-31T23:59:59.999Z",
        "1970-01-01T00:00:00.000Z",
        "1969-12-31T23:59:59.999Z",
        "2000-01-01T00:00:00.000Z",
        "2024-02-29T23:59:59.999Z",
        "0099-03-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
        new Date(Date.UTC(2024, 1, 29, 12)),
        null,
      ],
    ],
    ["timestamptz", [null, null]],
  ];
  for (const [type, values] of cases) {
    test(`${type}[] of ${values.length} arrives as its text form does`, async () => {
      const { b, t } = await both(type, values);
      assert.equal(b, t);
    });
  }

  test("a timestamp read from its ISO text is the very instant its Date is, years 1 to 9999", () => {
    const t = arrayParamTypes("SELECT $1::timestamptz[]")[0]!;
    const lo = Date.UTC(0, 0, 1) - 1900 * 365.2425 * 86_400_000;
    const hi = Date.UTC(9999, 11, 31, 23, 59, 59, 999);
    for (let i = 0; i < 5000; i++) {
      const d = new Date(Math.floor(lo + Math.random() * (hi - lo)));
      if (d.getUTCFullYear() < 1) continue;
      assert.deepEqual(encodeArray(t, [d.toISOString()]), encodeArray(t, [d]), d.toISOString());
    }
  });

  test("an element without one exact binary form leaves the whole array as text", () => {
    const t = (type: string) => arrayParamTypes(`SELECT $1::${type}[]`)[0]!;
    assert.equal(encodeArray(t("bigint"), ["9223372036854775808"]), undefined, "out of range");
    assert.equal(encodeArray(t("bigint"), ["1.5"]), undefined, "not an integer");
    assert.equal(encodeArray(t("bigint"), [1.5]), undefined);
    assert.equal(encodeArray(t("smallint"), [32768]), undefined);
    assert.equal(encodeArray(t("integer"), [2 ** 31]), undefined);
    assert.equal(encodeArray(t("timestamptz"), ["2026-12-07 00:00:00.123456+00"]), undefined, "microseconds, another layout");
    assert.equal(encodeArray(t("timestamptz"), [new Date(Number.NaN)]), undefined);
    for (const bad of ["0000-01-01T00:00:00.000Z", "2026-02-29T00:00:00.000Z", "2100-02-29T00:00:00.000Z", "2026-04-31T00:00:00.000Z", "2026-13-01T00:00:00.000Z", "2026-12-07T24:00:00.000Z", "2026-12-07 00:00:00.000Z", "2026-12-07T00:00:00.000+00"]) {
      assert.equal(encodeArray(t("timestamptz"), [bad]), undefined, bad);
    }
    assert.equal(encodeArray(t("text"), [{ an: "object" }]), undefined);
    const params = [["9223372036854775808"], ["1"]];
    const out = withBinaryArrays(arrayParamTypes("SELECT $1::bigint[], $2::bigint[]"), params);
    assert.equal(out[0], params[0], "sent as text");
    assert.ok(Buffer.isBuffer(out[1]));
  });

  test("only parameters every use of which casts them to a known array type are typed", () => {
    const types = arrayParamTypes("SELECT $1::text[], $2::bigint[], $2::bigint[], $3, $4::text[], $4, $5::numeric[], $6::int8[], $6::bigint[], $7::timestamptz");
    assert.deepEqual(
      types.map((t) => t?.oid),
      [25, 20, undefined, undefined, undefined, undefined, undefined],
    );
    assert.deepEqual(withBinaryArrays(types, ["not an array", ["1"]]).map((v) => Buffer.isBuffer(v)), [false, true]);
  });

  test("through the store's PostgreSQL driver, a batch written with unnest reads back exactly", async () => {
    const pgdb = await createPostgresDatabase();
    const db = createPgDatabase({ connectionString: pgdb.url });
    try {
      await db.query("CREATE TABLE t (id text PRIMARY KEY, n bigint, s smallint, at timestamptz, body text)");
      const rows = [
        { id: "a", n: "-9223372036854775808", s: -2, at: "2026-02-28T23:59:59.999Z", body: '{"k":"v\\"q"}' },
        { id: "b", n: "42", s: 7, at: "2026-03-01T00:00:00.000Z", body: "" },
        { id: "c", n: null, s: null, at: null, body: null },
      ];
      const sql = `INSERT INTO t SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::timestamptz[], $5::text[])`;
      // Enough runs that the driver names the statement too (HotStatements).
      for (let i = 0; i < 4; i++) {
        await db.transaction(async (tx) => {
          await tx.query("DELETE FROM t");
          await tx.query(sql, [rows.map((r) => r.id), rows.map((r) => r.n), rows.map((r) => r.s), rows.map((r) => r.at), rows.map((r) => r.body)]);
        });
      }
      const { rows: back } = await db.query<{ id: string; n: string | null; s: number | null; at: Date | null; body: string | null }>("SELECT * FROM t ORDER BY id");
      assert.deepEqual(
        back.map((r) => ({ ...r, at: r.at === null ? null : r.at.toISOString() })),
        rows,
      );
    } finally {
      await db.close();
      await pgdb.drop();
    }
  });
});
