import { createPublicKey, type JsonWebKey, type KeyObject, verify } from "node:crypto";
import { AUDIT_BODY_VERSION, sha256 } from "./audit-body.js";
import { canonicalJson } from "./canonical-json.js";

/** One stored audit record, as ListAuditRecords returns it. */
export interface StoredAuditRecord {
  /** Position in the log. */
  readonly seq: bigint;
  readonly chainId: string;
  readonly chainSeq: bigint;
  readonly type: string;
  /** ISO 8601 UTC with milliseconds. */
  readonly time: string;
  /** "" when the record belongs to no session (an agent's chain). */
  readonly sessionId: string;
  readonly agentId: string;
  readonly body: string;
  readonly prevHash: Uint8Array;
  readonly hash: Uint8Array;
}

/** One stored checkpoint, as ListAuditCheckpoints returns it. */
export interface StoredAuditCheckpoint {
  readonly seq: bigint;
  readonly body: string;
  readonly hash: Uint8Array;
  readonly signature: Uint8Array;
  readonly keyId: string;
}

/** A public key that may have signed checkpoints: an Ed25519 JWK with its `kid`. */
export type AuditPublicKey = JsonWebKey & { readonly kid?: string };

/** The body of a checkpoint: what its signature covers. */
export interface CheckpointBody {
  readonly v: number;
  readonly seq: number;
  readonly time: string;
  /** Hex hash of the previous checkpoint; "" for the first. */
  readonly prev: string;
  readonly key_id: string;
  /** [chain, seq, hex hash] of each chain that changed since the previous checkpoint. */
  readonly heads: readonly (readonly [string, number, string])[];
  /** [chain, seq, hex hash] of each chain whose records retention removed, up to seq. */
  readonly pruned: readonly (readonly [string, number, string])[];
  /**
   * The highest log seq when the checkpoint was taken (absent in
   * checkpoints from before it was kept): every record at or below it
   * must be covered by a signed head by the next checkpoint.
   */
  readonly log_seq?: number;
}

/** How the log differs from what was chained and signed. */
export type AuditProblemKind = "modified" | "deleted" | "inserted" | "reordered";

/** The first thing found wrong. */
export interface AuditProblem {
  readonly kind: AuditProblemKind;
  /** The record it names: its chain and chain seq, and its log seq when it exists. */
  readonly record?: { readonly chainId: string; readonly chainSeq: bigint; readonly seq?: bigint };
  /** The checkpoint it names, for a problem with the checkpoints. */
  readonly checkpoint?: bigint;
  /** A sentence for people. */
  readonly reason: string;
}

/** What {@link verifyAuditLog} found. */
export interface AuditVerification {
  readonly ok: boolean;
  /** The first problem, by position (checkpoints first, then the log in order). */
  readonly problem?: AuditProblem;
  readonly records: number;
  readonly chains: number;
  readonly checkpoints: number;
  /** Chains whose records retention removed. */
  readonly prunedChains: number;
  /** The newest records, chained but not yet covered by a signed checkpoint. */
  readonly unsigned: number;
}

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");

type Head = { seq: bigint; hash: string; checkpoint: bigint };

class Found extends Error {
  constructor(readonly problem: AuditProblem) {
    super(problem.reason);
  }
}

function fail(problem: AuditProblem): never {
  throw new Found(problem);
}

/** The checkpoints' chain of hashes and signatures; returns what they signed. */
function verifyCheckpoints(
  checkpoints: readonly StoredAuditCheckpoint[],
  keys: ReadonlyMap<string, KeyObject>,
): { signed: Map<string, Head>; pruned: Map<string, Head>; covered: { logSeq: bigint; checkpoint: bigint } | undefined } {
  const signed = new Map<string, Head>();
  const pruned = new Map<string, Head>();
  const bounds: ({ logSeq: bigint; checkpoint: bigint } | undefined)[] = [];
  let prev = "";
  for (const [i, cp] of checkpoints.entries()) {
    const want = BigInt(i + 1);
    if (cp.seq > want) fail({ kind: "deleted", checkpoint: want, reason: `checkpoint ${want} is missing` });
    if (cp.seq < want) fail({ kind: "inserted", checkpoint: cp.seq, reason: `checkpoint ${cp.seq} appears again, after checkpoint ${want - 1n}` });
    const bad = (why: string): never => fail({ kind: "modified", checkpoint: cp.seq, reason: `checkpoint ${cp.seq} ${why}` });
    if (hex(sha256(cp.body)) !== hex(cp.hash)) bad("does not match its hash");
    let body: CheckpointBody;
    try {
      body = JSON.parse(cp.body) as CheckpointBody;
    } catch {
      return bad("is not JSON");
    }
    if (!isCanonical(body, cp.body)) bad("is not in canonical form");
    if (body.v !== AUDIT_BODY_VERSION || !Number.isSafeInteger(body.seq) || BigInt(body.seq) !== cp.seq || body.key_id !== cp.keyId) bad("disagrees with its columns");
    if (body.prev !== prev) bad(`does not link to checkpoint ${cp.seq - 1n}`);
    const key = keys.get(cp.keyId);
    if (key === undefined) bad(`is signed by key ${cp.keyId}, which is not a trusted key`);
    if (!verify(null, Buffer.from(cp.body, "utf8"), key!, cp.signature)) bad(`has a bad signature (key ${cp.keyId})`);
    for (const [chain, seq, hash] of body.heads) signed.set(chain, { seq: BigInt(seq), hash, checkpoint: cp.seq });
    for (const [chain, seq, hash] of body.pruned) {
      pruned.set(chain, { seq: BigInt(seq), hash, checkpoint: cp.seq });
      const s = signed.get(chain);
      if (s === undefined || s.seq <= BigInt(seq)) signed.set(chain, { seq: BigInt(seq), hash, checkpoint: cp.seq });
    }
    bounds.push(body.log_seq === undefined ? undefined : { logSeq: BigInt(body.log_seq), checkpoint: cp.seq });
    prev = hex(cp.hash);
  }
  // The log as the checkpoint before the last saw it: by the last one,
  // every record then committed, or then still committing (it took its
  // position before it committed), had its chain's head signed. The last
  // checkpoint's own bound may still have records committing after it.
  return { signed, pruned, covered: bounds.at(-2) };
}

/**
 * Whether `text` is `value` in canonical form. A forged body may hold what
 * canonical JSON refuses to write (a number past 2^53): not canonical
 * either, and reported as such rather than thrown.
 */
function isCanonical(value: unknown, text: string): boolean {
  try {
    return canonicalJson(value) === text;
  } catch {
    return false;
  }
}

/** Whether a record's columns and hash agree with its body; the reason when not. */
function integrity(r: StoredAuditRecord): string | undefined {
  if (hex(sha256(r.body)) !== hex(r.hash)) return "its body does not match its hash";
  let b: Record<string, unknown>;
  try {
    b = JSON.parse(r.body) as Record<string, unknown>;
  } catch {
    return "its body is not JSON";
  }
  if (!isCanonical(b, r.body)) return "its body is not in canonical form";
  const agrees =
    b.v === AUDIT_BODY_VERSION &&
    b.chain === r.chainId &&
    Number.isSafeInteger(b.seq) &&
    BigInt(b.seq as number) === r.chainSeq &&
    b.type === r.type &&
    b.time === r.time &&
    b.session_id === (r.sessionId === "" ? null : r.sessionId) &&
    b.agent_id === r.agentId &&
    b.prev === hex(r.prevHash);
  return agrees ? undefined : "its columns disagree with its body";
}

/**
 * Verifies an audit log: every record against its hash and its chain,
 * every checkpoint against its signature and the one before, and every
 * head a checkpoint signed against the log. Pure: give it the whole log
 * in log order (ListAuditRecords without filters), every checkpoint in
 * order, and the public keys you trust (pin them: whoever can rewrite the
 * log can also add a key to the server's list).
 *
 * Returns the first problem by position — a checkpoint first, then the
 * log in order — with its kind: `modified` (a body, a column or a hash
 * changed, or a record was rewritten and rehashed so the next one no
 * longer links to it), `deleted` (a record or checkpoint is missing),
 * `inserted` (a record that no chain put there, e.g. a duplicate, or one
 * in a range retention removed) or `reordered` (a record comes before one
 * its chain puts first). Records newer than the last checkpoint are
 * chained but not signed: a deletion at the very end of a chain shows only
 * once a checkpoint covers it, so `unsigned` says how many there are.
 */
export function verifyAuditLog(
  records: readonly StoredAuditRecord[],
  checkpoints: readonly StoredAuditCheckpoint[],
  publicKeys: readonly AuditPublicKey[],
): AuditVerification {
  const keys = new Map<string, KeyObject>();
  for (const k of publicKeys) if (k.kid !== undefined) keys.set(k.kid, createPublicKey({ key: k, format: "jwk" }));
  const state = new Map<string, { expected: bigint; prev: string; lastSeq: bigint | undefined }>();
  let unsigned = 0;
  let prunedChains = 0;
  try {
    const { signed, pruned, covered } = verifyCheckpoints(checkpoints, keys);
    prunedChains = pruned.size;
    // Where each (chain, seq) sits in the log, to tell a reordering from a deletion.
    const last = new Map<string, number>();
    for (const [i, r] of records.entries()) last.set(`${r.chainId}#${r.chainSeq}`, i);
    let prevLogSeq: bigint | undefined;
    for (const [i, r] of records.entries()) {
      const name = { chainId: r.chainId, chainSeq: r.chainSeq, seq: r.seq };
      const at = `record ${r.chainSeq} of chain ${r.chainId} (log seq ${r.seq})`;
      if (prevLogSeq !== undefined && r.seq <= prevLogSeq) fail({ kind: "reordered", record: name, reason: `${at} is out of log order` });
      prevLogSeq = r.seq;
      const why = integrity(r);
      if (why !== undefined) fail({ kind: "modified", record: name, reason: `${at} was modified: ${why}` });
      let st = state.get(r.chainId);
      if (st === undefined) {
        const p = pruned.get(r.chainId);
        st = { expected: p === undefined ? 1n : p.seq + 1n, prev: p?.hash ?? "", lastSeq: undefined };
        state.set(r.chainId, st);
      }
      if (r.chainSeq < st.expected) {
        const p = pruned.get(r.chainId);
        fail({
          kind: "inserted",
          record: name,
          reason:
            p !== undefined && r.chainSeq <= p.seq
              ? `${at} was inserted: checkpoint ${p.checkpoint} removed chain ${r.chainId} up to record ${p.seq}`
              : `${at} was inserted: the chain is already at record ${st.expected - 1n}`,
        });
      }
      if (r.chainSeq > st.expected) {
        const later = last.get(`${r.chainId}#${st.expected}`);
        if (later !== undefined && later > i) {
          fail({ kind: "reordered", record: name, reason: `${at} was reordered: it comes before record ${st.expected} of its chain` });
        }
        fail({
          kind: "deleted",
          record: { chainId: r.chainId, chainSeq: st.expected },
          reason: `record ${st.expected} of chain ${r.chainId} was deleted (missing before log seq ${r.seq})`,
        });
      }
      if (hex(r.prevHash) !== st.prev) {
        // The link is stored in this record; the hash it should point at is
        // the predecessor's. A predecessor rewritten and rehashed passes its
        // own check and breaks this link, so it is the one named.
        if (st.lastSeq === undefined) fail({ kind: "modified", record: name, reason: `${at} was modified: it does not link to the start of its chain` });
        fail({
          kind: "modified",
          record: { chainId: r.chainId, chainSeq: r.chainSeq - 1n, seq: st.lastSeq },
          reason: `record ${r.chainSeq - 1n} of chain ${r.chainId} (log seq ${st.lastSeq}) was modified: record ${r.chainSeq} no longer links to it`,
        });
      }
      const s = signed.get(r.chainId);
      if (s !== undefined && s.seq === r.chainSeq && s.hash !== hex(r.hash)) {
        fail({ kind: "modified", record: name, reason: `${at} was modified: it differs from what checkpoint ${s.checkpoint} signed` });
      }
      if (s === undefined || r.chainSeq > s.seq) {
        // A record no checkpoint signed, though one covered its place in
        // the log: put there afterwards (a forged chain, or a forged record
        // after a chain's signed head), however well it chains.
        if (covered !== undefined && r.seq <= covered.logSeq) {
          fail({
            kind: "inserted",
            record: name,
            reason: `${at} was inserted: checkpoint ${covered.checkpoint} covered the log up to seq ${covered.logSeq}, and no checkpoint since signed this record`,
          });
        }
        unsigned++;
      }
      st.expected = r.chainSeq + 1n;
      st.prev = hex(r.hash);
      st.lastSeq = r.seq;
    }
    // Every signed head must still be there (unless retention removed it).
    for (const [chain, s] of [...signed].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const p = pruned.get(chain);
      if (p !== undefined && p.seq >= s.seq) continue;
      const reached = (state.get(chain)?.expected ?? (p === undefined ? 1n : p.seq + 1n)) - 1n;
      if (reached < s.seq) {
        fail({
          kind: "deleted",
          record: { chainId: chain, chainSeq: reached + 1n },
          reason: `record ${reached + 1n} of chain ${chain} was deleted: checkpoint ${s.checkpoint} signed the chain up to record ${s.seq}`,
        });
      }
    }
  } catch (err) {
    if (!(err instanceof Found)) throw err;
    return { ok: false, problem: err.problem, records: records.length, chains: state.size, checkpoints: checkpoints.length, prunedChains, unsigned };
  }
  return { ok: true, records: records.length, chains: state.size, checkpoints: checkpoints.length, prunedChains, unsigned };
}
