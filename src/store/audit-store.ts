import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type AuditCheckpoint,
  AuditCheckpointSchema,
  type AuditRecord,
  AuditRecordSchema,
  type ListAuditRecordsRequest,
} from "../gen/warden/v1/audit_service_pb.js";
import { type SigningKey, SigningKeySchema } from "../gen/warden/v1/auth_service_pb.js";
import { advanceAuditCursor, auditPageToken, readAuditPageToken } from "./audit-cursor.js";
import type { Database } from "./database.js";
import { pageToken, readPageToken } from "./page-token.js";

const DEFAULT_PAGE = 100;

/** Reads of the audit log, for AuditService. */
export interface AuditStore {
  /** Records in log order, filtered, one page at a time. */
  listRecords(req: ListAuditRecordsRequest): Promise<{ records: AuditRecord[]; nextPageToken: string }>;
  /** Checkpoints, oldest first, one page at a time. */
  listCheckpoints(pageSize: number, pageToken: string): Promise<{ checkpoints: AuditCheckpoint[]; nextPageToken: string }>;
  /** Every key that signed checkpoints, as public JWKs. */
  publicKeys(): Promise<SigningKey[]>;
}

/** A checkpoint page token: the last checkpoint seq of the page before. */
function readToken(token: string): bigint | undefined {
  // No filters: a token binds to nothing but its shape (its position fields).
  const seq = readPageToken(token, { seq: "integer" }, {})?.seq;
  return seq === undefined ? undefined : BigInt(seq);
}

const writeToken = (seq: string) => pageToken({ seq }, {});

/** Creates the audit log's reads on `db`. */
export function createAuditStore(db: Database): AuditStore {
  return {
    async listRecords(req) {
      const size = req.pageSize === 0 ? DEFAULT_PAGE : req.pageSize;
      const where: string[] = [];
      const params: unknown[] = [];
      const p = (v: unknown) => {
        params.push(v);
        return `$${params.length}`;
      };
      // The times as the query compares them: records are stamped to the
      // millisecond, so a bound between two is taken up to the next one
      // (timestampMs rounds to the nearest: a since of T.0004 took in a
      // record at T.000, and an until of T.0004 left it out).
      const at = (t: typeof req.startTime) => (t === undefined ? undefined : new Date(Number(t.seconds) * 1000 + Math.ceil(t.nanos / 1_000_000)).toISOString());
      const query = { session_id: req.sessionId, agent_id: req.agentId, start_time: at(req.startTime), end_time: at(req.endTime) };
      const cur = readAuditPageToken(req.pageToken, query);
      // Records at or below the cursor that committed since the last page
      // (audit-cursor.ts), then the rest: one seq range for the index.
      const marks = [...cur.pending.values()];
      const from = marks.reduce((m, x) => (x < m ? x : m), cur.after);
      where.push(`seq > ${p(from.toString())}`);
      if (cur.pending.size > 0) {
        where.push(
          `(seq > ${p(cur.after.toString())} OR EXISTS (SELECT 1 FROM unnest(${p([...cur.pending.keys()].map(String))}::xid8[], ${p(marks.map(String))}::bigint[]) AS w(xid, mark)
             WHERE w.xid = audit_records.xid AND audit_records.seq > w.mark))`,
        );
      }
      // A session's records are exactly its chain's: the chain index serves it.
      if (req.sessionId !== "") where.push(`chain_id = ${p(req.sessionId)}`);
      if (req.agentId !== "") where.push(`agent_id = ${p(req.agentId)}`);
      if (query.start_time !== undefined) where.push(`create_time >= ${p(query.start_time)}::timestamptz`);
      if (query.end_time !== undefined) where.push(`create_time < ${p(query.end_time)}::timestamptz`);
      // One snapshot for the page and the list of transactions still
      // running, which the cursor then waits for.
      const { rows, running } = await db.transaction(async (tx) => {
        await tx.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        const page = await tx.query<{
          seq: string;
          chain_id: string;
          chain_seq: string;
          type: string;
          create_time: Date;
          session_id: string | null;
          agent_id: string;
          body: string;
          prev_hash: Uint8Array;
          hash: Uint8Array;
        }>(
          `SELECT seq, chain_id, chain_seq, type, create_time, session_id, agent_id, body, prev_hash, hash FROM audit_records
            WHERE ${where.join(" AND ")} ORDER BY seq LIMIT ${size + 1}`,
          params,
        );
        const snap = await tx.query<{ xip: string[] }>("SELECT array(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x) AS xip");
        return { rows: page.rows, running: snap.rows[0]!.xip.map(BigInt) };
      });
      const page = rows.slice(0, size);
      return {
        records: page.map((r) =>
          create(AuditRecordSchema, {
            seq: BigInt(r.seq),
            chainId: r.chain_id,
            chainSeq: BigInt(r.chain_seq),
            type: r.type,
            createTime: timestampFromMs(r.create_time.getTime()),
            sessionId: r.session_id ?? "",
            agentId: r.agent_id,
            body: r.body,
            prevHash: r.prev_hash,
            hash: r.hash,
          }),
        ),
        // Empty on the last page, as everywhere: records committed after
        // it are newer than the listing, like any written after it.
        nextPageToken:
          rows.length > size
            ? auditPageToken(
                advanceAuditCursor(
                  cur,
                  page.map((r) => BigInt(r.seq)),
                  BigInt(rows[size]!.seq),
                  running,
                ),
                query,
              )
            : "",
      };
    },

    async listCheckpoints(pageSize, pageToken) {
      const size = pageSize === 0 ? DEFAULT_PAGE : pageSize;
      const after = readToken(pageToken) ?? 0n;
      const { rows } = await db.query<{ seq: string; body: string; hash: Uint8Array; signature: Uint8Array; key_id: string; create_time: Date }>(
        `SELECT seq, body, hash, signature, key_id, create_time FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT ${size + 1}`,
        [after.toString()],
      );
      const page = rows.slice(0, size);
      return {
        checkpoints: page.map((r) =>
          create(AuditCheckpointSchema, {
            seq: BigInt(r.seq),
            body: r.body,
            hash: r.hash,
            signature: r.signature,
            keyId: r.key_id,
            createTime: timestampFromMs(r.create_time.getTime()),
          }),
        ),
        nextPageToken: rows.length > size ? writeToken(String(page.at(-1)!.seq)) : "",
      };
    },

    async publicKeys() {
      const { rows } = await db.query<{ public_jwk: string }>("SELECT public_jwk FROM audit_keys ORDER BY create_time, key_id");
      return rows.map((r) => {
        const { kty, crv, x, kid, alg, use } = JSON.parse(r.public_jwk) as Record<string, string>;
        return create(SigningKeySchema, { kty, crv, x, kid, alg, use });
      });
    },
  };
}
