import { LRUCache } from "lru-cache";
import type { Queryable } from "./database.js";

/** A session's chain: the scopes its actions are checked and charged against besides itself. */
export interface Chain {
  readonly agentId: string;
  /** Its parents, nearest first. */
  readonly ancestorIds: readonly string[];
}

/** What a transaction over some sessions locks and reads (scope-locks.ts order). */
export interface ChainScopes {
  /** The sessions and their parents, sorted: the lock order. */
  readonly sessionIds: readonly string[];
  /** Their agents, sorted. */
  readonly agentIds: readonly string[];
  /** The usage scopes of them all: `s:<session id>`, `a:<agent id>`. */
  readonly scopeKeys: ReadonlySet<string>;
}

/**
 * The chains of sessions, cached. A session's agent and parents are fixed
 * when it is created, so a chain read once stays true: a decision batch, a
 * lease grant or a sidecar's report then knows what to lock without first
 * asking the store, and sends its locks and reads in one round trip.
 * Unknown sessions are not cached (they may be created or imported later).
 */
export class SessionChains {
  private readonly cache = new LRUCache<string, Chain>({ max: 200_000 });

  get(sessionId: string): Chain | undefined {
    return this.cache.get(sessionId);
  }

  /** Reads the chains of `sessionIds` not cached yet: one statement, or none. */
  async resolve(tx: Queryable, sessionIds: readonly string[]): Promise<void> {
    const missing = sessionIds.filter((id) => !this.cache.has(id));
    if (missing.length === 0) return;
    const { rows } = await tx.query<{ session_id: string; agent_id: string; ancestor_ids: string[] }>(
      "SELECT session_id, agent_id, ancestor_ids FROM sessions WHERE session_id = ANY($1::text[])",
      [missing],
    );
    for (const r of rows) this.cache.set(r.session_id, { agentId: r.agent_id, ancestorIds: r.ancestor_ids });
  }

  /** What to lock and read for `sessionIds`: {@link resolve}, then {@link scopesOf}. */
  async resolveScopes(tx: Queryable, sessionIds: readonly string[]): Promise<ChainScopes> {
    await this.resolve(tx, sessionIds);
    return this.scopesOf(sessionIds);
  }

  /** Forgets a session's chain, e.g. after it was imported. */
  forget(sessionId: string): void {
    this.cache.delete(sessionId);
  }

  /** What to lock and read for `sessionIds` (resolved first); unknown sessions are left out. */
  scopesOf(sessionIds: Iterable<string>): ChainScopes {
    const sessions = new Set<string>();
    const agents = new Set<string>();
    for (const id of sessionIds) {
      const chain = this.cache.get(id);
      if (chain === undefined) continue;
      sessions.add(id);
      for (const a of chain.ancestorIds) sessions.add(a);
      agents.add(chain.agentId);
    }
    const sessionIdsSorted = [...sessions].sort();
    const agentIds = [...agents].sort();
    return {
      sessionIds: sessionIdsSorted,
      agentIds,
      scopeKeys: new Set([...sessionIdsSorted.map((id) => `s:${id}`), ...agentIds.map((id) => `a:${id}`)]),
    };
  }
}
