/**
 * Builders shared by the core tests. Expectations in the tests are derived
 * from calendar facts and UTC offsets written out by hand, never from the
 * code under test; these helpers only assemble inputs.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type CompiledPolicy, compilePolicy, EMPTY_POLICY, type WindowKind } from "../../src/core/compiled-policy.js";
import {
  type ActionInput,
  counterKey,
  type Evaluation,
  evaluate,
  LIFETIME_START_MS,
  type ScopeState,
  type Totals,
} from "../../src/core/evaluate.js";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Scope } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionPolicySchema } from "../../src/gen/warden/v1/policy_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";

export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

/** Micros of whole major units: units(12) = 12_000_000n. */
export const units = (n: number | bigint): bigint => BigInt(n) * 1_000_000n;

/**
 * An instant given as a local wall-clock time and the UTC offset in force
 * there, in hours (fractions allowed: 5.5, 10.5). Month is 1-based.
 * `local(2026, 3, 8, 0, 0, -5)` is 2026-03-08T00:00-05:00 = 05:00Z.
 */
export function local(year: number, month: number, day: number, hour: number, minute: number, offsetHours: number): number {
  return Date.UTC(year, month - 1, day, hour, minute) - offsetHours * HOUR;
}

/** A UTC instant, month 1-based. */
export function utc(year: number, month: number, day: number, hour = 0, minute = 0, second = 0, ms = 0): number {
  return Date.UTC(year, month - 1, day, hour, minute, second, ms);
}

/**
 * The fixed "now" of the evaluate tests: Wednesday 2026-07-15 12:00Z.
 * In UTC with weeks from Monday: day 15 Jul, week Mon 13 Jul, month 1 Jul.
 */
export const NOW = utc(2026, 7, 15, 12);
export const UTC_STARTS: Readonly<Record<WindowKind, number>> = {
  day: utc(2026, 7, 15),
  week: utc(2026, 7, 13),
  month: utc(2026, 7, 1),
  lifetime: LIFETIME_START_MS,
};
/** The windows just before those of {@link UTC_STARTS}. */
export const UTC_PREVIOUS_STARTS: Readonly<Record<Exclude<WindowKind, "lifetime">, number>> = {
  day: utc(2026, 7, 14),
  week: utc(2026, 7, 6),
  month: utc(2026, 6, 1),
};

/** A compiled USD policy. */
export function policy(init: MessageInitShape<typeof SessionPolicySchema> = {}): CompiledPolicy {
  return compilePolicy(create(SessionPolicySchema, { currencyCode: "USD", ...init }));
}

/** The session being acted in: ACTIVE, expiring in an hour, active a minute ago. */
export function session(init: Partial<ScopeState> = {}): ScopeState {
  return {
    scope: Scope.SESSION,
    id: "s1",
    key: "s:s1",
    policy: policy(),
    status: SessionStatus.ACTIVE,
    expireMs: NOW + HOUR,
    lastActivityMs: NOW - MINUTE,
    ...init,
  };
}

/** A parent session of a fork. */
export function parent(id: string, init: Partial<ScopeState> = {}): ScopeState {
  return {
    scope: Scope.PARENT_SESSION,
    id,
    key: `s:${id}`,
    policy: policy(),
    status: SessionStatus.ACTIVE,
    expireMs: NOW + DAY,
    lastActivityMs: NOW - MINUTE,
    ...init,
  };
}

/** The agent: no status, no expiry; no policy unless given. */
export function agent(init: Partial<ScopeState> = {}): ScopeState {
  return { scope: Scope.AGENT, id: "a1", key: "a:a1", policy: EMPTY_POLICY, ...init };
}

/** Usage counters as a Map, addressed like the store addresses them. */
export class UsageBook {
  readonly map = new Map<string, Totals>();

  /** Sets committed-plus-held usage of one counter. */
  set(scope: ScopeState, window: WindowKind, startMs: number, value: bigint, actions: bigint): this {
    this.map.set(counterKey(scope.key, window, startMs), { value, actions });
    return this;
  }

  /** Sets usage of the current UTC window (see {@link UTC_STARTS}). */
  setNow(scope: ScopeState, window: WindowKind, value: bigint, actions: bigint): this {
    return this.set(scope, window, UTC_STARTS[window], value, actions);
  }

  readonly lookup = (key: string): Totals | undefined => this.map.get(key);
}

/** A payment of `amountMicros` to `merchant`. */
export function payment(amountMicros: bigint, merchant = "acme"): ActionInput {
  return { type: "payment", amountMicros, merchant };
}

/** An action that carries no money and names no merchant. */
export function toolCall(): ActionInput {
  return { type: "tool_call", amountMicros: 0n, merchant: "" };
}

/** Runs the engine; defaults: now {@link NOW}, no usage, a fresh span cache. */
export function run(opts: {
  scopes: readonly ScopeState[];
  action: ActionInput;
  nowMs?: number;
  usage?: UsageBook;
  spans?: CalendarSpanCache;
}): Evaluation {
  return evaluate({
    scopes: opts.scopes,
    action: opts.action,
    nowMs: opts.nowMs ?? NOW,
    usage: (opts.usage ?? new UsageBook()).lookup,
    spans: opts.spans ?? new CalendarSpanCache(),
  });
}
