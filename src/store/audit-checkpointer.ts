import { sign } from "node:crypto";
import type { AuditKey } from "../audit/audit-key.js";
import { sha256 } from "../audit/audit-body.js";
import { canonicalJson } from "../audit/canonical-json.js";
import type { CheckpointBody } from "../audit/verify-audit-log.js";
import type { Database, Queryable } from "./database.js";

// Any fixed number: replicas agree on it, so one checkpoints at a time.
const CHECKPOINT_LOCK = 7734003;

/** Options of {@link createAuditCheckpointer}. */
export interface AuditCheckpointerOptions {
  readonly db: Database;
  /** The signing key (see loadOrCreateAuditKey); never stored in the database. */
  readonly key: AuditKey;
  readonly now?: () => number;
  /**
   * How long after its session ended a chain's records are kept; 0 keeps
   * them forever. Sessions and their actions are never removed.
   */
  readonly retentionMs?: number;
  /** Most chains one checkpoint prunes (the rest wait for the next). Default 1000. */
  readonly pruneLimit?: number;
  /**
   * Longest a checkpoint waits for the transactions in flight when it read
   * its log bound (see checkpoint); past it, that checkpoint fails and the
   * next one tries again. Default 10000.
   */
  readonly inFlightWaitMs?: number;
}

/** What one checkpoint signed. */
export interface AuditCheckpointResult {
  readonly seq: bigint;
  /** Chains whose new heads it signed. */
  readonly heads: number;
  /** Chains whose records it removed (retention). */
  readonly pruned: number;
}

/** Signs checkpoints of the audit log. */
export interface AuditCheckpointer {
  /**
   * Applies retention and signs the heads that changed since the last
   * checkpoint, in one transaction. Resolves undefined when nothing
   * changed (no checkpoint is written). Safe on every replica at once:
   * they take turns on an advisory lock.
   */
  checkpoint(): Promise<AuditCheckpointResult | undefined>;
}

type HeadRow = { chain_id: string; seq: string; hash: Uint8Array };
const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
const iso = (ms: number) => new Date(ms).toISOString();

/**
 * Creates the checkpointer. A checkpoint signs (Ed25519) the heads of the
 * chains that changed since the previous one, the chains retention removed
 * (so the verifier knows they went legitimately) and the previous
 * checkpoint's hash. It never locks a chain head: appenders lock heads
 * under their session locks, and a checkpointer that locked heads too
 * could close a cycle with them. It only reads heads, except those of the
 * sessions it prunes, whose rows it locks first, like every writer.
 */
export function createAuditCheckpointer(opts: AuditCheckpointerOptions): AuditCheckpointer {
  const { db, key } = opts;
  const now = opts.now ?? Date.now;
  const retentionMs = opts.retentionMs ?? 0;
  const pruneLimit = opts.pruneLimit ?? 1000;
  const inFlightWaitMs = opts.inFlightWaitMs ?? 10_000;

  /**
   * Waits until none of `xids` (transactions of another session) is in
   * progress. They may hold audit records at or below the bound just read,
   * not committed yet: those must be committed (or gone) before the heads
   * are read, so this very checkpoint signs them. Two checkpoints taken
   * close together (by two replicas) would otherwise both miss such a
   * record, and the verifier, which expects a bound covered by the next
   * checkpoint, would call the record inserted. No row lock is held while
   * waiting: a transaction waited for may be waiting for one.
   */
  async function waitForInFlight(tx: Queryable, xids: string[]): Promise<void> {
    const deadline = Date.now() + inFlightWaitMs;
    for (let delayMs = 1; xids.length > 0; delayMs = Math.min(delayMs * 2, 50)) {
      const { rows } = await tx.query<{ x: string }>("SELECT x::text FROM unnest($1::xid8[]) AS x WHERE pg_xact_status(x) = 'in progress'", [xids]);
      xids = rows.map((r) => r.x);
      if (xids.length === 0) return;
      if (Date.now() >= deadline) throw new Error(`audit checkpoint: ${xids.length} transaction(s) still in progress after ${inFlightWaitMs} ms; the next checkpoint tries again`);
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }

  async function prune(tx: Queryable, nowMs: number): Promise<[string, number, string][]> {
    if (retentionMs <= 0) return [];
    const due = await tx.query<{ chain_id: string }>(
      `SELECT c.chain_id FROM audit_chains c JOIN sessions s ON s.session_id = c.chain_id
        WHERE c.seq > c.pruned_seq AND s.end_time IS NOT NULL AND s.end_time <= $1::timestamptz
          AND c.chain_id NOT LIKE 'agent:%'
        ORDER BY c.chain_id LIMIT ${pruneLimit}`,
      [iso(nowMs - retentionMs)],
    );
    if (due.rows.length === 0) return [];
    // The session rows first, in id order, as every writer locks them: no
    // appender is then between reading and moving these heads.
    const ids = due.rows.map((r) => r.chain_id);
    await tx.query("SELECT 1 FROM sessions WHERE session_id = ANY($1::text[]) ORDER BY session_id FOR UPDATE", [ids]);
    const { rows } = await tx.query<HeadRow>(
      "SELECT chain_id, seq, hash FROM audit_chains WHERE chain_id = ANY($1::text[]) AND seq > pruned_seq ORDER BY chain_id",
      [ids],
    );
    if (rows.length === 0) return [];
    await tx.query(
      `DELETE FROM audit_records r USING unnest($1::text[], $2::bigint[]) AS u(chain_id, seq)
        WHERE r.chain_id = u.chain_id AND r.chain_seq <= u.seq`,
      [rows.map((r) => r.chain_id), rows.map((r) => r.seq)],
    );
    // The head stays: a late record (a sidecar's report) continues the chain.
    await tx.query("UPDATE audit_chains SET pruned_seq = seq WHERE chain_id = ANY($1::text[])", [rows.map((r) => r.chain_id)]);
    return rows.map((r) => [r.chain_id, Number(r.seq), hex(r.hash)]);
  }

  return {
    checkpoint() {
      return db.transaction(async (tx) => {
        await tx.query("SELECT pg_advisory_xact_lock($1)", [CHECKPOINT_LOCK]);
        const nowMs = now();
        // Read before the heads, with the transactions in flight then: once
        // they ended, every record at or below it has its chain's head
        // among the heads read next (see CheckpointBody.log_seq).
        const bound = await tx.query<{ s: string | null; xip: string[] }>(
          "SELECT (SELECT max(seq) FROM audit_records) AS s, array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS xip",
        );
        const logSeq = Number(bound.rows[0]?.s ?? 0);
        await waitForInFlight(tx, bound.rows[0]?.xip ?? []);
        const pruned = await prune(tx, nowMs);
        const changed = await tx.query<HeadRow>(
          `SELECT c.chain_id, c.seq, c.hash FROM audit_chains c LEFT JOIN audit_signed s ON s.chain_id = c.chain_id
            WHERE c.seq > coalesce(s.seq, 0) ORDER BY c.chain_id`,
        );
        if (changed.rows.length === 0 && pruned.length === 0) return undefined;
        const heads: [string, number, string][] = changed.rows.map((r) => [r.chain_id, Number(r.seq), hex(r.hash)]);
        await tx.query(
          "INSERT INTO audit_keys (key_id, public_jwk, create_time) VALUES ($1, $2, $3::timestamptz) ON CONFLICT DO NOTHING",
          [key.keyId, JSON.stringify(key.publicJwk), iso(nowMs)],
        );
        const last = await tx.query<{ seq: string; hash: Uint8Array }>("SELECT seq, hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1");
        const seq = BigInt(last.rows[0]?.seq ?? 0) + 1n;
        const body: CheckpointBody = {
          v: 1,
          seq: Number(seq),
          time: iso(nowMs),
          prev: last.rows[0] === undefined ? "" : hex(last.rows[0].hash),
          key_id: key.keyId,
          heads,
          pruned,
          log_seq: logSeq,
        };
        const text = canonicalJson(body);
        const signature = sign(null, Buffer.from(text, "utf8"), key.privateKey);
        await tx.query(
          `INSERT INTO audit_checkpoints (seq, body, hash, signature, key_id, create_time)
           VALUES ($1, $2, decode($3, 'hex'), decode($4, 'hex'), $5, $6::timestamptz)`,
          [seq.toString(), text, sha256(text).toString("hex"), signature.toString("hex"), key.keyId, iso(nowMs)],
        );
        // A pruned chain may be among the heads too: one row each.
        const signed = [...new Map([...heads, ...pruned].map((h) => [h[0], h])).values()];
        await tx.query(
          `INSERT INTO audit_signed (chain_id, seq, hash)
           SELECT u.chain_id, u.seq, decode(u.hash, 'hex') FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(chain_id, seq, hash)
           ON CONFLICT (chain_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash`,
          [signed.map((h) => h[0]), signed.map((h) => h[1]), signed.map((h) => h[2])],
        );
        return { seq, heads: heads.length, pruned: pruned.length };
      });
    },
  };
}
