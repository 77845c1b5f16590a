import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject, sign } from "node:crypto";
import { describe, test } from "node:test";
import { type AuditBody, chainRecord, sha256 } from "../../src/audit/audit-body.js";
import { canonicalJson } from "../../src/audit/canonical-json.js";
import {
  type AuditPublicKey,
  type CheckpointBody,
  type StoredAuditCheckpoint,
  type StoredAuditRecord,
  verifyAuditLog,
} from "../../src/audit/verify-audit-log.js";
import { chainAudit } from "../../src/store/audit-log.js";

describe("canonical JSON", () => {
  test("sorts keys at every depth, drops undefined, writes bigints as strings, no whitespace", () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [3, { z: true, y: null }], c: "x" }, u: undefined, m: 12345678901234567890n }), '{"a":{"c":"x","d":[3,{"y":null,"z":true}]},"b":1,"m":"12345678901234567890"}');
  });

  test("refuses numbers JSON cannot carry exactly", () => {
    assert.throws(() => canonicalJson({ a: 2 ** 60 }), /cannot be carried exactly/);
    assert.throws(() => canonicalJson({ a: Number.NaN }), /cannot be carried exactly/);
  });

  test("a record's hash is SHA-256 of its canonical body, which links the previous hash", () => {
    const first = chainRecord({ chain: "s1", seq: 1, type: "decision", time: "2026-01-01T00:00:00.000Z", session_id: "s1", agent_id: "a", data: { amount_micros: "5" }, prev: "" });
    assert.equal(first.text, '{"agent_id":"a","chain":"s1","data":{"amount_micros":"5"},"prev":"","seq":1,"session_id":"s1","time":"2026-01-01T00:00:00.000Z","type":"decision","v":1}');
    assert.deepEqual(first.hash, sha256(first.text));
    const second = chainRecord({ chain: "s1", seq: 2, type: "decision", time: "2026-01-01T00:00:00.000Z", session_id: "s1", agent_id: "a", data: {}, prev: first.hash.toString("hex") });
    assert.match(second.text, new RegExp(`"prev":"${first.hash.toString("hex")}"`));
  });
});

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const KID = "test-key";
const PUBLIC: AuditPublicKey = { ...publicKey.export({ format: "jwk" }), kid: KID };

/** A log of `spec` chains (chain → record count), interleaved, in log order. */
function buildLog(spec: Record<string, number>): StoredAuditRecord[] {
  const entries = [];
  const max = Math.max(...Object.values(spec));
  for (let i = 0; i < max; i++) {
    for (const [chain, n] of Object.entries(spec)) {
      if (i < n) entries.push({ chain, type: "decision", nowMs: Date.UTC(2026, 0, 1) + i, sessionId: chain, agentId: "agent-1", data: { amount_micros: String(i + 1) } });
    }
  }
  const heads = new Map(Object.keys(spec).map((c) => [c, { seq: 0, hash: Buffer.alloc(0), stored: false }]));
  return chainAudit(heads, entries).rows.map((r, i) => ({
    seq: BigInt(i + 1),
    chainId: r.chain,
    chainSeq: BigInt(r.seq),
    type: r.type,
    time: r.time,
    sessionId: r.sessionId ?? "",
    agentId: r.agentId,
    body: r.body,
    prevHash: r.prev,
    hash: r.hash,
  }));
}

/** Checkpoints signing the log's heads after each prefix length in `at`. */
function checkpointsOf(log: readonly StoredAuditRecord[], at: readonly number[], key: KeyObject = privateKey, pruned: CheckpointBody["pruned"] = []): StoredAuditCheckpoint[] {
  const out: StoredAuditCheckpoint[] = [];
  const signed = new Map<string, string>();
  let prev = "";
  for (const [i, n] of at.entries()) {
    const heads = new Map<string, [string, number, string]>();
    for (const r of log.slice(0, n)) heads.set(r.chainId, [r.chainId, Number(r.chainSeq), Buffer.from(r.hash).toString("hex")]);
    const changed = [...heads.values()].filter((h) => signed.get(h[0]) !== h[2]).sort((a, b) => (a[0] < b[0] ? -1 : 1));
    for (const h of changed) signed.set(h[0], h[2]);
    const body = canonicalJson({ v: 1, seq: i + 1, time: "2026-01-02T00:00:00.000Z", prev, key_id: KID, heads: changed, pruned: i === at.length - 1 ? pruned : [] });
    const hash = sha256(body);
    out.push({ seq: BigInt(i + 1), body, hash, signature: sign(null, Buffer.from(body), key), keyId: KID });
    prev = hash.toString("hex");
  }
  return out;
}

/** The log with record `i` replaced. */
function withRecord(log: StoredAuditRecord[], i: number, change: Partial<StoredAuditRecord>): StoredAuditRecord[] {
  return log.map((r, j) => (j === i ? { ...r, ...change } : r));
}

/** Record `i` rewritten with new data and rehashed (an attacker who knows the format, not the key). */
function rehashed(r: StoredAuditRecord, data: Record<string, unknown>): StoredAuditRecord {
  const { v: _, ...b } = JSON.parse(r.body) as AuditBody;
  const { text, hash } = chainRecord({ ...b, data });
  return { ...r, body: text, hash };
}

describe("verifyAuditLog", () => {
  const log = buildLog({ s1: 4, s2: 3 }); // s1#1 s2#1 s1#2 s2#2 s1#3 s2#3 s1#4
  const cps = checkpointsOf(log, [3, 6]);

  test("an intact log verifies; records after the last checkpoint count as unsigned", () => {
    const v = verifyAuditLog(log, cps, [PUBLIC]);
    assert.equal(v.ok, true, v.problem?.reason);
    assert.deepEqual([v.records, v.chains, v.checkpoints, v.unsigned], [7, 2, 2, 1]);
  });

  test("a changed body that was not rehashed: modified, naming the record", () => {
    const b = log[2]!.body.replace('"amount_micros":"2"', '"amount_micros":"9"');
    const v = verifyAuditLog(withRecord(log, 2, { body: b }), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "modified");
    assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 2n, seq: 3n });
  });

  test("a body rewritten and rehashed with what canonical JSON cannot hold (a fractional seq, a number past 2^53): modified, not a crash", () => {
    for (const [from, to] of [
      ['"seq":2', '"seq":2.5'],
      ['"amount_micros":"2"', '"amount_micros":90071992547409930'],
    ] as const) {
      const body = log[2]!.body.replace(from, to);
      assert.notEqual(body, log[2]!.body);
      const v = verifyAuditLog(withRecord(log, 2, { body, hash: sha256(body) }), cps, [PUBLIC]);
      assert.equal(v.problem?.kind, "modified", `${to}: ${v.problem?.reason}`);
      assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 2n, seq: 3n });
    }
  });

  test("a changed column: modified", () => {
    const v = verifyAuditLog(withRecord(log, 1, { type: "session.created" }), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "modified");
    assert.deepEqual(v.problem?.record, { chainId: "s2", chainSeq: 1n, seq: 2n });
  });

  test("a record rewritten and rehashed: modified, named through the next record's link", () => {
    const v = verifyAuditLog(withRecord(log, 2, rehashed(log[2]!, { amount_micros: "1" })), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "modified");
    assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 2n, seq: 3n });
  });

  test("a chain's signed last record rewritten and rehashed: modified, against the checkpoint", () => {
    const v = verifyAuditLog(withRecord(log, 5, rehashed(log[5]!, { amount_micros: "1" })), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "modified");
    assert.deepEqual(v.problem?.record, { chainId: "s2", chainSeq: 3n, seq: 6n });
    assert.match(v.problem!.reason, /checkpoint 2/);
  });

  test("a deleted record in a chain: deleted, naming the missing one", () => {
    const v = verifyAuditLog(log.filter((_, i) => i !== 2), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "deleted");
    assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 2n });
  });

  test("a deleted signed tail: deleted", () => {
    const v = verifyAuditLog(log.filter((_, i) => i !== 5), cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "deleted");
    assert.deepEqual(v.problem?.record, { chainId: "s2", chainSeq: 3n });
  });

  test("an inserted copy: inserted", () => {
    const copy = { ...log[2]!, seq: 8n };
    const v = verifyAuditLog([...log, copy], cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "inserted");
    assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 2n, seq: 8n });
  });

  test("two records of a chain swapped in the log: reordered", () => {
    const swapped = [...log];
    [swapped[2], swapped[4]] = [{ ...log[4]!, seq: 3n }, { ...log[2]!, seq: 5n }];
    const v = verifyAuditLog(swapped, cps, [PUBLIC]);
    assert.equal(v.problem?.kind, "reordered");
    assert.deepEqual(v.problem?.record, { chainId: "s1", chainSeq: 3n, seq: 3n });
  });

  test("checkpoints: a forged signature, an unknown key, a missing or edited checkpoint", () => {
    const other = generateKeyPairSync("ed25519");
    assert.match(verifyAuditLog(log, checkpointsOf(log, [3, 6], other.privateKey), [PUBLIC]).problem!.reason, /bad signature/);
    assert.match(verifyAuditLog(log, cps, [{ ...PUBLIC, kid: "another" }]).problem!.reason, /not a trusted key/);
    const missing = verifyAuditLog(log, [cps[1]!], [PUBLIC]);
    assert.deepEqual([missing.problem?.kind, missing.problem?.checkpoint], ["deleted", 1n]);
    const edited = verifyAuditLog(log, [cps[0]!, { ...cps[1]!, body: cps[1]!.body.replace('"seq":2', '"seq":3') }], [PUBLIC]);
    assert.deepEqual([edited.problem?.kind, edited.problem?.checkpoint], ["modified", 2n]);
  });

  test("a chain removed by retention verifies without its records, and flags one put back", () => {
    const s2 = log.filter((r) => r.chainId === "s2");
    const last = s2.at(-1)!;
    const pruned: CheckpointBody["pruned"] = [["s2", 3, Buffer.from(last.hash).toString("hex")]];
    const cpsPruned = checkpointsOf(log, [3, 7], privateKey, pruned);
    const kept = log.filter((r) => r.chainId !== "s2");
    const v = verifyAuditLog(kept, cpsPruned, [PUBLIC]);
    assert.equal(v.ok, true, v.problem?.reason);
    assert.equal(v.prunedChains, 1);
    const back = verifyAuditLog([...kept, { ...s2[0]!, seq: 9n }], cpsPruned, [PUBLIC]);
    assert.equal(back.problem?.kind, "inserted");
    assert.match(back.problem!.reason, /removed chain s2 up to record 3/);
  });
});
