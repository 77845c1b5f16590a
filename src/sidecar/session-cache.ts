import { toBinary } from "@bufbuild/protobuf";
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { LRUCache } from "lru-cache";
import { type CompiledPolicy, compilePolicy, EMPTY_POLICY } from "../core/compiled-policy.js";
import type { ScopeState } from "../core/evaluate.js";
import { sessionScope } from "../store/scope-locks.js";
import { Scope } from "../gen/warden/v1/decision_pb.js";
import { type SessionPolicy, SessionPolicySchema } from "../gen/warden/v1/policy_pb.js";
import type { SessionStatus } from "../gen/warden/v1/session_pb.js";
import type { AgentState, GetSessionStateResponse, SessionState } from "../gen/warden/v1/sync_service_pb.js";

/**
 * What a session shares with the other sessions of its agent: interned, so
 * that 100,000 sessions with one policy, status and parents hold one of
 * these between them.
 */
export interface SessionTerms {
  readonly agentId: string;
  readonly ancestorIds: readonly string[];
  readonly policy: CompiledPolicy;
  readonly status: SessionStatus;
  readonly idleTimeoutMs: number | undefined;
}

/**
 * One session as the sidecar decides from it: its own id, times and
 * revision, and its {@link SessionTerms} by reference. No protobuf
 * objects: a full cache holds 100,000 of these, so six fields rather
 * than ten; the getters read the shared terms and are inlined on
 * the decision path.
 */
export class CachedSession {
  readonly sessionId: string;
  readonly terms: SessionTerms;
  readonly expireMs: number;
  /** Raised locally on every decision; the store's value when synced. */
  lastActivityMs: number;
  /**
   * Until when its agent may wait on a person (SessionState.awaiting_approval_until);
   * 0 if not. Raised here when the control plane answers NEEDS_APPROVAL, ahead of the sync.
   */
  awaitingApprovalUntilMs: number;
  /** A number, not a bigint: 2^53 revisions are out of reach, and a bigint costs a heap object per session. */
  readonly revision: number;

  constructor(sessionId: string, terms: SessionTerms, expireMs: number, lastActivityMs: number, awaitingApprovalUntilMs: number, revision: number) {
    this.sessionId = sessionId;
    this.terms = terms;
    this.expireMs = expireMs;
    this.lastActivityMs = lastActivityMs;
    this.awaitingApprovalUntilMs = awaitingApprovalUntilMs;
    this.revision = revision;
  }

  get agentId(): string {
    return this.terms.agentId;
  }

  get ancestorIds(): readonly string[] {
    return this.terms.ancestorIds;
  }

  get policy(): CompiledPolicy {
    return this.terms.policy;
  }

  get status(): SessionStatus {
    return this.terms.status;
  }

  get idleTimeoutMs(): number | undefined {
    return this.terms.idleTimeoutMs;
  }
}

// Shared by every session that has no parents, which is nearly all: an
// empty array per session would be 100,000 arrays in a full cache.
const NO_ANCESTORS: readonly string[] = Object.freeze([]);

/** Options of {@link SessionCache}. */
export interface SessionCacheOptions {
  readonly maxSessions: number;
  readonly maxBytes: number;
  /** Fetches a session with its parents and agent (one call per miss). */
  readonly fetch: (sessionId: string) => Promise<GetSessionStateResponse>;
  /** Called on every lookup, for metrics. */
  readonly onLookup?: (hit: boolean) => void;
  /** Called when a session leaves the cache or changes, so leases can go back. */
  readonly onChange?: (before: CachedSession, after: CachedSession | undefined) => void;
  /** Called when a known agent's policy changes, so its sessions' leases can go back. */
  readonly onAgentChange?: (agentId: string) => void;
}

/**
 * The sidecar's sessions: an `lru-cache` bounded by entry count and by an
 * estimate of their memory, fed by the watch stream and by fetches on a
 * miss. Concurrent misses of one session share one fetch. Compiled policies
 * are interned by their bytes, since most sessions of an agent share a
 * policy: 100,000 sessions then cost ~100,000 small objects, not 100,000
 * policies.
 */
export class SessionCache {
  private readonly lru: LRUCache<string, CachedSession>;
  private readonly inflight = new Map<string, Promise<CachedSession>>();
  /**
   * Watch updates of sessions not held that arrived while any fetch was on
   * its way: a fetch brings a session's parents too, read before such an
   * update perhaps. Emptied when no fetch is left.
   */
  private readonly raced = new Map<string, SessionState>();
  /** Bumped by {@link clear}, and when {@link raced} outgrows the cache: a fetch begun before it is read again. */
  private cleared = 0;
  private readonly agents = new Map<string, { revision: bigint; scope: ScopeState }>();
  /**
   * The compiled policies in use, by their bytes (base64): of a cached
   * session or a known agent. Interned, so sessions sharing a policy share
   * one, and counted in {@link bytes} once however many use it. Without
   * them the byte bound counted ids alone, and sessions with large
   * policies (1,000 merchants of 256 characters fit the proto's limits)
   * took gigabytes under a 64 MB bound. A policy no one uses is dropped,
   * with the terms interned for it.
   */
  private readonly policies = new Map<string, CompiledPolicy>();
  /** Of each compiled policy: its key, estimated bytes, how many use it, and the {@link SessionTerms} interned for it. */
  private readonly policyFacts = new WeakMap<CompiledPolicy, PolicyFacts>();
  private policyBytes = 0;

  constructor(private readonly o: SessionCacheOptions) {
    // Bounded by bytes here and in applySession (with the policies the
    // sessions use), and by count there, not with `max`: lru-cache
    // preallocates `max` slots before anything is stored, which for
    // 100,000 sessions took ~16 ms of every sidecar's start (see
    // count-bound.ts).
    this.lru = new LRUCache<string, CachedSession>({
      maxSize: o.maxBytes,
      sizeCalculation: (s) => 200 + 2 * (s.sessionId.length + s.agentId.length) + 40 * s.ancestorIds.length,
      dispose: (value, _key, reason) => {
        if (reason === "evict" || reason === "delete") {
          this.release(value.policy);
          o.onChange?.(value, undefined);
        }
      },
    });
  }

  /** Sessions cached now. */
  get size(): number {
    return this.lru.size;
  }

  /** Estimated bytes of the cached sessions, with the policies they use (each counted once). */
  get bytes(): number {
    return this.lru.calculatedSize + this.policyBytes;
  }

  /** A cached session without fetching. */
  peek(sessionId: string): CachedSession | undefined {
    return this.lru.get(sessionId);
  }

  /** The session, fetched once on a miss however many callers wait for it. */
  get(sessionId: string): CachedSession | Promise<CachedSession> {
    const hit = this.lru.get(sessionId);
    this.o.onLookup?.(hit !== undefined);
    if (hit !== undefined) return hit;
    let p = this.inflight.get(sessionId);
    if (p === undefined) {
      const cleared = this.cleared;
      const fetching: Promise<CachedSession> = this.o
        .fetch(sessionId)
        .then((res) => {
          // Read before a clear (a watch that starts at the present): it may
          // predate a change that watch will not send. Read again.
          if (this.cleared !== cleared) {
            this.inflight.delete(sessionId);
            this.raced.delete(sessionId);
            return this.get(sessionId);
          }
          this.applyState(res);
          return this.lru.get(sessionId) ?? this.toCached(res.sessions[0]!);
        })
        .finally(() => {
          if (this.inflight.get(sessionId) === fetching) {
            this.inflight.delete(sessionId);
            if (this.inflight.size === 0) this.raced.clear();
          }
        });
      p = fetching;
      this.inflight.set(sessionId, p);
    }
    return p;
  }

  /** The scopes a decision for `s` checks: itself, its parents (cached with it), its agent. */
  scopesOf(s: CachedSession): ScopeState[] | undefined {
    const out: ScopeState[] = [sessionScope(s, Scope.SESSION)];
    for (const id of s.ancestorIds) {
      const p = this.lru.get(id);
      if (p === undefined) return undefined;
      out.push(sessionScope(p, Scope.PARENT_SESSION));
    }
    const agent = this.agents.get(s.agentId);
    if (agent === undefined) return undefined;
    out.push(agent.scope);
    return out;
  }

  /** Stores a fetched session, its parents and its agent. */
  applyState(res: GetSessionStateResponse): void {
    if (res.agent !== undefined) this.applyAgent(res.agent);
    for (const st of res.sessions) {
      // A watch update that came while this fetch was on its way may be
      // older than what the fetch read: the newer of the two stands.
      const raced = this.raced.get(st.sessionId);
      this.applySession(raced !== undefined && raced.revision > st.revision ? raced : st, true);
    }
  }

  /**
   * A session changed (from the watch stream). Only sessions held, or being
   * fetched, are stored: the rest are fetched when first needed.
   */
  applySession(st: SessionState, force = false): void {
    const cur = this.lru.peek(st.sessionId);
    if (cur === undefined && !force) {
      // Kept for any fetch in flight, not only this session's own: the
      // session may be the parent of one being fetched, which must not be
      // stored as it was before this change (a pause would be lost).
      if (this.inflight.size > 0) {
        const prev = this.raced.get(st.sessionId);
        if (prev === undefined || prev.revision < st.revision) this.raced.set(st.sessionId, st);
        if (this.raced.size > this.o.maxSessions) {
          // More changes than the cache holds while fetches never stop:
          // rather than keep them all, every fetch now in flight reads again.
          this.raced.clear();
          this.cleared++;
        }
      }
      return;
    }
    if (cur !== undefined && cur.revision >= Number(st.revision)) return;
    const next = this.toCached(st);
    // Activity seen here may be newer than the store's; the wait on a
    // person is the store's to end (a decided approval lowers it).
    if (cur !== undefined) next.lastActivityMs = Math.max(next.lastActivityMs, cur.lastActivityMs);
    this.use(next.policy);
    this.lru.set(st.sessionId, next, { noDisposeOnSet: true });
    // The one replaced is not disposed (noDisposeOnSet), nor is one deleted
    // because its successor is too big to store: either way it is gone.
    if (cur !== undefined) this.release(cur.policy);
    if (this.lru.peek(st.sessionId) !== next) this.release(next.policy);
    // The count bound, and the byte bound with the policies in use: the
    // least recently used leave, told like any eviction.
    while (this.lru.size > 0 && (this.lru.size > this.o.maxSessions || this.bytes > this.o.maxBytes)) this.lru.pop();
    if (cur !== undefined) this.o.onChange?.(cur, next);
  }

  /** An agent's policy changed. */
  applyAgent(a: AgentState): void {
    const cur = this.agents.get(a.agentId);
    if (cur !== undefined && cur.revision >= a.revision) return;
    const policy = a.policy === undefined ? EMPTY_POLICY : this.compile(a.policy);
    this.use(policy);
    if (cur !== undefined) this.release(cur.scope.policy);
    this.agents.set(a.agentId, { revision: a.revision, scope: { scope: Scope.AGENT, id: a.agentId, key: `a:${a.agentId}`, policy } });
    // Policies are interned, so an unchanged one is the same object.
    if (cur !== undefined && cur.scope.policy !== policy) this.o.onAgentChange?.(a.agentId);
  }

  /** Forgets everything (the store was replaced). */
  clear(): void {
    this.cleared++;
    this.lru.clear();
    // Changes kept for fetches in flight are the old store's, by its revisions.
    this.raced.clear();
    for (const a of this.agents.values()) this.release(a.scope.policy);
    this.agents.clear();
  }

  private toCached(st: SessionState): CachedSession {
    const terms = this.termsOf(
      // One string per agent, not one per session.
      this.agents.get(st.agentId)?.scope.id ?? st.agentId,
      st.ancestorIds,
      this.compile(st.policy!),
      st.status,
      st.idleTimeout === undefined ? undefined : durationMs(st.idleTimeout),
    );
    return new CachedSession(
      st.sessionId,
      terms,
      timestampMs(st.expireTime!),
      timestampMs(st.lastActivityTime!),
      st.awaitingApprovalUntil === undefined ? 0 : timestampMs(st.awaitingApprovalUntil),
      Number(st.revision),
    );
  }

  /** The interned terms holding exactly these values. */
  private termsOf(
    agentId: string,
    ancestorIds: readonly string[],
    policy: CompiledPolicy,
    status: SessionStatus,
    idleTimeoutMs: number | undefined,
  ): SessionTerms {
    const facts = this.policyFacts.get(policy);
    // EMPTY_POLICY (a session has a policy always) is not interned: no terms to share.
    if (facts === undefined) return Object.freeze({ agentId, ancestorIds: ancestorIds.length === 0 ? NO_ANCESTORS : Object.freeze([...ancestorIds]), policy, status, idleTimeoutMs });
    const key = JSON.stringify([status, idleTimeoutMs ?? null, agentId, ancestorIds]);
    let t = facts.terms.get(key);
    if (t === undefined) {
      // Bounded: sessions keep their terms; later ones get a new copy.
      if (facts.terms.size >= MAX_TERMS_PER_POLICY) facts.terms.clear();
      t = Object.freeze({ agentId, ancestorIds: ancestorIds.length === 0 ? NO_ANCESTORS : Object.freeze([...ancestorIds]), policy, status, idleTimeoutMs });
      facts.terms.set(key, t);
    }
    return t;
  }

  private compile(p: SessionPolicy): CompiledPolicy {
    const key = Buffer.from(toBinary(SessionPolicySchema, p)).toString("base64");
    let c = this.policies.get(key);
    if (c === undefined) {
      c = compilePolicy(p);
      // The key that interns it, the decoded strings and the compiled
      // sets: 1.85 times the key's length on the heap, measured for 1,000
      // merchants of 256 characters.
      this.policyFacts.set(c, { key, bytes: 500 + 2 * key.length, uses: 0, terms: new Map() });
    }
    return c;
  }

  /** A cached session or a known agent uses `policy`: interned and counted in {@link bytes} while any does. */
  private use(policy: CompiledPolicy): void {
    const f = this.policyFacts.get(policy);
    if (f === undefined) return;
    if (f.uses++ === 0) {
      this.policies.set(f.key, policy);
      this.policyBytes += f.bytes;
    }
  }

  /** A cached session or a known agent no longer uses `policy`. */
  private release(policy: CompiledPolicy): void {
    const f = this.policyFacts.get(policy);
    if (f === undefined || --f.uses > 0) return;
    this.policies.delete(f.key);
    this.policyBytes -= f.bytes;
    f.terms.clear();
  }
}

interface PolicyFacts {
  readonly key: string;
  readonly bytes: number;
  uses: number;
  readonly terms: Map<string, SessionTerms>;
}

/** Distinct terms (status, idle timeout, agent, parents) interned per policy before starting over. */
const MAX_TERMS_PER_POLICY = 10_000;
