import { parse as results, type PGlite, protocol } from "@electric-sql/pglite";
import type { Queryable } from "./database.js";
import { HotStatements } from "./hot-statements.js";

/**
 * Named prepared statements on PGlite, for statements run inside a
 * transaction.
 *
 * PGlite's `query()` sends every statement unnamed, with a Describe of
 * the statement to learn its parameter types, each message a call of its
 * own into the WASM module: the statement is parsed, analyzed and planned
 * on every run, as it was on the pg driver before it named its frequent
 * statements (see HotStatements). Here a frequent text is prepared once by
 * name (Parse and Describe), and each run is a Bind, Describe, Execute and
 * Sync in one call. Its results are read by PGlite's own parser, with the
 * instance's parsers and serializers, so rows come back exactly as
 * `query()` gives them.
 *
 * Inside `PGlite.transaction` only: that holds PGlite's transaction lock,
 * and `runExclusive` takes its query lock, as `query()` does within a
 * transaction. (Outside one, `query()` also takes the transaction lock,
 * which PGlite does not offer publicly.)
 */
export function preparedStatements(db: PGlite): (tx: Queryable) => Queryable {
  const hot = new HotStatements();
  /** Parameter type OIDs of each statement prepared, by name. */
  const prepared = new Map<string, number[]>();
  const exec = (...messages: Uint8Array[]) => db.execProtocolStream(Buffer.concat(messages), { syncToFs: false });
  const run = (name: string, text: string, params: readonly unknown[]) =>
    db.runExclusive(async () => {
      let oids = prepared.get(name);
      if (oids === undefined) {
        oids = results.parseDescribeStatementResults(
          await exec(protocol.serialize.parse({ name, text }), protocol.serialize.describe({ type: "S", name }), protocol.serialize.sync()),
        );
        prepared.set(name, oids);
      }
      const types = oids;
      const values = params.map((v, i) => {
        if (v === null || v === undefined) return null;
        const serialize = db.serializers[types[i]!];
        return serialize === undefined ? String(v) : serialize(v);
      });
      const messages = await exec(
        protocol.serialize.bind({ statement: name, values }),
        protocol.serialize.describe({ type: "P" }),
        protocol.serialize.execute({}),
        protocol.serialize.sync(),
      );
      return results.parseResults(messages, db.parsers)[0]!;
    });
  return (tx) => ({
    query(sql, params) {
      const { name } = hot.config(sql, params);
      return (name === undefined ? tx.query(sql, params) : run(name, sql, params!)) as never;
    },
  });
}
