import { Outcome, Reason, Scope, Window } from "../gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import { type CompiledPolicy, type LimitPair, WINDOW_KINDS, type WindowKind } from "./compiled-policy.js";
import { formatMoney, INT64_MAX } from "./money.js";
import type { CalendarSpanCache, Span } from "./windows.js";

/** Committed plus held usage of one window. */
export interface Totals {
  readonly value: bigint;
  readonly actions: bigint;
}

/** Start of the lifetime "window": one fixed key for counters. */
export const LIFETIME_START_MS = 0;

/** Key of one stored counter: scope, window kind and window start. */
export function counterKey(scopeKey: string, window: WindowKind, startMs: number): string {
  return `${scopeKey}|${window}|${startMs}`;
}

/**
 * One scope an action is checked against: the session itself, each parent
 * of a fork, and the agent. `key` names its counters ("s:<id>" / "a:<id>").
 */
export interface ScopeState {
  readonly scope: Scope;
  readonly id: string;
  readonly key: string;
  /** An agent without a policy has an empty one: no limits, UTC windows. */
  readonly policy: CompiledPolicy;
  /** Sessions only. */
  readonly status?: SessionStatus;
  readonly expireMs?: number;
  /** Sessions only; `undefined` means no idle timeout. */
  readonly idleTimeoutMs?: number;
  readonly lastActivityMs?: number;
  /**
   * Sessions only: until when (epoch ms) its agent may be waiting on a
   * person, the latest deadline of an approval the session asked for; 0 or
   * unset if none. The idle clock runs from this or the last activity,
   * whichever is later.
   */
  readonly awaitingApprovalUntilMs?: number;
}

/** What the agent wants to do, as the engine sees it. */
export interface ActionInput {
  readonly type: string;
  /** Zero for actions that carry no money. */
  readonly amountMicros: bigint;
  readonly merchant: string;
}

/** A reason tied to where it came from. */
export interface ViolationView {
  readonly reason: Reason;
  readonly scope: Scope;
  readonly scopeId: string;
  readonly window: Window;
}

/** One window of one scope after the decision. */
export interface BudgetView {
  readonly scope: Scope;
  readonly scopeId: string;
  readonly window: Window;
  /** Absent for lifetime. */
  readonly span: Span | undefined;
  readonly valueUsed: bigint;
  readonly actionsUsed: bigint;
  readonly valueLimit: bigint | undefined;
  readonly actionLimit: bigint | undefined;
}

/**
 * A counter the action charges when allowed: every window of every scope,
 * limited or not, so usage is known when a limit is set later.
 */
export interface Charge {
  readonly key: string;
  readonly scopeKey: string;
  readonly window: WindowKind;
  readonly startMs: number;
}

/** The engine's answer. */
export interface Evaluation {
  readonly outcome: Outcome;
  /** Deduplicated, ascending. */
  readonly reasons: Reason[];
  readonly violations: ViolationView[];
  readonly message: string;
  /**
   * Counters to charge: when the outcome is ALLOW, and when it is
   * NEEDS_APPROVAL (the approval holds the amount while it waits); empty
   * on DENY.
   */
  readonly charges: Charge[];
  /** Set when the outcome is NEEDS_APPROVAL: how the approval waits. */
  readonly approval: ApprovalTerms | undefined;
  readonly budgets: BudgetView[];
  /** Set when the session is found past its expiry or idle timeout now. */
  readonly expire: "time" | "idle" | undefined;
}

/**
 * How an approval waits, from the policies of every scope that asked for
 * it: the shortest TTL, and approval on timeout only if all of them say
 * so (a person who asked to decide is not overruled by another's policy).
 */
export interface ApprovalTerms {
  readonly ttlMs: number;
  readonly approveOnTimeout: boolean;
}

/** Inputs of one evaluation. */
export interface EvaluateInput {
  /** The session first, then its parents nearest first, then the agent. */
  readonly scopes: readonly ScopeState[];
  readonly action: ActionInput;
  readonly nowMs: number;
  /** Reads committed plus held usage of a counter; missing means zero. */
  readonly usage: (key: string) => Totals | undefined;
  readonly spans: CalendarSpanCache;
}

/** The API's Window of each window kind. */
export const WINDOW_ENUM: Readonly<Record<WindowKind, Window>> = {
  day: Window.DAY,
  week: Window.WEEK,
  month: Window.MONTH,
  lifetime: Window.LIFETIME,
};

/** The window kind of an API Window (undefined for UNSPECIFIED). */
export const WINDOW_KIND: Readonly<Partial<Record<Window, WindowKind>>> = Object.fromEntries(
  Object.entries(WINDOW_ENUM).map(([kind, w]) => [w, kind]),
);

const VALUE_REASON: Record<WindowKind, Reason> = {
  day: Reason.LIMIT_DAILY_VALUE,
  week: Reason.LIMIT_WEEKLY_VALUE,
  month: Reason.LIMIT_MONTHLY_VALUE,
  lifetime: Reason.LIMIT_LIFETIME_VALUE,
};

const ACTION_REASON: Record<WindowKind, Reason> = {
  day: Reason.LIMIT_DAILY_ACTIONS,
  week: Reason.LIMIT_WEEKLY_ACTIONS,
  month: Reason.LIMIT_MONTHLY_ACTIONS,
  lifetime: Reason.LIMIT_LIFETIME_ACTIONS,
};

/** The reason a session in a non-active status gives. */
export const STATUS_REASON: Partial<Record<SessionStatus, Reason>> = {
  [SessionStatus.PAUSED]: Reason.SESSION_PAUSED,
  [SessionStatus.COMPLETED]: Reason.SESSION_COMPLETED,
  [SessionStatus.EXPIRED]: Reason.SESSION_EXPIRED,
  [SessionStatus.REVOKED]: Reason.SESSION_REVOKED,
  [SessionStatus.EXHAUSTED]: Reason.SESSION_EXHAUSTED,
  [SessionStatus.FAILED]: Reason.SESSION_FAILED,
};

/** Whether a status is final. */
export function isTerminal(status: SessionStatus): boolean {
  return status !== SessionStatus.ACTIVE && status !== SessionStatus.PAUSED;
}

/** The span of a window kind in a policy's calendar; undefined for lifetime. */
export function spanOf(
  policy: CompiledPolicy,
  window: WindowKind,
  nowMs: number,
  spans: CalendarSpanCache,
): Span | undefined {
  if (window === "lifetime") return undefined;
  return spans.get(policy.timeZone, policy.weekStart, nowMs)[window];
}

/** What {@link evaluate} tells {@link lapse} of a scope's parents: only whether one is paused counts. */
const UNDER_PAUSED = [{ status: SessionStatus.PAUSED }] as const;
const NO_PARENTS = [] as const;

/**
 * Whether a session is past its expiry or idle timeout at `nowMs`, though
 * its stored status may still say ACTIVE or PAUSED. A paused session does
 * not idle: its agent was told to stop, and a pause must stay reversible
 * however long the person takes (resuming restarts the idle clock). Nor
 * does one whose agent waits on a person's approval, until the approval's
 * deadline (its idle clock then starts over). Nor does a fork any of whose
 * `ancestors` (the session's parents, any order; other scopes are
 * ignored) is paused: its calls are all denied
 * PARENT_INACTIVE, so its agent stops too, and resuming the parent
 * restarts its forks' idle clocks. A caller that knows the ancestors must
 * pass them.
 */
export function lapse(
  scope: ScopeState,
  nowMs: number,
  ancestors: readonly { readonly status?: SessionStatus }[] = NO_PARENTS,
): "time" | "idle" | undefined {
  if (scope.expireMs !== undefined && nowMs >= scope.expireMs) return "time";
  if (
    scope.status !== SessionStatus.PAUSED &&
    scope.idleTimeoutMs !== undefined &&
    scope.lastActivityMs !== undefined &&
    nowMs - Math.max(scope.lastActivityMs, scope.awaitingApprovalUntilMs ?? 0) >= scope.idleTimeoutMs &&
    !ancestors.some((a) => a.status === SessionStatus.PAUSED)
  ) {
    return "idle";
  }
  return undefined;
}

/** The status reason of a session ended by {@link lapse}. */
export function lapseReason(why: "time" | "idle"): string {
  return why === "time" ? "expired" : "idle timeout";
}

/** The status reason of a session whose lifetime limit is used up (see {@link isExhausted}). */
export const EXHAUSTED_REASON = "lifetime limit used up";

/**
 * Decides one action. Pure: the same inputs give the same answer, with no
 * I/O and no clock of its own. Every limit of every scope in every window is
 * checked, and every reason that applies is reported, so an agent learns all
 * it must change, not only the first obstacle. The caller charges
 * `charges` (all or nothing) when the outcome is ALLOW, and holds them
 * for the approval when it is NEEDS_APPROVAL.
 */
export function evaluate(input: EvaluateInput): Evaluation {
  const { scopes, action, nowMs, usage, spans } = input;
  const reasons = new Set<Reason>();
  const violations: ViolationView[] = [];
  const notes: string[] = [];
  const charges: Charge[] = [];
  let approval: { ttlMs: number; approveOnTimeout: boolean } | undefined;
  let expire: "time" | "idle" | undefined;

  const violate = (reason: Reason, scope: ScopeState, window: Window, note: string) => {
    reasons.add(reason);
    violations.push({ reason, scope: scope.scope, scopeId: scope.id, window });
    notes.push(note);
  };

  // Lifecycle: the session's own state, then its parents'. Scopes after a
  // session are its parents (and the agent, which has no status), so one
  // is under a paused parent when a paused scope comes after it: lapse()
  // is told so without a slice of the rest per scope, on the hot path.
  const lastPaused = scopes.findLastIndex((sc) => sc.status === SessionStatus.PAUSED);
  for (const [i, scope] of scopes.entries()) {
    if (scope.status === undefined) continue;
    const isSelf = i === 0;
    const statusReason = STATUS_REASON[scope.status];
    const lapsed =
      scope.status === SessionStatus.ACTIVE || scope.status === SessionStatus.PAUSED
        ? lapse(scope, nowMs, i < lastPaused ? UNDER_PAUSED : NO_PARENTS)
        : undefined;
    if (isSelf && lapsed !== undefined) {
      expire = lapsed;
      const reason = lapsed === "time" ? Reason.SESSION_EXPIRED : Reason.SESSION_IDLE_TIMEOUT;
      violate(reason, scope, Window.UNSPECIFIED, lapsed === "time" ? "the session has expired" : "the session was idle too long");
    } else if (isSelf && statusReason !== undefined) {
      violate(statusReason, scope, Window.UNSPECIFIED, `the session is ${SessionStatus[scope.status]}`);
    } else if (!isSelf && (statusReason !== undefined || lapsed !== undefined)) {
      violate(Reason.PARENT_INACTIVE, scope, Window.UNSPECIFIED, `parent session ${scope.id} is not active`);
    }
  }

  // The budgets the answer shows, with the usage read for the checks: not
  // looked up a second time.
  const shown: { scope: ScopeState; window: WindowKind; span: Span | undefined; used: Totals; limit: LimitPair }[] = [];
  for (let i = 0; i < scopes.length; i++) {
    const scope = scopes[i]!;
    const p = scope.policy;
    const who = scopeName(scope);
    if (p.allowedActionTypes !== null && !p.allowedActionTypes.has(action.type)) {
      violate(Reason.ACTION_TYPE_NOT_ALLOWED, scope, Window.UNSPECIFIED, `action type "${action.type}" is not allowed by ${who}`);
    }
    if (action.merchant !== "" || p.allowedMerchants !== null) {
      if (p.blockedMerchants.has(action.merchant)) {
        violate(Reason.MERCHANT_BLOCKED, scope, Window.UNSPECIFIED, `merchant "${action.merchant}" is blocked by ${who}`);
      } else if (p.allowedMerchants !== null && !p.allowedMerchants.has(action.merchant)) {
        violate(Reason.MERCHANT_NOT_ALLOWED, scope, Window.UNSPECIFIED, `merchant "${action.merchant}" is not allowed by ${who}`);
      }
    }
    if (p.maxPerTransaction !== undefined && action.amountMicros > p.maxPerTransaction) {
      violate(
        Reason.LIMIT_PER_TRANSACTION,
        scope,
        Window.UNSPECIFIED,
        `${formatMoney(action.amountMicros, p.currency)} is above the per-transaction limit of ${formatMoney(p.maxPerTransaction, p.currency)} of ${who}`,
      );
    }
    if (p.approvalAbove !== undefined && action.amountMicros > p.approvalAbove) {
      approval = {
        ttlMs: Math.min(approval?.ttlMs ?? Infinity, p.approvalTtlMs),
        approveOnTimeout: (approval?.approveOnTimeout ?? true) && p.approveOnTimeout,
      };
    }

    for (const window of WINDOW_KINDS) {
      const limit = p.limits[window];
      const span = spanOf(p, window, nowMs, spans);
      const startMs = span?.startMs ?? LIFETIME_START_MS;
      const key = counterKey(scope.key, window, startMs);
      const used = usage(key) ?? ZERO;
      if (isShown(i, limit)) shown.push({ scope, window, span, used, limit });
      // Fix: an action without money spends no value, so a value limit never
      // denies it, even when usage is above a limit lowered after the spend
      // (UpdateAgentPolicy, ImportSession); it counts against action limits only.
      if (limit.maxValue !== undefined && action.amountMicros > 0n && used.value + action.amountMicros > limit.maxValue) {
        violate(
          VALUE_REASON[window],
          scope,
          WINDOW_ENUM[window],
          `${window} value limit of ${who} would be exceeded (limit ${formatMoney(limit.maxValue, p.currency)}, used ${formatMoney(used.value, p.currency)}, asked ${formatMoney(action.amountMicros, p.currency)})`,
        );
      }
      // Past int64 no counter, column or reply could carry a window's
      // total: a limit (itself an int64) stops it short; without one, this
      // does. Every window, not only lifetime: an imported window may hold
      // more than the lifetime does.
      if (limit.maxValue === undefined && used.value + action.amountMicros > INT64_MAX) {
        violate(Reason.AMOUNT_OUT_OF_RANGE, scope, WINDOW_ENUM[window], `the ${window} total of ${who} would pass the largest amount that can be counted`);
      }
      if (limit.maxActions !== undefined && used.actions + 1n > limit.maxActions) {
        violate(ACTION_REASON[window], scope, WINDOW_ENUM[window], `${window} action limit of ${who} would be exceeded (limit ${limit.maxActions}, used ${used.actions})`);
      } else if (limit.maxActions === undefined && used.actions + 1n > INT64_MAX) {
        violate(Reason.AMOUNT_OUT_OF_RANGE, scope, WINDOW_ENUM[window], `the ${window} action count of ${who} would pass the largest that can be counted`);
      }
      charges.push({ key, scopeKey: scope.key, window, startMs });
    }
  }

  let outcome: Outcome;
  if (reasons.size > 0) {
    outcome = Outcome.DENY;
    if (approval !== undefined) reasons.add(Reason.APPROVAL_REQUIRED);
  } else if (approval !== undefined) {
    outcome = Outcome.NEEDS_APPROVAL;
    reasons.add(Reason.APPROVAL_REQUIRED);
    notes.push(`${formatMoney(action.amountMicros, scopes[0]?.policy.currency ?? "")} needs a person's approval`);
  } else {
    outcome = Outcome.ALLOW;
  }
  const charged = outcome === Outcome.DENY ? [] : charges;
  // Every window of every scope is charged, or none: what an action that
  // is not denied would spend shows in every budget.
  const addValue = outcome === Outcome.DENY ? 0n : action.amountMicros;
  const addActions = outcome === Outcome.DENY ? 0n : 1n;
  return {
    outcome,
    reasons: [...reasons].sort((a, b) => a - b),
    violations,
    message: outcome === Outcome.ALLOW ? "allowed" : `${Outcome[outcome].toLowerCase()}: ${notes.join("; ")}`,
    charges: charged,
    budgets: shown.map((b) => budgetView(b.scope, b.window, b.span, { value: b.used.value + addValue, actions: b.used.actions + addActions }, b.limit)),
    expire,
    approval: outcome === Outcome.NEEDS_APPROVAL ? approval : undefined,
  };
}

const ZERO: Totals = { value: 0n, actions: 0n };

function scopeName(scope: ScopeState): string {
  switch (scope.scope) {
    case Scope.AGENT:
      return `agent ${scope.id}`;
    case Scope.PARENT_SESSION:
      return `parent session ${scope.id}`;
    default:
      return "the session";
  }
}

/**
 * Budgets of every window of the first scope (the session), and of every
 * limited window of the others: what a caller shows as "remaining".
 */
export function budgetsOf(
  scopes: readonly ScopeState[],
  nowMs: number,
  spans: CalendarSpanCache,
  usage: (key: string) => Totals,
): BudgetView[] {
  const out: BudgetView[] = [];
  for (const [i, scope] of scopes.entries()) {
    const p = scope.policy;
    for (const window of WINDOW_KINDS) {
      const limit = p.limits[window];
      if (!isShown(i, limit)) continue;
      const span = spanOf(p, window, nowMs, spans);
      out.push(budgetView(scope, window, span, usage(counterKey(scope.key, window, span?.startMs ?? LIFETIME_START_MS)), limit));
    }
  }
  return out;
}

/** Whether a window is among the budgets shown: every one of the first scope, the limited ones of the rest. */
function isShown(scopeIndex: number, limit: LimitPair): boolean {
  return scopeIndex === 0 || limit.maxValue !== undefined || limit.maxActions !== undefined;
}

function budgetView(scope: ScopeState, window: WindowKind, span: Span | undefined, used: Totals, limit: LimitPair): BudgetView {
  return {
    scope: scope.scope,
    scopeId: scope.id,
    window: WINDOW_ENUM[window],
    span,
    valueUsed: used.value,
    actionsUsed: used.actions,
    valueLimit: limit.maxValue,
    actionLimit: limit.maxActions,
  };
}

/**
 * Whether a session's lifetime limit is used up by what is committed: the
 * moment it becomes EXHAUSTED. Held amounts do not count, since a hold may
 * still be voided.
 */
export function isExhausted(policy: CompiledPolicy, committed: Totals): boolean {
  const l = policy.limits.lifetime;
  return (
    (l.maxValue !== undefined && committed.value >= l.maxValue && l.maxValue > 0n) ||
    (l.maxActions !== undefined && committed.actions >= l.maxActions)
  );
}
