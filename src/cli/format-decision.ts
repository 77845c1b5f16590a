import { ScopeSchema, WindowSchema, OutcomeSchema, ReasonSchema, Window, type Budget, type Decision, type Violation } from "../gen/warden/v1/decision_pb.js";
import { enumName, enumWord, formatAmount, formatKeyValues, formatTable, formatTime } from "./format.js";

const NONE = "-";

/**
 * Formats budgets (the remaining budget of a decision, a session's windows,
 * an agent's limited windows) as a table: one row per scope and window,
 * with value and action use, limit and what is left, and when the window
 * resets. `currency` is the policy currency the micros are in.
 */
export function formatBudgets(budgets: readonly Budget[], currency: string | undefined, indent = ""): string {
  const rows = budgets.map((b) => [
    enumWord(ScopeSchema, b.scope),
    b.scopeId,
    enumWord(WindowSchema, b.window),
    formatAmount(b.valueUsedMicros, currency),
    b.valueLimitMicros === undefined ? NONE : formatAmount(b.valueLimitMicros, currency),
    b.valueRemainingMicros === undefined ? NONE : formatAmount(b.valueRemainingMicros, currency),
    b.actionsUsed.toString(),
    b.actionLimit === undefined ? NONE : b.actionLimit.toString(),
    b.actionsRemaining === undefined ? NONE : b.actionsRemaining.toString(),
    b.window === Window.LIFETIME ? NONE : (formatTime(b.windowEndTime) ?? NONE),
  ]);
  return formatTable(
    [
      { title: "scope" },
      { title: "id" },
      { title: "window" },
      { title: "value used", align: "right" },
      { title: "value limit", align: "right" },
      { title: "value left", align: "right" },
      { title: "actions used", align: "right" },
      { title: "action limit", align: "right" },
      { title: "actions left", align: "right" },
      { title: "resets" },
    ],
    rows,
    indent,
  );
}

/** Formats a violation as `LIMIT_DAILY_VALUE (session ses_1, day)`. */
export function formatViolation(v: Violation): string {
  const where = [`${enumWord(ScopeSchema, v.scope)} ${v.scopeId}`.trim()];
  if (v.window !== Window.UNSPECIFIED) where.push(enumWord(WindowSchema, v.window));
  return `${enumName(ReasonSchema, v.reason)} (${where.join(", ")})`;
}

/**
 * Formats a decision: outcome (ALLOW, DENY, NEEDS_APPROVAL), reason names,
 * message and violations, then `extra` entries (authorization id, hold
 * expiry), then the remaining budget per window.
 */
export function formatDecision(
  decision: Decision,
  currency: string | undefined,
  extra: readonly (readonly [string, string | undefined])[] = [],
): string {
  const head = formatKeyValues([
    ["outcome", enumName(OutcomeSchema, decision.outcome)],
    ["reasons", decision.reasons.map((r) => enumName(ReasonSchema, r)).join(", ")],
    ["message", decision.message],
    ["violations", decision.violations.map(formatViolation).join("; ")],
    ...extra,
  ]);
  if (decision.remaining.length === 0) return head;
  return `${head}\n\nremaining budget\n${formatBudgets(decision.remaining, currency, "  ")}`;
}
