import { create } from "@bufbuild/protobuf";
import {
  type ApprovalTimeoutOutcome,
  ApprovalTimeoutOutcomeSchema,
  CircuitBreakerSchema,
  SessionPolicySchema,
  WindowLimitSchema,
  type SessionPolicy,
  type WindowLimit,
} from "../gen/warden/v1/policy_pb.js";
import { parseCount, parseCurrency, parseDuration, parseEnumWord, parseMoneyFlag, parseTimeZone, parseWeekday } from "./flags.js";
import { CliError } from "./cli-error.js";
import type { FlagSpec, ParsedFlags } from "./parse-command-line.js";

/**
 * POLICY_FLAGS are the limit flags shared by `sessions create`,
 * `sessions fork` and `agents set-policy`, so the three spell every limit
 * the same way. Money is in decimal major units of the policy currency.
 */
export const POLICY_FLAGS: readonly FlagSpec[] = [
  { name: "currency", type: "string", value: "CODE", description: "ISO 4217 currency of all amounts" },
  { name: "max-per-transaction", type: "string", value: "AMOUNT", description: "largest amount of one action" },
  { name: "max-per-day", type: "string", value: "AMOUNT", description: "value limit per calendar day" },
  { name: "max-per-week", type: "string", value: "AMOUNT", description: "value limit per calendar week" },
  { name: "max-per-month", type: "string", value: "AMOUNT", description: "value limit per calendar month" },
  { name: "max-total", type: "string", value: "AMOUNT", description: "value limit over the whole lifetime" },
  { name: "max-actions", type: "string", value: "N", description: "action limit over the whole lifetime" },
  { name: "max-actions-per-day", type: "string", value: "N", description: "action limit per calendar day" },
  { name: "max-actions-per-week", type: "string", value: "N", description: "action limit per calendar week" },
  { name: "max-actions-per-month", type: "string", value: "N", description: "action limit per calendar month" },
  { name: "approval-above", type: "string", value: "AMOUNT", description: "actions above this amount need a person's approval" },
  { name: "approval-ttl", type: "string", value: "DURATION", description: "how long an approval waits for a person (default 15m)" },
  { name: "approval-timeout", type: "string", value: "deny|approve", description: "what an approval nobody decided in time becomes (default deny)" },
  { name: "allow-merchant", type: "string", multiple: true, value: "M", description: "only these merchants may be paid (repeatable)" },
  { name: "block-merchant", type: "string", multiple: true, value: "M", description: "these merchants may never be paid (repeatable)" },
  { name: "allow-type", type: "string", multiple: true, value: "T", description: "only these action types are allowed (repeatable)" },
  { name: "time-zone", type: "string", value: "ZONE", description: "IANA zone of the calendar windows (default UTC)" },
  { name: "week-start", type: "string", value: "DAY", description: "first day of the week window (default monday)" },
  { name: "hold-ttl", type: "string", value: "DURATION", description: "how long an uncaptured hold lives (default 15m)" },
  { name: "pause-after-denials", type: "string", value: "N", description: "pause the session after N denials in a row (circuit breaker)" },
  { name: "fail-after-errors", type: "string", value: "N", description: "end the session as failed after N failed requests (circuit breaker)" },
];

function windowLimit(flags: ParsedFlags, valueFlag: string, actionsFlag: string): WindowLimit | undefined {
  const value = flags.string(valueFlag);
  const actions = flags.string(actionsFlag);
  // An absent window stays unset, meaning "no limit"; an explicit 0 is kept,
  // meaning "nothing may be spent" — the proto distinguishes the two.
  if (value === undefined && actions === undefined) return undefined;
  return create(WindowLimitSchema, {
    maxValueMicros: value === undefined ? undefined : parseMoneyFlag(`--${valueFlag}`, value),
    maxActions: actions === undefined ? undefined : parseCount(`--${actionsFlag}`, actions),
  });
}

function nonEmpty(flag: string, items: string[]): string[] {
  for (const item of items) {
    if (item.trim() === "") throw new CliError(`--${flag}: value must not be empty`);
  }
  return items;
}

/** A breaker threshold: a whole number up to the proto's bound of 1,000,000; 0 is off. */
function parseThreshold(flag: string, text: string): number {
  const n = parseCount(flag, text);
  if (n > 1_000_000n) throw new CliError(`${flag}: must be at most 1000000`);
  return Number(n);
}

/** A duration flag between 1s and 7d (the proto's bounds for TTLs). */
function parseTtl(flag: string, text: string) {
  const d = parseDuration(flag, text);
  if (d.seconds < 1n) throw new CliError(`${flag}: must be at least 1s`);
  if (d.seconds > 604_800n || (d.seconds === 604_800n && d.nanos > 0)) throw new CliError(`${flag}: must be at most 7d`);
  return d;
}

/**
 * Builds a SessionPolicy from the {@link POLICY_FLAGS} of a command line.
 * Every value is checked here, before any request is sent.
 *
 * The currency is `--currency` when given, else `defaultCurrency`; when both
 * are absent it is left empty for the caller to fill in from the server
 * (a fork inherits its parent's currency).
 */
export function buildPolicy(flags: ParsedFlags, defaultCurrency?: string): SessionPolicy {
  const currency = flags.string("currency");
  const perTx = flags.string("max-per-transaction");
  const approval = flags.string("approval-above");
  const tz = flags.string("time-zone");
  const weekStart = flags.string("week-start");
  const holdTtl = flags.string("hold-ttl");
  const approvalTtl = flags.string("approval-ttl");
  const approvalTimeout = flags.string("approval-timeout");
  const pauseAfter = flags.string("pause-after-denials");
  const failAfter = flags.string("fail-after-errors");
  return create(SessionPolicySchema, {
    currencyCode: currency !== undefined ? parseCurrency("--currency", currency) : (defaultCurrency ?? ""),
    lifetime: windowLimit(flags, "max-total", "max-actions"),
    daily: windowLimit(flags, "max-per-day", "max-actions-per-day"),
    weekly: windowLimit(flags, "max-per-week", "max-actions-per-week"),
    monthly: windowLimit(flags, "max-per-month", "max-actions-per-month"),
    maxPerTransactionMicros: perTx === undefined ? undefined : parseMoneyFlag("--max-per-transaction", perTx),
    requireApprovalAboveMicros: approval === undefined ? undefined : parseMoneyFlag("--approval-above", approval),
    allowedMerchants: nonEmpty("allow-merchant", flags.strings("allow-merchant")),
    blockedMerchants: nonEmpty("block-merchant", flags.strings("block-merchant")),
    allowedActionTypes: nonEmpty("allow-type", flags.strings("allow-type")),
    timeZone: tz === undefined ? "" : parseTimeZone("--time-zone", tz),
    weekStart: weekStart === undefined ? undefined : parseWeekday("--week-start", weekStart),
    holdTtl: holdTtl === undefined ? undefined : parseTtl("--hold-ttl", holdTtl),
    approvalTtl: approvalTtl === undefined ? undefined : parseTtl("--approval-ttl", approvalTtl),
    approvalTimeoutOutcome:
      approvalTimeout === undefined ? undefined : (parseEnumWord("--approval-timeout", ApprovalTimeoutOutcomeSchema, approvalTimeout) as ApprovalTimeoutOutcome),
    circuitBreaker:
      pauseAfter === undefined && failAfter === undefined
        ? undefined
        : create(CircuitBreakerSchema, {
            pauseAfterDenialsInARow: pauseAfter === undefined ? 0 : parseThreshold("--pause-after-denials", pauseAfter),
            failAfterErrors: failAfter === undefined ? 0 : parseThreshold("--fail-after-errors", failAfter),
          }),
  });
}
