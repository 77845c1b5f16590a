import { toJson } from "@bufbuild/protobuf";
import { Outcome, Reason } from "../gen/warden/v1/decision_pb.js";
import { type Action, ActionSchema, ActionStatus } from "../gen/warden/v1/policy_service_pb.js";
import { chainRecord } from "../audit/audit-body.js";
import { appendStatements, foldStatements } from "./append-statement.js";
import type { Queryable } from "./database.js";

/** One change to append to the audit log, in the transaction that makes it. */
export interface AuditEntry {
  /** The chain: the session id, or `agent:<id>` (see agentChain). */
  readonly chain: string;
  /** e.g. "decision", "session.revoked", "authorization.captured". */
  readonly type: string;
  readonly nowMs: number;
  readonly sessionId: string | null;
  readonly agentId: string;
  /** What changed (snake_case keys; amounts as strings of micros). */
  readonly data: Record<string, unknown>;
}

/** The head of a chain: its last seq and hash (seq 0 and no hash when empty). */
interface Head {
  seq: number;
  hash: Buffer;
  /** Whether `audit_chains` has its row yet (false: inserted with the chain's first records). */
  stored: boolean;
}

/** Records with their chain links computed, ready to write. */
export interface ChainedAudit {
  readonly rows: readonly {
    chain: string;
    seq: number;
    type: string;
    time: string;
    sessionId: string | null;
    agentId: string;
    body: string;
    prev: Buffer;
    hash: Buffer;
  }[];
  /** The new head of every chain written to. */
  readonly heads: ReadonlyMap<string, Head>;
}

/**
 * Reads the heads of `chains` (seq 0 for a chain with no row yet). It takes
 * no lock of its own: a chain's appenders (and the checkpointer, when it
 * prunes) hold its owner's row lock, the session's or the agent's, which
 * serializes them, so the heads read here, in a statement that starts
 * after that lock was taken, stay current until this transaction writes
 * them. Heads were once read with an upsert that locked them, which wrote
 * two row versions of every head per transaction (the lock, then the new
 * head) for nothing the owner locks did not already give.
 *
 * It also gives the transaction its id (pg_current_xact_id) before it
 * takes any record seq: audit-cursor.ts relies on that.
 */
export async function readAuditHeads(tx: Queryable, chains: Iterable<string>): Promise<Map<string, Head>> {
  const ids = [...new Set(chains)];
  const heads = new Map<string, Head>();
  if (ids.length === 0) return heads;
  const { rows } = await tx.query<{ chain_id: string; seq: string | null; hash: Uint8Array | null }>(
    `SELECT u.chain_id, c.seq, c.hash FROM unnest($1::text[]) AS u(chain_id) LEFT JOIN audit_chains c ON c.chain_id = u.chain_id
      WHERE pg_current_xact_id() IS NOT NULL`,
    [ids],
  );
  for (const r of rows) {
    heads.set(r.chain_id, r.seq === null ? { seq: 0, hash: Buffer.alloc(0), stored: false } : { seq: Number(r.seq), hash: Buffer.from(r.hash!), stored: true });
  }
  return heads;
}

/** Chains `entries` (in order) onto `heads`: pure, no I/O. */
export function chainAudit(heads: ReadonlyMap<string, Head>, entries: readonly AuditEntry[]): ChainedAudit {
  const next = new Map<string, Head>();
  const rows: ChainedAudit["rows"][number][] = [];
  for (const e of entries) {
    const head = next.get(e.chain) ?? heads.get(e.chain);
    if (head === undefined) throw new Error(`audit chain ${e.chain} was not locked`);
    const seq = head.seq + 1;
    const time = new Date(e.nowMs).toISOString();
    const prev = head.hash;
    const { text, hash } = chainRecord({
      chain: e.chain,
      seq,
      type: e.type,
      time,
      session_id: e.sessionId,
      agent_id: e.agentId,
      data: e.data,
      prev: prev.toString("hex"),
    });
    rows.push({ chain: e.chain, seq, type: e.type, time, sessionId: e.sessionId, agentId: e.agentId, body: text, prev, hash });
    next.set(e.chain, { seq, hash, stored: head.stored });
  }
  return { rows, heads: next };
}

/**
 * The statements that write chained records and move (or create) their heads, each
 * with its own `$1…` parameters: fold them into one statement as
 * data-modifying CTEs with appendStatement (appendAudit does; the decision
 * batcher folds them into its own write). Records are inserted in their order, so log order
 * agrees with chain order. Hashes travel as hex text: both drivers pass
 * text arrays alike.
 */
export function writeAuditSql(chained: ChainedAudit): { sql: string; params: unknown[] }[] {
  const { rows, heads } = chained;
  if (rows.length === 0) return [];
  // A new chain's head is inserted, the others' moved: readAuditHeads
  // told which is which, under the owners' locks.
  const stored = [...heads.keys()].filter((c) => heads.get(c)!.stored);
  const created = [...heads.keys()].filter((c) => !heads.get(c)!.stored);
  const headParams = (ids: string[]) => [ids, ids.map((c) => heads.get(c)!.seq), ids.map((c) => heads.get(c)!.hash.toString("hex"))];
  return [
    {
      sql: `INSERT INTO audit_records (chain_id, chain_seq, type, create_time, session_id, agent_id, body, prev_hash, hash)
            SELECT u.chain_id, u.chain_seq, u.type, u.create_time, u.session_id, u.agent_id, u.body, decode(u.prev, 'hex'), decode(u.hash, 'hex')
              FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                   WITH ORDINALITY AS u(chain_id, chain_seq, type, create_time, session_id, agent_id, body, prev, hash, n)
             ORDER BY u.n`,
      params: [
        rows.map((r) => r.chain),
        rows.map((r) => r.seq),
        rows.map((r) => r.type),
        rows.map((r) => r.time),
        rows.map((r) => r.sessionId),
        rows.map((r) => r.agentId),
        rows.map((r) => r.body),
        rows.map((r) => r.prev.toString("hex")),
        rows.map((r) => r.hash.toString("hex")),
      ],
    },
    ...(stored.length === 0
      ? []
      : [
          {
            sql: `UPDATE audit_chains c SET seq = h.seq, hash = decode(h.hash, 'hex')
                    FROM unnest($1::text[], $2::bigint[], $3::text[]) AS h(chain_id, seq, hash)
                   WHERE c.chain_id = h.chain_id`,
            params: headParams(stored),
          },
        ]),
    ...(created.length === 0
      ? []
      : [
          {
            sql: `INSERT INTO audit_chains (chain_id, seq, hash)
                  SELECT h.chain_id, h.seq, decode(h.hash, 'hex') FROM unnest($1::text[], $2::bigint[], $3::text[]) AS h(chain_id, seq, hash)`,
            params: headParams(created),
          },
        ]),
  ];
}

/**
 * Appends entries to the audit log in the caller's transaction: two round
 * trips (lock and read the heads; write records and heads), whatever the
 * number of entries. Callers hold the row locks of the sessions (or
 * agents) the chains belong to.
 */
export async function appendAudit(tx: Queryable, entries: readonly AuditEntry[]): Promise<void> {
  if (entries.length === 0) return;
  const heads = await readAuditHeads(
    tx,
    entries.map((e) => e.chain),
  );
  const params: unknown[] = [];
  await tx.query(foldStatements(appendStatements(params, writeAuditSql(chainAudit(heads, entries)))), params);
}

/** What a decision record says about a decided action. */
export interface DecisionAudit {
  readonly actionId: string;
  readonly sessionId: string;
  readonly agentId: string;
  readonly method: string;
  readonly action: Action;
  readonly outcome: Outcome;
  readonly reasons: readonly Reason[];
  readonly status: ActionStatus;
  /** The currency the amount is in (the session's, when the action has none). */
  readonly currency: string;
  readonly holdExpireMs?: number | undefined;
  readonly approvalId?: string | null | undefined;
  /** Where it was decided: by the store, or by a sidecar from a lease and reported. */
  readonly source: "store" | "sidecar";
  readonly leaseId?: string | undefined;
  /** When the sidecar decided it, for reported decisions. */
  readonly decideMs?: number | undefined;
  readonly nowMs: number;
}

/** The audit entry of one decision (Authorize or Check, allowed or not). */
export function decisionAuditEntry(d: DecisionAudit): AuditEntry {
  return {
    chain: d.sessionId,
    type: "decision",
    nowMs: d.nowMs,
    sessionId: d.sessionId,
    agentId: d.agentId,
    data: {
      action_id: d.actionId,
      method: d.method,
      outcome: Outcome[d.outcome],
      reasons: d.reasons.map((r) => Reason[r]),
      status: ActionStatus[d.status],
      // proto3 JSON: int64 amounts are strings already.
      action: toJson(ActionSchema, d.action),
      currency: d.currency,
      amount_micros: (d.action.amount?.amountMicros ?? 0n).toString(),
      hold_expire_time: d.holdExpireMs === undefined ? undefined : new Date(d.holdExpireMs).toISOString(),
      approval_id: d.approvalId ?? undefined,
      source: d.source,
      lease_id: d.leaseId,
      decide_time: d.decideMs === undefined ? undefined : new Date(d.decideMs).toISOString(),
    },
  };
}
