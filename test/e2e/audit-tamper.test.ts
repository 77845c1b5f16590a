/**
 * Tampering with the audit table directly in PostgreSQL — an UPDATE, a
 * DELETE, an INSERT, a reordering — is caught by `warden audit verify`
 * (the real CLI against a real `warden serve`), each case on its own, and
 * named: its kind and the record. Each test restores the table afterwards.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import pg from "pg";
import { chainRecord } from "../../src/audit/audit-body.js";
import { loadOrCreateAuditKey } from "../../src/audit/audit-key.js";
import { createServiceClients } from "../../src/client/create-warden-client.js";
import { createCliTransport } from "../../src/cli/clients.js";
import type { WardenClients } from "../../src/cli/command.js";
import { type AuditCheckpointer, createAuditCheckpointer } from "../../src/store/audit-checkpointer.js";
import type { Database } from "../../src/store/database.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { runWardenCli, type ServerProcess, startServerProcess } from "../helpers/server-process.js";


describe("warden audit verify against tampering in PostgreSQL", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let server: ServerProcess;
  let dir: string;
  let keyFile: string;
  let sql: pg.Client;
  let db: Database;
  let checkpointer: AuditCheckpointer;
  let clients: WardenClients;
  let sessionA: string;
  let sessionB: string;

  /** Runs the real CLI against the server. */
  const warden = (...args: string[]) => runWardenCli(server.httpUrl, ...args);

  /** The log seq of record `chainSeq` of a chain. */
  async function logSeq(chain: string, chainSeq: number): Promise<string> {
    const { rows } = await sql.query<{ seq: string }>("SELECT seq FROM audit_records WHERE chain_id = $1 AND chain_seq = $2", [chain, chainSeq]);
    assert.equal(rows.length, 1);
    return rows[0]!.seq;
  }

  async function assertTamperFound(kind: string, chain: string, chainSeq: number, seq?: string): Promise<void> {
    const r = await warden("audit", "verify", "--public-key", join(dir, "pinned.json"));
    assert.equal(r.code, 1, r.stdout);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`^warden: audit log not intact: ${kind}: record ${chainSeq} of chain ${chain}${seq === undefined ? "" : ` \\(log seq ${seq}\\)`}`));
  }

  before(async () => {
    pgdb = await createPostgresDatabase();
    dir = mkdtempSync(join(tmpdir(), "warden-audit-e2e-"));
    keyFile = join(dir, "audit-signing-key.jwk");
    // No timer checkpoints during the tests: the test signs them itself.
    server = await startServerProcess({ databaseUrl: pgdb.url }, ["--audit-key", keyFile, "--audit-checkpoint-interval", "3600000"]);
    sql = new pg.Client({ connectionString: pgdb.url });
    await sql.connect();
    db = createPgDatabase({ connectionString: pgdb.url });
    // The same key the server signs with, as a second replica would hold it.
    checkpointer = createAuditCheckpointer({ db, key: await loadOrCreateAuditKey(keyFile), retentionMs: 1 });
    clients = createServiceClients(createCliTransport(server.httpUrl));

    const create = async (agentId: string) =>
      (await clients.sessions.createSession({ agentId, policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: durationFromMs(3_600_000) } })).session!.sessionId;
    const pay = (amountMicros: bigint) => ({ type: "payment", amount: { currencyCode: "USD", amountMicros }, merchant: "acme" });
    sessionA = await create("tamper-agent");
    sessionB = await create("other-agent");
    for (const amount of [10_000_000n, 20_000_000n, 30_000_000n]) {
      await clients.policy.check({ sessionId: sessionA, action: pay(amount) });
      await clients.policy.check({ sessionId: sessionB, action: pay(amount) });
    }
    const held = await clients.policy.authorize({ sessionId: sessionA, action: pay(5_000_000n) });
    await clients.policy.capture({ sessionId: sessionA, authorizationId: held.authorizationId });
    assert.ok((await checkpointer.checkpoint()) !== undefined);
    const pinned = await warden("audit", "public-key");
    assert.equal(pinned.code, 0, pinned.stderr);
    writeFileSync(join(dir, "pinned.json"), pinned.stdout);
  });

  after(async () => {
    await server.stop();
    await sql.end();
    await db.close();
    await pgdb.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  // Each tamper test works on the same log, restored after it.
  beforeEach(async () => {
    await sql.query("CREATE TABLE audit_backup AS SELECT * FROM audit_records");
  });
  afterEach(async () => {
    await sql.query("BEGIN; DELETE FROM audit_records; INSERT INTO audit_records SELECT * FROM audit_backup; DROP TABLE audit_backup; COMMIT");
  });

  test("an UPDATE of a record's amount is caught as modified, naming the record", async () => {
    const seq = await logSeq(sessionA, 3);
    const { rowCount } = await sql.query(`UPDATE audit_records SET body = replace(body, '"amount_micros":"20000000"', '"amount_micros":"2000000"') WHERE seq = $1`, [seq]);
    assert.equal(rowCount, 1);
    await assertTamperFound("modified", sessionA, 3, seq);
  });

  test("an UPDATE that also rehashes the record is caught as modified, through the next record's link", async () => {
    const seq = await logSeq(sessionA, 3);
    const { rows } = await sql.query<{ body: string }>("SELECT body FROM audit_records WHERE seq = $1", [seq]);
    const { v: _, ...body } = JSON.parse(rows[0]!.body) as Parameters<typeof chainRecord>[0] & { v: number };
    const forged = chainRecord({ ...body, data: { ...body.data, amount_micros: "2000000" } });
    await sql.query("UPDATE audit_records SET body = $2, hash = $3 WHERE seq = $1", [seq, forged.text, forged.hash]);
    await assertTamperFound("modified", sessionA, 3, seq);
  });

  test("a DELETE of a record is caught as deleted, naming the missing record", async () => {
    const { rowCount } = await sql.query("DELETE FROM audit_records WHERE chain_id = $1 AND chain_seq = 3", [sessionA]);
    assert.equal(rowCount, 1);
    await assertTamperFound("deleted", sessionA, 3);
  });

  test("an INSERT of a forged, well-hashed record is caught as inserted, naming it", async () => {
    const { rows } = await sql.query<{ body: string; prev_hash: Buffer }>("SELECT body, prev_hash FROM audit_records WHERE chain_id = $1 AND chain_seq = 2", [sessionA]);
    const { v: _, ...body } = JSON.parse(rows[0]!.body) as Parameters<typeof chainRecord>[0] & { v: number };
    const forged = chainRecord({ ...body, data: { ...body.data, amount_micros: "1" } });
    const inserted = await sql.query<{ seq: string }>(
      `INSERT INTO audit_records (chain_id, chain_seq, type, create_time, session_id, agent_id, body, prev_hash, hash)
       SELECT chain_id, chain_seq, type, create_time, session_id, agent_id, $2, prev_hash, $3 FROM audit_records WHERE chain_id = $1 AND chain_seq = 2
       RETURNING seq`,
      [sessionA, forged.text, forged.hash],
    );
    await assertTamperFound("inserted", sessionA, 2, inserted.rows[0]!.seq);
  });

  test("two records swapped in the log are caught as reordered", async () => {
    const second = await logSeq(sessionA, 2);
    const third = await logSeq(sessionA, 3);
    // Three statements in one transaction: the primary key forbids a direct swap.
    await sql.query("BEGIN");
    await sql.query("UPDATE audit_records SET seq = -1 WHERE seq = $1", [second]);
    await sql.query("UPDATE audit_records SET seq = $1 WHERE seq = $2", [second, third]);
    await sql.query("UPDATE audit_records SET seq = $1 WHERE seq = -1", [third]);
    await sql.query("COMMIT");
    await assertTamperFound("reordered", sessionA, 3, second);
  });

  test("an untouched log verifies, with the key pinned, also after retention removed an ended session", async () => {
    const ok = await warden("audit", "verify", "--public-key", join(dir, "pinned.json"));
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^audit log intact: 10 records in 2 chains, 1 signed checkpoints, 0 chains removed by retention; every record is signed/);
    assert.equal(ok.stderr, "");
    const unpinned = await warden("audit", "verify");
    assert.equal(unpinned.code, 0, unpinned.stderr);
    assert.match(unpinned.stderr, /warning: the checkpoint key is not pinned/);

    await clients.sessions.revokeSession({ sessionId: sessionB, reason: "done" });
    const pruning = await checkpointer.checkpoint();
    assert.equal(pruning?.pruned, 1);
    const { rows } = await sql.query<{ n: string }>("SELECT count(*) AS n FROM audit_records WHERE chain_id = $1", [sessionB]);
    assert.equal(rows[0]!.n, "0");
    const after = await warden("audit", "verify", "--public-key", join(dir, "pinned.json"));
    assert.equal(after.code, 0, after.stderr);
    assert.match(after.stdout, /audit log intact: 6 records in 1 chains, 2 signed checkpoints, 1 chains removed by retention/);

    const exported = join(dir, "audit.jsonl");
    const exp = await warden("audit", "export", "--session", sessionA, "--out", exported);
    assert.equal(exp.code, 0, exp.stderr);
    assert.match(exp.stdout, /wrote 6 records/);
  });
});
