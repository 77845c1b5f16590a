import { ApprovalTimeoutOutcome, type SessionPolicy, type WindowLimit } from "../gen/warden/v1/policy_pb.js";
import type { IsoWeekday } from "./windows.js";

/** One window's limits; `undefined` means unlimited. */
export interface LimitPair {
  readonly maxValue: bigint | undefined;
  readonly maxActions: bigint | undefined;
}

/** The windows a policy can limit, in the order budgets are reported. */
export const WINDOW_KINDS = ["day", "week", "month", "lifetime"] as const;
/** One of {@link WINDOW_KINDS}. */
export type WindowKind = (typeof WINDOW_KINDS)[number];

/**
 * A `SessionPolicy` turned into the shape the engine reads on every
 * decision: sets instead of lists, bigints with `undefined` for "no limit",
 * defaults filled in. Compile once per policy revision, not per decision.
 */
export interface CompiledPolicy {
  readonly currency: string;
  readonly limits: Readonly<Record<WindowKind, LimitPair>>;
  readonly maxPerTransaction: bigint | undefined;
  readonly approvalAbove: bigint | undefined;
  /** `null` when every merchant is allowed. */
  readonly allowedMerchants: ReadonlySet<string> | null;
  readonly blockedMerchants: ReadonlySet<string>;
  /** `null` when every action type is allowed. */
  readonly allowedActionTypes: ReadonlySet<string> | null;
  readonly timeZone: string;
  readonly weekStart: IsoWeekday;
  /**
   * What its day, week and month windows depend on, as one string: "the
   * same calendar" is a comparison of these (the store keeps it with the
   * windows' counters, usage-counters.ts).
   */
  readonly calendar: string;
  readonly holdTtlMs: number;
  /** How long an approval this policy asks for waits for a person. */
  readonly approvalTtlMs: number;
  /** Whether an approval nobody decided in time is approved (else denied). */
  readonly approveOnTimeout: boolean;
  /** True when any window has a limit, so usage must be tracked and locked. */
  readonly hasWindowLimits: boolean;
  /** Denials in a row that pause a session; 0: never (see circuit-breaker.ts). */
  readonly pauseAfterDenials: number;
  /** Failed requests that end a session as FAILED; 0: never. */
  readonly failAfterErrors: number;
}

/** Hold lifetime when the policy does not set one. */
export const DEFAULT_HOLD_TTL_MS = 15 * 60 * 1000;

/** How long an approval waits when the policy does not say. */
export const DEFAULT_APPROVAL_TTL_MS = 15 * 60 * 1000;

function durationMsOr(d: { seconds: bigint; nanos: number } | undefined, fallback: number): number {
  return d === undefined ? fallback : Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
}

function pair(limit: WindowLimit | undefined): LimitPair {
  return { maxValue: limit?.maxValueMicros, maxActions: limit?.maxActions };
}

/** Compiles a validated policy. */
export function compilePolicy(policy: SessionPolicy): CompiledPolicy {
  const limits = {
    day: pair(policy.daily),
    week: pair(policy.weekly),
    month: pair(policy.monthly),
    lifetime: pair(policy.lifetime),
  };
  const weekStart = (policy.weekStart === 0 ? 1 : policy.weekStart) as IsoWeekday;
  return {
    currency: policy.currencyCode,
    limits,
    maxPerTransaction: policy.maxPerTransactionMicros,
    approvalAbove: policy.requireApprovalAboveMicros,
    allowedMerchants: policy.allowedMerchants.length > 0 ? new Set(policy.allowedMerchants) : null,
    blockedMerchants: new Set(policy.blockedMerchants),
    allowedActionTypes: policy.allowedActionTypes.length > 0 ? new Set(policy.allowedActionTypes) : null,
    timeZone: policy.timeZone,
    weekStart,
    calendar: `${policy.timeZone || "UTC"}|${weekStart}`,
    holdTtlMs: durationMsOr(policy.holdTtl, DEFAULT_HOLD_TTL_MS),
    approvalTtlMs: durationMsOr(policy.approvalTtl, DEFAULT_APPROVAL_TTL_MS),
    approveOnTimeout: policy.approvalTimeoutOutcome === ApprovalTimeoutOutcome.APPROVE,
    hasWindowLimits: Object.values(limits).some((l) => l.maxValue !== undefined || l.maxActions !== undefined),
    pauseAfterDenials: policy.circuitBreaker?.pauseAfterDenialsInARow ?? 0,
    failAfterErrors: policy.circuitBreaker?.failAfterErrors ?? 0,
  };
}

/** The policy of an agent that has none: no limits, UTC calendar. */
export const EMPTY_POLICY: CompiledPolicy = {
  currency: "",
  limits: {
    day: { maxValue: undefined, maxActions: undefined },
    week: { maxValue: undefined, maxActions: undefined },
    month: { maxValue: undefined, maxActions: undefined },
    lifetime: { maxValue: undefined, maxActions: undefined },
  },
  maxPerTransaction: undefined,
  approvalAbove: undefined,
  allowedMerchants: null,
  blockedMerchants: new Set(),
  allowedActionTypes: null,
  timeZone: "",
  weekStart: 1,
  calendar: "UTC|1",
  holdTtlMs: DEFAULT_HOLD_TTL_MS,
  approvalTtlMs: DEFAULT_APPROVAL_TTL_MS,
  approveOnTimeout: false,
  hasWindowLimits: false,
  pauseAfterDenials: 0,
  failAfterErrors: 0,
};
