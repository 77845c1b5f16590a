import { ApprovalTimeoutOutcome, WeekdaySchema, type SessionPolicy, type WindowLimit } from "../gen/warden/v1/policy_pb.js";
import { SessionStatusSchema, type Session } from "../gen/warden/v1/session_pb.js";
import { formatBudgets } from "./format-decision.js";
import { enumWord, formatAmount, formatDuration, formatKeyValues, formatLabels, formatTable, formatTime } from "./format.js";

function limit(w: WindowLimit | undefined, currency: string): string | undefined {
  if (w === undefined) return undefined;
  const parts: string[] = [];
  if (w.maxValueMicros !== undefined) parts.push(formatAmount(w.maxValueMicros, currency));
  if (w.maxActions !== undefined) parts.push(`${w.maxActions} action${w.maxActions === 1n ? "" : "s"}`);
  return parts.join(", ") || undefined;
}

function count(n: bigint, noun: string): string {
  return `${n} ${noun}${n === 1n ? "" : "s"}`;
}

/** A circuit-breaker threshold, left out when off (0 or unset). */
function breaker(n: number | undefined, noun: string, suffix: string): string | undefined {
  return n ? `${count(BigInt(n), noun)}${suffix}` : undefined;
}

/**
 * Formats a policy as indented `key value` lines. Unset limits are left
 * out (they mean "no limit"); the calendar settings are always shown with
 * their defaults filled in, because they decide when windows reset.
 */
export function formatPolicy(policy: SessionPolicy, indent = "  "): string {
  const c = policy.currencyCode;
  const m = (v: bigint | undefined) => (v === undefined ? undefined : formatAmount(v, c));
  return formatKeyValues(
    [
      ["currency", c],
      ["per transaction", m(policy.maxPerTransactionMicros)],
      ["approval above", m(policy.requireApprovalAboveMicros)],
      // How long a person has, and what happens when nobody decides: an
      // approve on timeout lets the money go without anyone saying yes.
      ...approvalTerms(policy),
      ["per day", limit(policy.daily, c)],
      ["per week", limit(policy.weekly, c)],
      ["per month", limit(policy.monthly, c)],
      ["lifetime", limit(policy.lifetime, c)],
      ["allowed merchants", policy.allowedMerchants.join(", ")],
      ["blocked merchants", policy.blockedMerchants.join(", ")],
      ["allowed types", policy.allowedActionTypes.join(", ")],
      ["time zone", policy.timeZone || "UTC"],
      ["week starts", policy.weekStart === 0 ? "monday" : enumWord(WeekdaySchema, policy.weekStart)],
      ["hold ttl", formatDuration(policy.holdTtl) ?? "15m"],
      ["pause after", breaker(policy.circuitBreaker?.pauseAfterDenialsInARow, "denial", " in a row")],
      ["fail after", breaker(policy.circuitBreaker?.failAfterErrors, "failed request", "")],
    ],
    indent,
  );
}

/** The approval TTL and timeout outcome, shown where approvals can happen (the rest is defaults). */
function approvalTerms(policy: SessionPolicy): [string, string][] {
  if (policy.requireApprovalAboveMicros === undefined) return [];
  const approves = policy.approvalTimeoutOutcome === ApprovalTimeoutOutcome.APPROVE;
  return [
    ["approval ttl", formatDuration(policy.approvalTtl) ?? "15m"],
    ["on approval timeout", approves ? "approve" : "deny"],
  ];
}

/**
 * Formats one session as a block: identity and status, times, the policy,
 * the usage, and a table of its windows.
 */
export function formatSession(s: Session): string {
  const currency = s.policy?.currencyCode;
  const u = s.usage;
  const blocks = [
    formatKeyValues([
      ["session", s.sessionId],
      ["agent", s.agentId],
      ["status", enumWord(SessionStatusSchema, s.status)],
      ["status reason", s.statusReason],
      ["parent", s.parentSessionId],
      ["owner", s.owner],
      ["description", s.description],
      ["labels", formatLabels(s.labels)],
      ["created", formatTime(s.createTime)],
      ["updated", formatTime(s.updateTime)],
      ["expires", formatTime(s.expireTime)],
      ["idle timeout", formatDuration(s.idleTimeout)],
      ["last activity", formatTime(s.lastActivityTime)],
      ["ended", formatTime(s.endTime)],
      ["etag", s.etag],
    ]),
  ];
  if (s.policy !== undefined) blocks.push(`policy\n${formatPolicy(s.policy)}`);
  if (u !== undefined) {
    blocks.push(
      `usage\n${formatKeyValues(
        [
          ["committed", `${formatAmount(u.valueCommittedMicros, currency)} in ${count(u.actionsCommitted, "action")}`],
          ["held", `${formatAmount(u.valueHeldMicros, currency)} in ${count(u.actionsHeld, "action")}`],
          ["requests", `${u.requestCount} (${u.denialCount} denied, ${count(u.errorCount, "error")})`],
        ],
        "  ",
      )}`,
    );
    if (u.windows.length > 0) blocks.push(`windows\n${formatBudgets(u.windows, currency, "  ")}`);
  }
  return blocks.join("\n\n");
}

/** Formats sessions as a table, one row each; `no sessions` when empty. */
export function formatSessionsTable(sessions: readonly Session[]): string {
  if (sessions.length === 0) return "no sessions";
  return formatTable(
    [
      { title: "session" },
      { title: "agent" },
      { title: "status" },
      { title: "committed", align: "right" },
      { title: "held", align: "right" },
      { title: "expires" },
      { title: "labels" },
    ],
    sessions.map((s) => [
      s.sessionId,
      s.agentId,
      enumWord(SessionStatusSchema, s.status),
      formatAmount(s.usage?.valueCommittedMicros ?? 0n, s.policy?.currencyCode),
      formatAmount(s.usage?.valueHeldMicros ?? 0n, s.policy?.currencyCode),
      formatTime(s.expireTime) ?? "-",
      formatLabels(s.labels),
    ]),
  );
}
