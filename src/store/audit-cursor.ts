import { Code, ConnectError } from "@connectrpc/connect";
import { type PageQuery, pageToken, readPageToken } from "./page-token.js";

/**
 * Where a reader of the audit log stands, so that following page tokens
 * lists every record exactly once, however late its transaction commits.
 *
 * A record's seq comes from an identity column when it is inserted, not
 * when its transaction commits: seq 11 can become visible after seq 12 has
 * been listed. Keyset paging on seq alone ("seq > 12") would then never
 * list 11, and an exporter tailing the log would lose it. Taking seqs under
 * a lock held to commit (as event positions are) would serialize every
 * decision batch's commit across replicas. Instead the reader remembers
 * which transactions were still running when it listed (the snapshot's
 * in-progress ids; audit_records.xid, migration 020), and lists their
 * records once they commit, at or below the seq it has reached.
 *
 * Invariant: every record not yet listed with seq <= `after` belongs to a
 * transaction in `pending`, and has a seq above that transaction's mark.
 *
 * Why a transaction that was not running at the snapshot can only add
 * records above what the snapshot showed: every audit insert follows the
 * read of its chain heads (readAuditHeads), which gives the transaction
 * its id before it takes any seq. A transaction that gets its
 * id after the snapshot therefore takes seqs after every seq the snapshot
 * could show.
 */
export interface AuditCursor {
  /** Every record up to here was listed, but for those of `pending`. */
  readonly after: bigint;
  /** Transaction id → the seq its records at or below `after` start above. */
  readonly pending: ReadonlyMap<bigint, bigint>;
}

const INT64_MIN = -(2n ** 63n);

/** The start of the log: below every seq, even one put there by hand. */
export const LOG_START: AuditCursor = { after: INT64_MIN, pending: new Map() };

/**
 * The cursor after a full page, from the page's seqs (ascending, as
 * listed), the seq of the first record left for the next page, and the
 * transactions the page's snapshot saw in progress.
 */
export function advanceAuditCursor(cur: AuditCursor, listed: readonly bigint[], nextSeq: bigint, inProgress: readonly bigint[]): AuditCursor {
  const running = new Set(inProgress);
  const last = listed.at(-1);
  if (nextSeq <= cur.after) {
    // The page ended among late records (all of committed transactions,
    // listed in seq order): `after` stays; a committed transaction's
    // records are now listed up to the page's last; a running one's were
    // invisible, so its mark stays.
    const pending = new Map<bigint, bigint>();
    for (const [xid, mark] of cur.pending) pending.set(xid, running.has(xid) || last === undefined || last < mark ? mark : last);
    return { after: cur.after, pending };
  }
  // Every late record that is visible was listed, and every visible record
  // up to the page's last. What is not yet visible at or below it belongs
  // to a transaction running at the snapshot: one already pending keeps its
  // mark, a new one can only have records above the old `after` (the
  // invariant); committed ones are done.
  const pending = new Map<bigint, bigint>();
  for (const xid of running) pending.set(xid, cur.pending.get(xid) ?? cur.after);
  return { after: last !== undefined && last > cur.after ? last : cur.after, pending };
}

/**
 * The page token for `cur`, bound to `query` (see {@link pageToken}).
 * Pending transactions are written "xid:gap", gap = after − mark, to keep
 * the token short (they are as many as the transactions running at once,
 * at most the server's connections).
 */
export function auditPageToken(cur: AuditCursor, query: PageQuery): string {
  const p = [...cur.pending].map(([xid, mark]) => `${xid}:${cur.after - mark}`).join(",");
  return pageToken({ seq: cur.after.toString(), p }, query);
}

const PENDING = /^(?:\d{1,20}:\d{1,20}(?:,\d{1,20}:\d{1,20})*)?$/;

/**
 * The cursor in a page token from {@link auditPageToken} for the same
 * `query`; LOG_START for "".
 */
export function readAuditPageToken(token: string, query: PageQuery): AuditCursor {
  // Tokens from before migration 020 carry only the seq.
  const pos = readPageToken(token, { seq: "integer" }, query) as { seq: string; p?: unknown } | undefined;
  if (pos === undefined) return LOG_START;
  const after = BigInt(pos.seq);
  const p = pos.p ?? "";
  const forged = () => new ConnectError("page_token: not a token this server issued", Code.InvalidArgument);
  // (readPageToken has kept `after` within int64.)
  if (typeof p !== "string" || !PENDING.test(p)) throw forged();
  const pending = new Map<bigint, bigint>();
  for (const entry of p === "" ? [] : p.split(",")) {
    const [xid, gap] = entry.split(":").map(BigInt) as [bigint, bigint];
    if (after - gap < INT64_MIN || xid >= 2n ** 64n) throw forged();
    pending.set(xid, after - gap);
  }
  return { after, pending };
}
