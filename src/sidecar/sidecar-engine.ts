import { timingSafeEqual } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import { evaluate, isTerminal, type Totals, WINDOW_KIND } from "../core/evaluate.js";
import { formatMoney } from "../core/money.js";
import type { CalendarSpanCache } from "../core/windows.js";
import { type Decision, DecisionSchema, Outcome, Reason } from "../gen/warden/v1/decision_pb.js";
import { MoneySchema } from "../gen/warden/v1/money_pb.js";
import {
  type ActionRecord,
  ActionRecordSchema,
  ActionStatus,
  type AuthorizeRequest,
  type AuthorizeResponse,
  AuthorizeResponseSchema,
  type CaptureRequest,
  type CheckRequest,
  type CheckResponse,
  CheckResponseSchema,
  type PolicyService,
  type VoidRequest,
} from "../gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import {
  type IdempotencyKeyClaim,
  IdempotencyKeyClaimSchema,
  type IdempotencyKeyClaimResult,
  IdempotencyKeyState,
  HoldRelease,
  type Lease,
  LeaseRecordSchema,
  LeaseSettlementSchema,
  type SettledHold,
  type SyncService,
} from "../gen/warden/v1/sync_service_pb.js";
import { decisionToProto } from "../store/decision-proto.js";
import { BatchQueue } from "../store/batch-queue.js";
import { replayFirstAnswer } from "../store/idempotency.js";
import { idTimeMs, newId } from "../store/ids.js";
import type { ClaimResult } from "../observability/metrics.js";
import { countBound } from "./count-bound.js";
import type { CachedSession, SessionCache } from "./session-cache.js";
import type { ReportQueue } from "./report-queue.js";

/** Reasons the sidecar can be sure of on its own: the request is wrong whatever the usage. */
const CERTAIN_REASONS = new Set<Reason>([
  Reason.LIMIT_PER_TRANSACTION,
  Reason.MERCHANT_NOT_ALLOWED,
  Reason.MERCHANT_BLOCKED,
  Reason.ACTION_TYPE_NOT_ALLOWED,
  Reason.SESSION_REVOKED,
  Reason.SESSION_COMPLETED,
  Reason.SESSION_PAUSED,
  Reason.SESSION_EXHAUSTED,
  Reason.SESSION_FAILED,
  Reason.PARENT_INACTIVE,
]);

/** What an allowed decision is recorded as in a lease report (its budgets were only for the caller). */
const ALLOWED: Decision = create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" });

/** A lease leaves use this long before its expiry (a tenth of its life, at most 1 s), against clock skew. */
const MAX_LEASE_SKEW_MS = 1000;
/** Longest wait for the store's claim of a key (or its first answer) before deciding here. */
const CLAIM_TIMEOUT_MS = 1000;
/**
 * How long after a hold was placed a capture or void of it, coming to a
 * sidecar that did not place it, keeps asking the control plane: the
 * placing sidecar reports within its --report-interval (50 ms by default),
 * or after a backoff if a send failed.
 */
const UNREPORTED_HOLD_WAIT_MS = 2000;
/** A lease nobody spent from for this long goes back to the store. */
const LEASE_IDLE_MS = 5000;
/** Leases are sized to cover this much of the recent spend rate. */
const LEASE_HORIZON_S = 2;
/**
 * And to at least this many of the current action: a session's first
 * lease is sized before any rate is known, and with many sessions each
 * grant is a store transaction. The store still grants at most half of
 * what is left, so near a limit this shrinks on its own.
 */
const LEASE_MIN_ACTIONS = 32n;

/** The budget a sidecar may spend for one session, as it tracks it. */
interface LeaseState {
  readonly id: string;
  /** When it stops being spent from: its expiry less a margin for clock skew. */
  readonly expireMs: number;
  readonly grantedValue: bigint | undefined;
  readonly grantedActions: bigint | undefined;
  valueLeft: bigint | undefined;
  actionsLeft: bigint | undefined;
  usedValue: bigint;
  usedActions: bigint;
  /** Store usage at the grant minus this lease's reserve: what others had. */
  readonly base: Map<string, Totals>;
  lastUseMs: number;
}

interface SessionLeases {
  current: LeaseState | undefined;
  acquiring: Promise<LeaseState | undefined> | undefined;
  /** Spend rate estimates (per second), decayed on each update. */
  rateValue: number;
  rateActions: number;
  rateMs: number;
  /** Calls waiting for a lease now, and what they would spend: demand the next grant covers. */
  waiting: number;
  waitingValue: bigint;
  /** Bumped when the session's terms change: a grant asked for before is sized under the old ones. */
  generation: number;
}

interface LocalHold {
  readonly sessionId: string;
  readonly agentId: string;
  readonly amount: bigint;
  readonly currency: string;
  readonly expireMs: number;
  readonly createMs: number;
  readonly action: AuthorizeRequest["action"];
  readonly decision: Decision;
}

/** What became of a hold placed here, settled or let go here. */
type SettledHere = "captured" | "voided" | "expired" | "ended";

/** A call's claim of its idempotency key: open until its record is queued or the claim is given back. */
interface Claim {
  readonly actionId: string;
  open: boolean;
}

/** The calls a sidecar makes to the control plane. */
export interface ControlPlaneClients {
  readonly sync: Client<typeof SyncService>;
  readonly policy: Client<typeof PolicyService>;
}

/**
 * How a decision was made: from a lease, decided here without usage, by
 * the control plane, refused for want of it, or the first answer of its
 * idempotency key given again.
 */
export const DECISION_PATHS = ["lease", "local", "exact", "unavailable", "replay"] as const;
/** One of {@link DECISION_PATHS}: the `path` label of a sidecar's decision metrics. */
export type DecisionPath = (typeof DECISION_PATHS)[number];

/** What the engine reports for metrics; every hook optional. */
export interface EngineEvents {
  lease?(op: "grant" | "renew" | "return" | "expire"): void;
  /** Which path a decision took: from a lease, denied locally, or through the control plane. */
  path?(path: DecisionPath): void;
  /** What the claim of a call's idempotency key found. */
  claim?(result: ClaimResult): void;
}

/** Options of {@link SidecarEngine}. */
export interface SidecarEngineOptions {
  readonly cache: SessionCache;
  readonly controlPlane: ControlPlaneClients;
  readonly reports: ReportQueue;
  readonly holder: string;
  readonly spans: CalendarSpanCache;
  readonly leaseTtlMs: number;
  /**
   * Every decision through the control plane, recorded in the store before
   * it is answered: for those who want that guarantee more than
   * microseconds.
   */
  readonly exactOnly?: boolean;
  /** True while decisions may still be made from leases (see SyncClient). */
  readonly fresh: () => boolean;
  /** Called when a control-plane call succeeds or fails for lack of it. */
  readonly contact?: (ok: boolean) => void;
  /** Called when a decision found the view stale: reconnect now. */
  readonly stale?: () => void;
  readonly now?: () => number;
  readonly events?: EngineEvents;
}

type Method = "authorize" | "check";

/**
 * The sidecar's decisions (design.md §2, §4, §6).
 *
 * An action is evaluated by the same pure engine as in the store, against
 * the cached policy chain and a usage view built from the lease's grant.
 * When the outcome is ALLOW and the session's lease covers the amount, the
 * decision is made here, in microseconds, and queued for the store. When
 * the lease cannot cover it, a bigger lease is asked for; when none can be
 * granted (near a limit), the decision is made exactly by the control
 * plane. Denials the sidecar is sure of (status, merchant, type,
 * per-transaction) are answered here; those that depend on usage go to the
 * control plane, which sees every sidecar's spend.
 */
export class SidecarEngine {
  private readonly leases = new Map<string, SessionLeases>();
  private readonly holds = new Map<string, LocalHold>();
  /**
   * Holds settled here (or let go: expired, or their session ended), until
   * the store surely has the settlement: a second capture must not be
   * passed to the control plane, which may still see the hold open and
   * would capture it again.
   */
  private readonly settledHolds = new LRUCache<string, SettledHere | "settled elsewhere">({ ...countBound(100_000), ttl: 10 * 60_000 });
  /** First answers of idempotent calls made here, by "session|key". */
  private readonly answers = new LRUCache<string, { method: string; hash: Uint8Array; response: Uint8Array }>(countBound(100_000));
  /** Keyed decisions in flight, by "session|key" (see decideOnce). */
  private readonly keyed = new Map<string, Promise<AuthorizeResponse | CheckResponse>>();
  /**
   * Claims of idempotency keys: those asked while one call is in flight go
   * together in the next, so under load a call costs a share of a round
   * trip, and alone it goes at once.
   */
  private readonly claims = new BatchQueue<IdempotencyKeyClaim, IdempotencyKeyClaimResult>({
    maxBatch: 1000,
    run: async (claims) => {
      // Short: a control plane that does not answer soon is treated as away.
      const ask = async (batch: readonly IdempotencyKeyClaim[]) =>
        (await this.o.controlPlane.sync.claimIdempotencyKeys({ claims: [...batch] }, { timeoutMs: CLAIM_TIMEOUT_MS })).results;
      try {
        const results = await ask(claims);
        return claims.map((_, i) => ({ i, ok: true as const, value: results[i]! }));
      } catch (err) {
        const e = ConnectError.from(err);
        if (claims.length === 1 || isUnreachable(e)) throw e;
        // One claim the control plane refuses (a session it does not know,
        // or another agent's) must not fail the calls it was batched with.
        return Promise.all(
          claims.map((c, i) =>
            ask([c]).then(
              (r) => ({ i, ok: true as const, value: r[0]! }),
              (one: unknown) => ({ i, ok: false as const, error: ConnectError.from(one) }),
            ),
          ),
        );
      }
    },
  });
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: SidecarEngineOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Starts housekeeping: idle and expiring leases go back, lapsed holds are reported and forgotten. */
  start(intervalMs = 500): void {
    this.timer = setInterval(() => this.housekeep(), intervalMs);
    this.timer.unref();
  }

  /**
   * Stops housekeeping and queues every lease for release, and every hold
   * placed here for handing back (a clean shutdown): the store then settles
   * them through the control plane and expires them as its own, instead
   * of writing them off as a crashed sidecar's.
   */
  stop(): void {
    // Calls still in flight (a server's forced close lets handlers run on)
    // take no new lease: nothing would give it back.
    this.stopped = true;
    clearInterval(this.timer);
    for (const [sessionId, sl] of this.leases) {
      // A grant on its way goes back as it lands (see acquire).
      sl.generation++;
      if (sl.current !== undefined) this.release(sessionId, sl);
    }
    for (const id of [...this.holds.keys()]) this.dropHold(id, HoldRelease.HANDED_BACK);
  }

  /** Resolves once no lease grant is on its way (each gives its lease back as it lands, after stop). */
  async settled(): Promise<void> {
    await Promise.all([...this.leases.values()].map((sl) => sl.acquiring));
  }

  /** The number of sessions holding a lease now. */
  get leaseCount(): number {
    let n = 0;
    for (const sl of this.leases.values()) if (sl.current !== undefined) n++;
    return n;
  }

  /**
   * A session changed or left the cache: give its lease back if it can no
   * longer spend. A lease also reserves in every parent's windows, so a
   * parent that stopped or changed its policy takes its forks' leases
   * back too (they were sized under the old terms).
   */
  onSessionChange(before: CachedSession, after: CachedSession | undefined): void {
    const sl = this.leases.get(before.sessionId);
    const stale = after === undefined || after.status !== SessionStatus.ACTIVE || after.policy !== before.policy;
    if (sl !== undefined && stale) this.renounce(before.sessionId, sl);
    if (after !== undefined && stale) this.releaseWhere((s) => s.ancestorIds.includes(before.sessionId));
    // Nothing settles its holds any more (settle refuses them): the store,
    // which wrote them off when the session ended (or keeps open one
    // reported after), hears that none was captured.
    if (after !== undefined && isTerminal(after.status)) {
      for (const [id, h] of this.holds) if (h.sessionId === after.sessionId) this.dropHold(id, HoldRelease.SESSION_ENDED);
    }
  }

  /**
   * An agent's policy changed: every lease of its sessions was sized (and
   * reserved in the store) under the old one, so it goes back and the next
   * decision leases under the new limits. Without this a limit set on an
   * agent while its leases were out would not bind until they ran dry.
   */
  onAgentChange(agentId: string): void {
    this.releaseWhere((s) => s.agentId === agentId);
  }

  private releaseWhere(pred: (s: CachedSession) => boolean): void {
    for (const [sessionId, sl] of this.leases) {
      if (sl.current === undefined && sl.acquiring === undefined) continue;
      const s = this.o.cache.peek(sessionId);
      if (s !== undefined && pred(s)) this.renounce(sessionId, sl);
    }
  }

  /**
   * The session's terms changed: its lease goes back, and so will one being
   * granted now, sized under the old terms (see acquire).
   */
  private renounce(sessionId: string, sl: SessionLeases): void {
    sl.generation++;
    this.release(sessionId, sl);
  }

  /** Authorize; `onPath` learns which way it was decided (for metrics). */
  authorize(req: AuthorizeRequest, hash: Uint8Array, onPath?: (path: DecisionPath) => void): Promise<AuthorizeResponse> {
    return this.decideOnce("authorize", req, hash, onPath) as Promise<AuthorizeResponse>;
  }

  /** Check; `onPath` learns which way it was decided (for metrics). */
  check(req: CheckRequest, hash: Uint8Array, onPath?: (path: DecisionPath) => void): Promise<CheckResponse> {
    return this.decideOnce("check", req, hash, onPath) as Promise<CheckResponse>;
  }

  /**
   * Decides a call, one at a time per idempotency key: a second call with a
   * key waits for the first and then gets its answer, instead of both
   * deciding at once. Calls without a key go straight through.
   */
  private async decideOnce(
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    onPath?: (path: DecisionPath) => void,
  ): Promise<AuthorizeResponse | CheckResponse> {
    if (req.idempotencyKey === "") return this.decide(method, req, hash, onPath);
    const k = `${req.sessionId}|${req.idempotencyKey}`;
    for (let running = this.keyed.get(k); running !== undefined; running = this.keyed.get(k)) await running.catch(() => undefined);
    const p = this.decide(method, req, hash, onPath);
    this.keyed.set(k, p);
    try {
      return await p;
    } finally {
      if (this.keyed.get(k) === p) this.keyed.delete(k);
    }
  }

  private decide(
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    onPath?: (path: DecisionPath) => void,
  ): Promise<AuthorizeResponse | CheckResponse> {
    const path = (p: DecisionPath) => {
      this.o.events?.path?.(p);
      onPath?.(p);
    };
    const started = process.hrtime.bigint();
    const replay = this.replay(req.sessionId, req.idempotencyKey, method, hash);
    if (replay !== undefined) {
      path("replay");
      return Promise.resolve(decodeResponse(method, replay));
    }
    if (!this.o.fresh()) {
      this.o.stale?.();
      return Promise.resolve(this.unavailable(path, method, req, started, "the control plane has been unreachable for too long"));
    }
    // Not a layer more than needed on the hot path: calls without a key go
    // straight on. In exact mode the store decides every call under its
    // own idempotency.
    if (req.idempotencyKey === "" || this.o.exactOnly) return this.decideHere(method, req, hash, path, started, undefined);
    return this.decideClaimed(method, req, hash, path, started);
  }

  private async decideClaimed(
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    path: (p: DecisionPath) => void,
    started: bigint,
  ): Promise<AuthorizeResponse | CheckResponse> {
    const claim = await this.claim(method, req, hash);
    if (claim instanceof Uint8Array) {
      path("replay");
      return decodeResponse(method, claim);
    }
    if (claim === undefined) return this.decideHere(method, req, hash, path, started, undefined);
    // The key is this call's to answer: its record (under the claimed
    // action id) turns the claim into the first answer. Every other way out
    // gives the claim back, so a retry is not told "in progress" until the
    // claim lapses.
    try {
      return await this.decideHere(method, req, hash, path, started, claim);
    } finally {
      if (claim.open) this.o.reports.releaseClaim(req.sessionId, req.idempotencyKey, claim.actionId);
    }
  }

  private async decideHere(
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    path: (p: DecisionPath) => void,
    started: bigint,
    claim: Claim | undefined,
  ): Promise<AuthorizeResponse | CheckResponse> {
    let s: CachedSession;
    try {
      const got = this.o.cache.get(req.sessionId);
      s = got instanceof Promise ? await got : got;
      this.o.contact?.(true);
    } catch (err) {
      const e = ConnectError.from(err);
      if (!isUnreachable(e)) throw e;
      this.o.contact?.(false);
      return this.unavailable(path, method, req, started, "the session is not cached and the control plane is unreachable");
    }
    // As in the store: an ended session is an error, not a decision.
    if (isTerminal(s.status)) {
      throw new ConnectError(`session_id: session "${req.sessionId}" has ended (${SessionStatus[s.status]})`, Code.FailedPrecondition);
    }
    let scopes = this.o.cache.scopesOf(s);
    const action = req.action!;
    const amount = action.amount?.amountMicros ?? 0n;
    // Unusual shapes (a parent not cached, another currency) are the
    // store's to answer, with its exact message.
    if (scopes === undefined || (action.amount !== undefined && action.amount.currencyCode !== s.policy.currency)) {
      return this.exact(path, method, req, hash, claim);
    }

    if (this.o.exactOnly) return this.exact(path, method, req, hash, claim);
    // Checked again: the claim or the fetch above may have waited out the
    // rest of the bound, and past it nothing is spent from a lease.
    if (!this.o.fresh()) {
      this.o.stale?.();
      return this.unavailable(path, method, req, started, "the control plane has been unreachable for too long");
    }
    let nowMs = this.now();
    const sl = this.sessionLeases(req.sessionId);
    let lease = this.usable(sl.current, amount, nowMs);
    const view = (l: LeaseState | undefined) => (key: string) => {
      const b = l?.base.get(key);
      return b === undefined ? undefined : { value: b.value + l!.usedValue, actions: b.actions + l!.usedActions };
    };
    let ev = evaluate({ scopes, action: { type: action.type, amountMicros: amount, merchant: action.merchant }, nowMs, usage: view(lease), spans: this.o.spans });
    if (ev.outcome === Outcome.ALLOW && lease === undefined) {
      // Calls that waited on one grant share it; those it no longer covers
      // (a burst on a cold session) ask again, sized by the rate now seen,
      // rather than all going through the control plane one by one.
      sl.waiting++;
      sl.waitingValue += amount;
      try {
        for (let ask = 0; ask < 3 && lease === undefined; ask++) {
          if ((await this.acquire(req.sessionId, sl, amount)) === undefined) break;
          lease = this.usable(sl.current, amount, this.now());
        }
      } finally {
        sl.waiting--;
        sl.waitingValue -= amount;
      }
      if (lease !== undefined) {
        // The grant may have taken seconds (up to three asks): the bound
        // may have passed meanwhile, and what changed meanwhile (the
        // session, a parent, the agent's policy) counts.
        if (!this.o.fresh()) {
          this.o.stale?.();
          return this.unavailable(path, method, req, started, "the control plane has been unreachable for too long");
        }
        const latest = this.o.cache.peek(req.sessionId);
        // Gone from the cache, ended or a parent not cached: the store's to answer.
        scopes = latest === undefined || isTerminal(latest.status) ? undefined : this.o.cache.scopesOf(latest);
        if (scopes === undefined) return this.exact(path, method, req, hash, claim);
        s = latest!;
        nowMs = this.now();
        ev = evaluate({ scopes, action: { type: action.type, amountMicros: amount, merchant: action.merchant }, nowMs, usage: view(lease), spans: this.o.spans });
      }
    }
    if (ev.outcome === Outcome.ALLOW && lease !== undefined) {
      this.spend(req.sessionId, sl, lease, amount, nowMs);
      s.lastActivityMs = nowMs;
      path("lease");
      return this.answer(method, req, hash, s, ev.outcome, decisionToProto(ev), lease.id, nowMs, started, claim);
    }
    // An approval is the store's to create (it holds the amount while a
    // person decides), so NEEDS_APPROVAL goes through the control plane.
    if (ev.outcome === Outcome.DENY && ev.reasons.some((r) => CERTAIN_REASONS.has(r))) {
      path("local");
      return this.answer(method, req, hash, s, ev.outcome, decisionToProto(ev), "", nowMs, started, claim);
    }
    return this.exact(path, method, req, hash, claim);
  }

  /** Settles a hold placed here, or passes the call on for one placed by the control plane. */
  async capture(req: CaptureRequest, hash: Uint8Array): Promise<ActionRecord> {
    return this.settle("capture", req, hash, req.amount);
  }

  async void(req: VoidRequest, hash: Uint8Array): Promise<ActionRecord> {
    return this.settle("void", req, hash, undefined);
  }

  private async settle(
    verb: "capture" | "void",
    req: CaptureRequest | VoidRequest,
    hash: Uint8Array,
    amount: CaptureRequest["amount"],
  ): Promise<ActionRecord> {
    const prior = this.replay(req.sessionId, req.idempotencyKey, verb, hash);
    if (prior !== undefined) return fromBinary(ActionRecordSchema, prior);
    const done = this.settledHolds.get(req.authorizationId);
    // Settled elsewhere (told by the watch): the store keeps that answer
    // for its key and request, and refuses the rest. (Settled here, the
    // store may not have heard yet, and would settle it again.)
    if (done === "settled elsewhere") return this.settleElsewhere(verb, req);
    if (done === "ended") {
      const status = this.o.cache.peek(req.sessionId)?.status;
      throw new ConnectError(`session_id: session "${req.sessionId}" has ended${status === undefined ? "" : ` (${SessionStatus[status]})`}`, Code.FailedPrecondition);
    }
    if (done !== undefined) {
      const why = { captured: "was already captured", voided: "was voided", expired: "has expired" }[done];
      throw new ConnectError(`authorization_id: cannot ${verb} "${req.authorizationId}": it ${why}`, Code.FailedPrecondition);
    }
    const h = this.holds.get(req.authorizationId);
    if (h === undefined || h.sessionId !== req.sessionId) return this.settleElsewhere(verb, req);
    if (req.idempotencyKey === "") return this.settleHere(verb, req, hash, amount, h, undefined);
    // A key this sidecar has not answered may be the store's already (a
    // decision's, or another settlement's): claimed first, as decisions
    // claim theirs, so its reuse for another request is refused here too.
    const claim = await this.claimKey(req.sessionId, req.idempotencyKey, verb, hash, req.authorizationId);
    if (claim instanceof Uint8Array) return fromBinary(ActionRecordSchema, claim);
    try {
      return await this.settleHere(verb, req, hash, amount, h, claim);
    } finally {
      if (claim?.open) this.o.reports.releaseClaim(req.sessionId, req.idempotencyKey, req.authorizationId);
    }
  }

  private async settleHere(
    verb: "capture" | "void",
    req: CaptureRequest | VoidRequest,
    hash: Uint8Array,
    amount: CaptureRequest["amount"],
    h: LocalHold,
    claim: Claim | undefined,
  ): Promise<ActionRecord> {
    // A capture spends: past the staleness bound the session may have been
    // revoked unheard, so it waits for the control plane, as decisions do.
    // A void gives money back, and goes on.
    if (verb === "capture" && !this.o.fresh()) {
      this.o.stale?.();
      throw new ConnectError("the control plane has been unreachable for too long: capture refused; retry once it is back (the hold stays)", Code.Unavailable);
    }
    // Once its session has ended nothing may settle the hold (the store
    // closed it then). A session evicted since is fetched again; offline,
    // the hold is settled from what this sidecar knows.
    const s = this.o.cache.peek(req.sessionId) ?? (await Promise.resolve(this.o.cache.get(req.sessionId)).catch(() => undefined));
    // Settled or let go meanwhile by another call (this one waited for its
    // key's claim or the session's fetch): judged again.
    if (this.holds.get(req.authorizationId) !== h) return this.settle(verb, req, hash, amount);
    // Past its expiry the session has ended too, though the sweeper and the
    // watch have not said so yet: the store ends it EXPIRED on the spot and
    // closes the hold. (Not its idle timeout: other sidecars' activity
    // reaches the store, not this cache. Its forks end no later than it.)
    const nowMs = this.now();
    const status = s === undefined ? undefined : isTerminal(s.status) ? s.status : nowMs >= s.expireMs ? SessionStatus.EXPIRED : undefined;
    if (status !== undefined) {
      this.dropHold(req.authorizationId, HoldRelease.SESSION_ENDED);
      throw new ConnectError(`session_id: session "${req.sessionId}" has ended (${SessionStatus[status]})`, Code.FailedPrecondition);
    }
    if (nowMs >= h.expireMs) {
      this.dropHold(req.authorizationId, HoldRelease.EXPIRED);
      throw new ConnectError(`authorization_id: cannot ${verb} "${req.authorizationId}": it has expired`, Code.FailedPrecondition);
    }
    let captured = 0n;
    if (verb === "capture") {
      if (amount !== undefined && amount.currencyCode !== h.currency) {
        throw new ConnectError(`amount.currency_code: ${amount.currencyCode} differs from the authorization's ${h.currency}`, Code.InvalidArgument);
      }
      captured = amount?.amountMicros ?? h.amount;
      if (captured > h.amount) {
        throw new ConnectError(
          `amount: ${formatMoney(captured, h.currency)} is above the held ${formatMoney(h.amount, h.currency)}`,
          Code.FailedPrecondition,
        );
      }
    }
    this.holds.delete(req.authorizationId);
    this.settledHolds.set(req.authorizationId, verb === "capture" ? "captured" : "voided");
    // Activity, as in the store (the report carries its time there).
    if (s !== undefined && s.lastActivityMs < nowMs) s.lastActivityMs = nowMs;
    const record = create(ActionRecordSchema, {
      actionId: req.authorizationId,
      sessionId: h.sessionId,
      agentId: h.agentId,
      action: h.action,
      decision: h.decision,
      status: verb === "capture" ? ActionStatus.CAPTURED : ActionStatus.VOIDED,
      heldAmount: create(MoneySchema, { currencyCode: h.currency, amountMicros: 0n }),
      capturedAmount: create(MoneySchema, { currencyCode: h.currency, amountMicros: captured }),
      createTime: timestampFromMs(h.createMs),
      updateTime: timestampFromMs(nowMs),
      holdExpireTime: timestampFromMs(h.expireMs),
      method: "authorize",
    });
    const response = req.idempotencyKey === "" ? new Uint8Array(0) : toBinary(ActionRecordSchema, record);
    this.remember(req.sessionId, req.idempotencyKey, verb, hash, response);
    // The key goes with the settlement, so a retry elsewhere gets this answer
    // (and its claim, if any, becomes that answer).
    if (claim !== undefined) claim.open = false;
    this.o.reports.settle(
      req.sessionId,
      create(LeaseSettlementSchema, {
        authorizationId: req.authorizationId,
        captureMicros: verb === "capture" ? captured : undefined,
        time: timestampFromMs(nowMs),
        idempotencyKey: req.idempotencyKey,
        requestHash: req.idempotencyKey === "" ? new Uint8Array(0) : hash,
        response,
      }),
    );
    return record;
  }

  /**
   * Settles a hold this sidecar does not have, through the control plane.
   * One placed by another sidecar (the agent's work moved, or a retry went
   * elsewhere) reaches the store only with that sidecar's next report, so
   * a capture that comes quickly would be told it does not exist. While
   * the id is younger than {@link UNREPORTED_HOLD_WAIT_MS}, NOT_FOUND is
   * taken to mean "not reported yet" and asked again; after that it stands.
   */
  private async settleElsewhere(verb: "capture" | "void", req: CaptureRequest | VoidRequest): Promise<ActionRecord> {
    const placedMs = idTimeMs(req.authorizationId);
    for (let delayMs = 25; ; delayMs *= 2) {
      try {
        const res = verb === "capture" ? await this.o.controlPlane.policy.capture(req as CaptureRequest) : await this.o.controlPlane.policy.void(req as VoidRequest);
        return res.authorization!;
      } catch (err) {
        const e = ConnectError.from(err);
        const waitedEnough = placedMs === undefined || this.now() + delayMs > placedMs + UNREPORTED_HOLD_WAIT_MS;
        if (e.code !== Code.NotFound || !e.rawMessage.startsWith("authorization_id:") || waitedEnough) throw e;
        await new Promise((r) => setTimeout(r, delayMs));
      }
    }
  }

  // ---- leases ------------------------------------------------------------

  private sessionLeases(sessionId: string): SessionLeases {
    let sl = this.leases.get(sessionId);
    if (sl === undefined) {
      sl = { current: undefined, acquiring: undefined, rateValue: 0, rateActions: 0, rateMs: this.now(), waiting: 0, waitingValue: 0n, generation: 0 };
      this.leases.set(sessionId, sl);
    }
    return sl;
  }

  private usable(l: LeaseState | undefined, amount: bigint, nowMs: number): LeaseState | undefined {
    if (l === undefined || nowMs >= l.expireMs) return undefined;
    if (l.valueLeft !== undefined && l.valueLeft < amount) return undefined;
    if (l.actionsLeft !== undefined && l.actionsLeft < 1n) return undefined;
    return l;
  }

  private spend(sessionId: string, sl: SessionLeases, l: LeaseState, amount: bigint, nowMs: number): void {
    if (l.valueLeft !== undefined) l.valueLeft -= amount;
    if (l.actionsLeft !== undefined) l.actionsLeft -= 1n;
    l.usedValue += amount;
    l.usedActions += 1n;
    l.lastUseMs = nowMs;
    // Exponentially decayed rate (half-life ~1 s) of spend per second.
    const dt = Math.max(1, nowMs - sl.rateMs) / 1000;
    const decay = Math.exp(-dt * Math.LN2);
    sl.rateValue = sl.rateValue * decay + Number(amount) * (1 - decay) / dt;
    sl.rateActions = sl.rateActions * decay + (1 - decay) / dt;
    sl.rateMs = nowMs;
    // Renew ahead of need, so the hot path rarely waits for a grant.
    const low =
      (l.valueLeft !== undefined && l.grantedValue !== undefined && l.valueLeft * 4n < l.grantedValue) ||
      (l.actionsLeft !== undefined && l.grantedActions !== undefined && l.actionsLeft * 4n < l.grantedActions);
    if (low && sl.acquiring === undefined) void this.acquire(sessionId, sl, amount);
  }

  /**
   * Asks for a lease sized to the recent spend rate (at least
   * LEASE_MIN_ACTIONS of this action) plus the calls waiting for it, shared
   * by concurrent callers. The previous lease, if any, is
   * released once the new one is in hand.
   */
  private acquire(sessionId: string, sl: SessionLeases, amount: bigint): Promise<LeaseState | undefined> {
    if (sl.acquiring !== undefined) return sl.acquiring;
    // After stop: the call is decided through the control plane instead.
    if (this.stopped) return Promise.resolve(undefined);
    const desiredValue = bigMax(amount * LEASE_MIN_ACTIONS, BigInt(Math.ceil(sl.rateValue * LEASE_HORIZON_S))) + sl.waitingValue;
    const desiredActions = bigMax(LEASE_MIN_ACTIONS, BigInt(Math.ceil(sl.rateActions * LEASE_HORIZON_S))) + BigInt(sl.waiting);
    const generation = sl.generation;
    // Named here, so that a grant whose answer is lost can be given back
    // (see the failure below) instead of staying reserved, unused, until
    // the store writes it off as spent.
    const leaseId = newId("lse", this.now());
    sl.acquiring = this.o.controlPlane.sync
      .acquireLease({
        sessionId,
        holder: this.o.holder,
        desiredValueMicros: desiredValue,
        desiredActions,
        minValueMicros: amount,
        ttl: durationFromMs(this.o.leaseTtlMs),
        leaseId,
      })
      .then(
        (res) => {
          this.o.contact?.(true);
          if (res.lease === undefined) return undefined;
          // Granted under terms that have changed since it was asked for
          // (an agent limit set meanwhile): back at once; the call asks again.
          if (sl.generation !== generation) {
            this.o.reports.release(sessionId, res.lease.leaseId);
            this.o.events?.lease?.("return");
            return undefined;
          }
          const next = leaseState(res.lease, this.now());
          const prev = sl.current;
          sl.current = next;
          if (prev !== undefined) {
            this.o.reports.release(sessionId, prev.id);
            this.o.events?.lease?.("renew");
          } else {
            this.o.events?.lease?.("grant");
          }
          return next;
        },
        (err: unknown) => {
          const e = ConnectError.from(err);
          if (isUnreachable(e)) this.o.contact?.(false);
          // The store may have granted it (the answer lost to a reset, a
          // deadline, a replica killed mid-call): released by its id, it
          // comes back, or is never granted if the release gets there
          // first. Not for a call that never left (a control plane that is
          // down would collect one released id per attempt).
          if (!neverSent(e)) this.o.reports.release(sessionId, leaseId);
          return undefined;
        },
      )
      .finally(() => {
        sl.acquiring = undefined;
      });
    return sl.acquiring;
  }

  /** Gives a lease back: "return" before its expiry, "expire" at or after it (housekeeping found it run out). */
  private release(sessionId: string, sl: SessionLeases, op: "return" | "expire" = "return"): void {
    if (sl.current === undefined) return;
    this.o.reports.release(sessionId, sl.current.id);
    sl.current = undefined;
    this.o.events?.lease?.(op);
  }

  /**
   * Forgets holds placed here that the store has settled since (a capture
   * or void that reached the control plane through another sidecar, told
   * by the watch stream): a second settlement here is then refused, as
   * the store would refuse it, instead of being answered as if first.
   * The store keeps a void's amount written off until this sidecar says
   * it had not settled the hold (HOLD_RELEASE_SETTLED_ELSEWHERE); one it
   * had settled is in its reports already, and that settlement counts.
   */
  forgetSettledHolds(holds: readonly SettledHold[]): void {
    for (const h of holds) {
      const mine = this.holds.get(h.authorizationId);
      if (mine === undefined || mine.sessionId !== h.sessionId) continue;
      this.holds.delete(h.authorizationId);
      this.settledHolds.set(h.authorizationId, "settled elsewhere");
      if (h.status === ActionStatus.VOIDED) {
        this.o.reports.settle(
          h.sessionId,
          create(LeaseSettlementSchema, { authorizationId: h.authorizationId, time: timestampFromMs(this.now()), release: HoldRelease.SETTLED_ELSEWHERE }),
        );
      }
    }
  }

  private housekeep(): void {
    const nowMs = this.now();
    for (const [sessionId, sl] of this.leases) {
      const l = sl.current;
      if (l !== undefined && (nowMs >= l.expireMs || nowMs - l.lastUseMs >= LEASE_IDLE_MS)) this.release(sessionId, sl, nowMs >= l.expireMs ? "expire" : "return");
      if (sl.current === undefined && sl.acquiring === undefined) this.leases.delete(sessionId);
    }
    for (const [id, h] of this.holds) if (nowMs >= h.expireMs) this.dropHold(id, HoldRelease.EXPIRED);
  }

  /**
   * Forgets a hold placed here that nobody settled, and tells the store
   * why: without this word the store counts it as spent once it must
   * close it (its sidecar may have crashed after a capture; see
   * HoldRelease in sync_service.proto).
   */
  private dropHold(id: string, why: HoldRelease): void {
    const h = this.holds.get(id);
    if (h === undefined) return;
    this.holds.delete(id);
    // A settlement asked later is refused here with why, as the store would.
    if (why !== HoldRelease.HANDED_BACK) this.settledHolds.set(id, why === HoldRelease.EXPIRED ? "expired" : "ended");
    this.o.reports.settle(h.sessionId, create(LeaseSettlementSchema, { authorizationId: id, time: timestampFromMs(this.now()), release: why }));
  }

  // ---- answers -------------------------------------------------------------

  /**
   * Answers from here: the decision is queued for the store (with its
   * lease when it spends), a hold is remembered for its capture, and an
   * idempotent call's answer is kept for its retries.
   */
  private answer(
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    s: CachedSession,
    outcome: Outcome,
    decision: Decision,
    leaseId: string,
    nowMs: number,
    started: bigint,
    claim: Claim | undefined,
  ): AuthorizeResponse | CheckResponse {
    // A claimed key is answered by this action's record.
    const actionId = claim?.actionId ?? newId("act", nowMs);
    if (claim !== undefined) claim.open = false;
    const allowed = outcome === Outcome.ALLOW;
    const held = method === "authorize";
    const action = req.action!;
    let holdExpireMs: number | undefined;
    if (allowed && held) {
      holdExpireMs = nowMs + s.policy.holdTtlMs;
      this.holds.set(actionId, {
        sessionId: s.sessionId,
        agentId: s.agentId,
        amount: action.amount?.amountMicros ?? 0n,
        currency: s.policy.currency,
        expireMs: holdExpireMs,
        createMs: nowMs,
        action,
        decision,
      });
    }
    const response = held
      ? create(AuthorizeResponseSchema, {
          decision,
          authorizationId: allowed ? actionId : "",
          holdExpireTime: holdExpireMs === undefined ? undefined : timestampFromMs(holdExpireMs),
        })
      : create(CheckResponseSchema, { decision, actionId });
    const bytes = req.idempotencyKey === "" ? new Uint8Array(0) : encodeResponse(method, response);
    if (req.idempotencyKey !== "") this.remember(req.sessionId, req.idempotencyKey, method, hash, bytes);
    this.o.reports.record(
      s.sessionId,
      leaseId,
      create(LeaseRecordSchema, {
        actionId,
        method,
        action,
        // The ledger keeps what was decided and why; the budgets it showed
        // are left out, as they would double what each report encodes.
        decision: allowed ? ALLOWED : decision,
        createTime: timestampFromMs(nowMs),
        // Its true expiry: the store waits SIDECAR_HOLD_GRACE_MS past it for
        // this sidecar's capture before the sweeper expires it.
        holdExpireTime: holdExpireMs === undefined ? undefined : timestampFromMs(holdExpireMs),
        processingNanos: process.hrtime.bigint() - started,
        idempotencyKey: req.idempotencyKey,
        requestHash: hash,
        response: bytes,
      }),
    );
    return response;
  }

  /**
   * Decides through the control plane, exactly, after giving back this
   * session's lease (the store would otherwise count it against the very
   * request that did not fit in it) and the call's claim of its key (the
   * store would otherwise answer that a call with it is in progress).
   */
  private async exact(
    path: (p: DecisionPath) => void,
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    hash: Uint8Array,
    claim: Claim | undefined,
  ): Promise<AuthorizeResponse | CheckResponse> {
    const started = process.hrtime.bigint();
    const sl = this.leases.get(req.sessionId);
    let tell = false;
    if (claim?.open) {
      this.o.reports.releaseClaim(req.sessionId, req.idempotencyKey, claim.actionId);
      claim.open = false;
      tell = true;
    }
    if (sl?.current !== undefined) {
      this.release(req.sessionId, sl);
      tell = true;
    }
    if (tell) await this.o.reports.flush();
    try {
      const init = { sessionId: req.sessionId, action: req.action, idempotencyKey: req.idempotencyKey };
      const res = method === "authorize" ? await this.o.controlPlane.policy.authorize(init) : await this.o.controlPlane.policy.check(init);
      this.o.contact?.(true);
      path("exact");
      // Its agent now waits on a person: the session does not idle here
      // before the approval's deadline, as in the store (whose new revision
      // says the same, a moment later).
      if (res.decision?.outcome === Outcome.NEEDS_APPROVAL && res.approvalExpireTime !== undefined) {
        const s = this.o.cache.peek(req.sessionId);
        if (s !== undefined) s.awaitingApprovalUntilMs = Math.max(s.awaitingApprovalUntilMs, timestampMs(res.approvalExpireTime));
      }
      if (req.idempotencyKey !== "") this.remember(req.sessionId, req.idempotencyKey, method, hash, encodeResponse(method, res));
      return res;
    } catch (err) {
      const e = ConnectError.from(err);
      if (!isUnreachable(e)) throw e;
      // A call that timed out, was canceled or lost its connection after
      // it was sent may have been decided, and charged, before its answer
      // was lost: a DENY would tell the agent otherwise. The outcome is
      // unknown; a retry with the same idempotency key gets the store's
      // answer. Only a call that never left is surely undecided: that one
      // fails closed.
      if (e.code === Code.Unavailable) this.o.contact?.(false);
      if (!neverSent(e)) {
        throw new ConnectError(
          `the control plane did not answer (${Code[e.code]}): the ${method} may have been decided; retry it with the same idempotency_key to learn its answer`,
          e.code,
        );
      }
      return this.unavailable(path, method, req, started, "the control plane is unreachable");
    }
  }

  /** Fail closed: DENY with CONTROL_PLANE_UNAVAILABLE, recorded for when the store is back. */
  private unavailable(
    path: (p: DecisionPath) => void,
    method: Method,
    req: AuthorizeRequest | CheckRequest,
    started: bigint,
    why: string,
  ): AuthorizeResponse | CheckResponse {
    path("unavailable");
    const nowMs = this.now();
    const decision = create(DecisionSchema, { outcome: Outcome.DENY, reasons: [Reason.CONTROL_PLANE_UNAVAILABLE], message: `deny: ${why}` });
    const actionId = newId("act", nowMs);
    // Recorded only for a cached session, which the control plane gave
    // this sidecar and so is its agent's. Any other may not be (a token is
    // valid for its own session, whoever's agent it is), and a report the
    // store refuses would hold back every record sent with it.
    if (this.o.cache.peek(req.sessionId) !== undefined) {
      this.o.reports.record(
        req.sessionId,
        "",
        create(LeaseRecordSchema, {
          actionId,
          method,
          action: req.action,
          decision,
          createTime: timestampFromMs(nowMs),
          processingNanos: process.hrtime.bigint() - started,
        }),
      );
    }
    return method === "authorize" ? create(AuthorizeResponseSchema, { decision }) : create(CheckResponseSchema, { decision, actionId });
  }

  private replay(sessionId: string, key: string, method: string, hash: Uint8Array): Uint8Array | undefined {
    if (key === "") return undefined;
    const prior = this.answers.get(`${sessionId}|${key}`);
    if (prior === undefined) return undefined;
    if (prior.method !== method || prior.hash.length !== hash.length || !timingSafeEqual(prior.hash, hash)) {
      throw new ConnectError(`idempotency_key: "${key}" was already used for a different request`, Code.InvalidArgument);
    }
    return prior.response;
  }

  /**
   * Claims a key this sidecar has not answered, in the store, before the
   * call is decided here: the call may be a retry of one answered by
   * another sidecar, or by this one before it restarted (then the store's
   * first answer comes back, as bytes), or one being decided elsewhere now
   * (ABORTED: the caller retries and then gets its answer). Without the
   * control plane there is no one to ask, and the call is decided here
   * unclaimed, under the action id it would have claimed for (see
   * claimKey, and README, "Idempotency in a sidecar").
   */
  private claim(method: Method, req: AuthorizeRequest | CheckRequest, hash: Uint8Array): Promise<Uint8Array | Claim | undefined> {
    return this.claimKey(req.sessionId, req.idempotencyKey, method, hash, newId("act", this.now()));
  }

  /**
   * Claims a key for `actionId`: a decision's new action, or the hold a
   * Capture or Void settles here (its settlement, reported, fills the claim).
   */
  private async claimKey(sessionId: string, key: string, method: string, hash: Uint8Array, actionId: string): Promise<Uint8Array | Claim | undefined> {
    let res: IdempotencyKeyClaimResult;
    try {
      res = await this.claims.submit(
        create(IdempotencyKeyClaimSchema, {
          sessionId,
          idempotencyKey: key,
          method,
          requestHash: hash,
          actionId,
          ttl: durationFromMs(this.o.leaseTtlMs),
        }),
      );
      this.o.contact?.(true);
    } catch (err) {
      const e = ConnectError.from(err);
      if (!isUnreachable(e)) throw e;
      this.o.contact?.(false);
      this.o.events?.claim?.("unclaimed");
      // Decided here unclaimed, but under this action id all the same: a
      // claim whose answer was lost (a deadline, a reset) may have been
      // stored, and only a record of this id fills it, or a release of it
      // gives it back. Under another id it would stay "in progress" until
      // it lapsed, and then be free for a retry to be charged again.
      return { actionId, open: true };
    }
    switch (res.state) {
      case IdempotencyKeyState.CLAIMED:
        this.o.events?.claim?.("claimed");
        return { actionId, open: true };
      case IdempotencyKeyState.ANSWERED:
        this.o.events?.claim?.("answered");
        this.remember(sessionId, key, res.method, res.requestHash, res.response);
        return this.replay(sessionId, key, method, hash);
      case IdempotencyKeyState.IN_PROGRESS:
        this.o.events?.claim?.("in_progress");
        // Not an answer: ABORTED, or INVALID_ARGUMENT for another request, as the store says it.
        return replayFirstAnswer({ method: res.method, hash: res.requestHash }, method, hash, key, (b) => b);
      default:
        // The store does not know the session: the cache says so next.
        this.o.events?.claim?.("unclaimed");
        return undefined;
    }
  }

  private remember(sessionId: string, key: string, method: string, hash: Uint8Array, response: Uint8Array): void {
    if (key !== "") this.answers.set(`${sessionId}|${key}`, { method, hash, response });
  }
}

function leaseState(l: Lease, nowMs: number): LeaseState {
  const base = new Map<string, Totals>();
  const rv = l.valueMicros ?? 0n;
  const ra = l.actions ?? 0n;
  for (const u of l.usage) {
    const window = WINDOW_KIND[u.window];
    base.set(`${u.scopeKey}|${window}|${u.windowStartUnixMs}`, { value: u.valueMicros - rv, actions: u.actions - ra });
  }
  const expireMs = timestampMs(l.expireTime!);
  return {
    id: l.leaseId,
    expireMs: expireMs - Math.min(MAX_LEASE_SKEW_MS, Math.max(0, expireMs - nowMs) / 10),
    grantedValue: l.valueMicros,
    grantedActions: l.actions,
    valueLeft: l.valueMicros,
    actionsLeft: l.actions,
    usedValue: 0n,
    usedActions: 0n,
    base,
    lastUseMs: nowMs,
  };
}

function isUnreachable(e: ConnectError): boolean {
  return e.code === Code.Unavailable || e.code === Code.DeadlineExceeded || e.code === Code.Canceled;
}

/** System errors of setting up a connection (by the call that failed): before any byte of a request is sent. */
const CONNECT_ERRORS = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"]);
const CONNECT_SYSCALLS = new Set(["connect", "getaddrinfo"]);

/**
 * Whether a failed call surely never reached the server: connect-node
 * fails a call whose connection could not be made with UNAVAILABLE and the
 * socket's error as its cause (a refused one: message "connect
 * ECONNREFUSED 127.0.0.1:1", cause.code "ECONNREFUSED", cause.syscall
 * "connect"; an unknown host: cause.code "ENOTFOUND", syscall
 * "getaddrinfo"). Anything else (a reset, a deadline, a status from a
 * proxy or the server) may have come after the store committed.
 */
function neverSent(e: ConnectError): boolean {
  if (e.code !== Code.Unavailable) return false;
  let cause: unknown = e.cause;
  for (let depth = 0; depth < 4 && cause instanceof Error; depth++, cause = cause.cause) {
    const { code, syscall } = cause as NodeJS.ErrnoException;
    if (code !== undefined && CONNECT_ERRORS.has(code) && syscall !== undefined && CONNECT_SYSCALLS.has(syscall)) return true;
  }
  return false;
}

function bigMax(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

function encodeResponse(method: Method, r: AuthorizeResponse | CheckResponse): Uint8Array {
  return method === "authorize" ? toBinary(AuthorizeResponseSchema, r as AuthorizeResponse) : toBinary(CheckResponseSchema, r as CheckResponse);
}

function decodeResponse(method: Method, b: Uint8Array): AuthorizeResponse | CheckResponse {
  return method === "authorize" ? fromBinary(AuthorizeResponseSchema, b) : fromBinary(CheckResponseSchema, b);
}
