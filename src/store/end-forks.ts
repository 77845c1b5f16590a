import { isTerminal } from "../core/evaluate.js";
import type { Database } from "./database.js";
import { endSessions } from "./hold-ledger.js";
import { lockScopes, type PolicyCache } from "./scope-locks.js";

/**
 * Every fork below session $1, at any depth. Written to match the partial
 * index sessions_by_ancestor (migration 009): `= ANY(ancestor_ids)` would
 * scan the whole table.
 */
export const DESCENDANTS_SQL = "SELECT session_id FROM sessions WHERE ancestor_ids @> ARRAY[$1::text] AND ancestor_ids <> '{}'";

/**
 * Ends the live forks of sessions that have ended, each fork with its
 * parent's status and reason (and `ended_with` in its event), its holds
 * released.
 *
 * A decision batch, a capture or a sidecar's report may end a session
 * (expired, exhausted) while holding only the locks of the session's own
 * chain: locking its forks there too would break the lock order (sessions
 * in id order, in one statement) and lock every fork on every capture. So
 * the forks end here, right after that commit, each tree in a transaction
 * of its own that locks it whole in order. Until then a fork decides
 * nothing (its parent's status denies it) and settles nothing
 * (WardenStore.settleHold checks its parents).
 */
export async function endForksOf(db: Database, policies: PolicyCache, sessionIds: readonly string[], now: () => number): Promise<number> {
  if (sessionIds.length === 0) return 0;
  // One index probe for the common case: the sessions that ended have no
  // live forks.
  const { rows: roots } = await db.query<{ root: string }>(
    `SELECT DISTINCT r.root FROM sessions s, unnest($1::text[]) AS r(root)
      WHERE s.ancestor_ids && $1::text[] AND s.ancestor_ids <> '{}' AND s.status IN (1, 2) AND r.root = ANY(s.ancestor_ids)`,
    [sessionIds],
  );
  let ended = 0;
  for (const { root } of roots) {
    ended += await db.transaction(async (tx) => {
      const { rows } = await tx.query<{ agent_id: string; ancestor_ids: string[]; descendants: string[] }>(
        `SELECT agent_id, ancestor_ids, ARRAY(${DESCENDANTS_SQL}) AS descendants FROM sessions WHERE session_id = $1`,
        [root],
      );
      const r = rows[0];
      if (r === undefined) return 0;
      const ids = [...new Set([root, ...r.ancestor_ids, ...r.descendants])].sort();
      const locked = await lockScopes(tx, ids, [r.agent_id], policies);
      const parent = locked.sessions.get(root)!;
      if (!isTerminal(parent.status)) return 0;
      const live = r.descendants.filter((d) => !isTerminal(locked.sessions.get(d)!.status));
      // Read under the lock: an ended session's reason no longer changes.
      const reason = (await tx.query<{ status_reason: string }>("SELECT status_reason FROM sessions WHERE session_id = $1", [root])).rows[0]!.status_reason;
      await endSessions(tx, live, parent.status, reason, now(), root);
      return live.length;
    });
  }
  return ended;
}
