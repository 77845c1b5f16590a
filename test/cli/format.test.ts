import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { formatActionRecord, formatActionsTable } from "../../src/cli/format-action.js";
import { formatAgent } from "../../src/cli/format-agent.js";
import { formatBudgets, formatDecision, formatViolation } from "../../src/cli/format-decision.js";
import { formatPolicy, formatSession, formatSessionsTable } from "../../src/cli/format-session.js";
import { enumName, enumWord, formatAmount, formatDuration, formatKeyValues, formatLabels, formatTable, formatTime } from "../../src/cli/format.js";
import { AgentSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { BudgetSchema, DecisionSchema, Outcome, OutcomeSchema, Reason, ReasonSchema, Scope, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { ApprovalTimeoutOutcome, SessionPolicySchema, Weekday } from "../../src/gen/warden/v1/policy_pb.js";
import { ActionRecordSchema, ActionStatus } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionSchema, SessionStatus, SessionStatusSchema } from "../../src/gen/warden/v1/session_pb.js";

const t = (iso: string) => timestampFromDate(new Date(iso));

const DAY = create(BudgetSchema, {
  scope: Scope.SESSION,
  scopeId: "ses-1",
  window: Window.DAY,
  windowStartTime: t("2025-07-01T00:00:00Z"),
  windowEndTime: t("2025-07-02T00:00:00Z"),
  valueUsedMicros: 190_000_000n,
  actionsUsed: 3n,
  valueLimitMicros: 200_000_000n,
  valueRemainingMicros: 10_000_000n,
});
const LIFETIME = create(BudgetSchema, {
  scope: Scope.SESSION,
  scopeId: "ses-1",
  window: Window.LIFETIME,
  valueUsedMicros: 190_000_000n,
  actionsUsed: 3n,
  actionLimit: 100n,
  actionsRemaining: 97n,
});

describe("primitives", () => {
  test("tables align, right-align numbers and drop trailing spaces", () => {
    const out = formatTable(
      [{ title: "id" }, { title: "amount", align: "right" }, { title: "note" }],
      [
        ["a", "1.00 USD", ""],
        ["long-id", "100.00 USD", "x"],
      ],
    );
    assert.equal(out, ["ID           AMOUNT  NOTE", "a          1.00 USD", "long-id  100.00 USD  x"].join("\n"));
  });
  test("tables indent every line", () => {
    assert.equal(formatTable([{ title: "a" }], [["x"]], "  "), "  A\n  x");
  });
  test("key-value blocks align and skip empty values", () => {
    assert.equal(
      formatKeyValues([
        ["session", "s1"],
        ["owner", ""],
        ["idle timeout", undefined],
        ["status", "active"],
      ]),
      "session  s1\nstatus   active",
    );
  });
  test("times are ISO 8601 UTC without zero milliseconds", () => {
    assert.equal(formatTime(t("2025-07-01T18:00:00Z")), "2025-07-01T18:00:00Z");
    assert.equal(formatTime(t("2025-07-01T18:00:00.250Z")), "2025-07-01T18:00:00.250Z");
    assert.equal(formatTime(undefined), undefined);
  });
  test("durations print the way flags take them", () => {
    assert.equal(formatDuration(durationFromMs(90_000)), "1m30s");
    assert.equal(formatDuration(durationFromMs(5_400_000)), "1h30m");
    assert.equal(formatDuration(durationFromMs(604_800_000)), "7d");
    assert.equal(formatDuration(durationFromMs(1_500)), "1s500ms");
    assert.equal(formatDuration(durationFromMs(0)), "0s");
  });
  test("enums: reasons and outcomes upper case, statuses lower case", () => {
    assert.equal(enumName(ReasonSchema, Reason.LIMIT_DAILY_VALUE), "LIMIT_DAILY_VALUE");
    assert.equal(enumName(OutcomeSchema, Outcome.NEEDS_APPROVAL), "NEEDS_APPROVAL");
    assert.equal(enumWord(SessionStatusSchema, SessionStatus.ACTIVE), "active");
    assert.equal(enumName(ReasonSchema, 999), "999");
  });
  test("money shows its currency, or only the exact decimal when unknown", () => {
    assert.equal(formatAmount(12_500_000n, "USD"), "12.50 USD");
    assert.equal(formatAmount(1n, "EUR"), "0.000001 EUR");
    assert.equal(formatAmount(12_500_000n, undefined), "12.50");
  });
  test("labels sort by key", () => assert.equal(formatLabels({ b: "2", a: "1" }), "a=1, b=2"));
});

describe("decisions", () => {
  test("a denial shows outcome, reasons, violations and the remaining budget per window", () => {
    const out = formatDecision(
      create(DecisionSchema, {
        outcome: Outcome.DENY,
        reasons: [Reason.LIMIT_DAILY_VALUE, Reason.MERCHANT_NOT_ALLOWED],
        message: "daily limit would be exceeded",
        violations: [
          { reason: Reason.LIMIT_DAILY_VALUE, scope: Scope.SESSION, scopeId: "ses-1", window: Window.DAY },
          { reason: Reason.MERCHANT_NOT_ALLOWED, scope: Scope.SESSION, scopeId: "ses-1" },
        ],
        remaining: [DAY, LIFETIME],
      }),
      "USD",
      [["authorization", ""]],
    );
    assert.equal(
      out,
      [
        "outcome     DENY",
        "reasons     LIMIT_DAILY_VALUE, MERCHANT_NOT_ALLOWED",
        "message     daily limit would be exceeded",
        "violations  LIMIT_DAILY_VALUE (session ses-1, day); MERCHANT_NOT_ALLOWED (session ses-1)",
        "",
        "remaining budget",
        "  SCOPE    ID     WINDOW    VALUE USED  VALUE LIMIT  VALUE LEFT  ACTIONS USED  ACTION LIMIT  ACTIONS LEFT  RESETS",
        "  session  ses-1  day       190.00 USD   200.00 USD   10.00 USD             3             -             -  2025-07-02T00:00:00Z",
        "  session  ses-1  lifetime  190.00 USD            -           -             3           100            97  -",
      ].join("\n"),
    );
  });
  test("an allow shows the hold", () => {
    const out = formatDecision(create(DecisionSchema, { outcome: Outcome.ALLOW }), "USD", [
      ["authorization", "act_abc"],
      ["hold expires", "2025-07-01T18:15:00Z"],
    ]);
    assert.equal(out, "outcome        ALLOW\nauthorization  act_abc\nhold expires   2025-07-01T18:15:00Z");
  });
  test("needs approval is named as such", () => {
    const out = formatDecision(create(DecisionSchema, { outcome: Outcome.NEEDS_APPROVAL, reasons: [Reason.APPROVAL_REQUIRED] }), "USD");
    assert.match(out, /^outcome  NEEDS_APPROVAL\nreasons  APPROVAL_REQUIRED$/);
  });
  test("violations of a parent and an agent name their scope", () => {
    assert.equal(
      formatViolation({ $typeName: "warden.v1.Violation", reason: Reason.LIMIT_MONTHLY_ACTIONS, scope: Scope.AGENT, scopeId: "bot", window: Window.MONTH }),
      "LIMIT_MONTHLY_ACTIONS (agent bot, month)",
    );
    assert.equal(
      formatViolation({ $typeName: "warden.v1.Violation", reason: Reason.PARENT_INACTIVE, scope: Scope.PARENT_SESSION, scopeId: "p", window: Window.UNSPECIFIED }),
      "PARENT_INACTIVE (parent_session p)",
    );
  });
  test("budgets without a known currency still show exact decimals", () => {
    assert.match(formatBudgets([DAY], undefined), /190\.00 +200\.00 +10\.00/);
  });
});

describe("sessions, actions, agents", () => {
  const policy = create(SessionPolicySchema, {
    currencyCode: "USD",
    daily: { maxValueMicros: 200_000_000n, maxActions: 10n },
    lifetime: { maxActions: 1n },
    maxPerTransactionMicros: 50_000_000n,
    allowedMerchants: ["acme", "globex"],
    timeZone: "Europe/Berlin",
    weekStart: Weekday.SUNDAY,
    holdTtl: durationFromMs(1_800_000),
    circuitBreaker: { pauseAfterDenialsInARow: 3, failAfterErrors: 1 },
  });
  const session = create(SessionSchema, {
    sessionId: "ses-1",
    agentId: "shopper",
    status: SessionStatus.PAUSED,
    statusReason: "suspicious",
    labels: { team: "home" },
    createTime: t("2025-07-01T10:00:00Z"),
    expireTime: t("2025-07-01T11:30:00Z"),
    idleTimeout: durationFromMs(900_000),
    policy,
    usage: { actionsCommitted: 1n, valueCommittedMicros: 12_500_000n, valueHeldMicros: 5_000_000n, actionsHeld: 2n, requestCount: 4n, denialCount: 1n, windows: [DAY] },
  });

  test("a policy lists set limits and the calendar settings", () => {
    assert.equal(
      formatPolicy(policy),
      [
        "  currency           USD",
        "  per transaction    50.00 USD",
        "  per day            200.00 USD, 10 actions",
        "  lifetime           1 action",
        "  allowed merchants  acme, globex",
        "  time zone          Europe/Berlin",
        "  week starts        sunday",
        "  hold ttl           30m",
        "  pause after        3 denials in a row",
        "  fail after         1 failed request",
      ].join("\n"),
    );
  });
  test("a policy with approvals shows how long a person has and what a timeout does", () => {
    const approvals = (init: object) => formatPolicy(create(SessionPolicySchema, { currencyCode: "USD", requireApprovalAboveMicros: 100_000_000n, ...init }));
    assert.match(approvals({}), /approval above +100\.00 USD\n +approval ttl +15m\n +on approval timeout +deny\n/);
    // Approve on timeout lets the money go with nobody saying yes: the one to see.
    assert.match(approvals({ approvalTtl: durationFromMs(3_600_000), approvalTimeoutOutcome: ApprovalTimeoutOutcome.APPROVE }), /approval ttl +1h\n +on approval timeout +approve\n/);
    assert.doesNotMatch(formatPolicy(policy), /approval/, "no approvals, no approval terms");
  });
  test("a table of 200,000 rows (actions --all of a busy session) is laid out, not a stack overflow", () => {
    const text = formatTable([{ title: "n", align: "right" }], Array.from({ length: 200_000 }, (_, i) => [String(i)]));
    assert.equal(text.split("\n").length, 200_001);
    assert.equal(text.split("\n")[1], "     0", "right-aligned to the widest row, 199999");
    assert.equal(formatKeyValues(Array.from({ length: 200_000 }, (_, i) => [`k${i}`, "v"] as const)).split("\n").length, 200_000);
  });
  test("a policy shows the calendar defaults", () => {
    assert.match(formatPolicy(create(SessionPolicySchema, { currencyCode: "EUR" })), /time zone +UTC\n +week starts +monday\n +hold ttl +15m$/);
  });
  test("a session shows status word, times, usage and windows", () => {
    const out = formatSession(session);
    assert.match(out, /^session +ses-1\nagent +shopper\nstatus +paused\nstatus reason +suspicious\n/);
    assert.match(out, /\nexpires +2025-07-01T11:30:00Z\n/);
    assert.match(out, /\nidle timeout +15m\n/);
    assert.match(out, /\n  committed +12\.50 USD in 1 action\n  held +5\.00 USD in 2 actions\n  requests +4 \(1 denied, 0 errors\)\n/);
    assert.match(out, /\nwindows\n  SCOPE +ID +WINDOW/);
  });
  test("session tables have one row per session", () => {
    const out = formatSessionsTable([session, create(SessionSchema, { sessionId: "ses-2", agentId: "b", status: SessionStatus.ACTIVE, policy })]);
    const lines = out.split("\n");
    assert.equal(lines.length, 3);
    assert.match(lines[0]!, /^SESSION +AGENT +STATUS +COMMITTED +HELD +EXPIRES +LABELS$/);
    assert.match(lines[1]!, /^ses-1 +shopper +paused +12\.50 USD +5\.00 USD +2025-07-01T11:30:00Z +team=home$/);
    assert.match(lines[2]!, /^ses-2 +b +active +0\.00 USD +0\.00 USD +-$/);
    assert.equal(formatSessionsTable([]), "no sessions");
  });
  const record = create(ActionRecordSchema, {
    actionId: "act_1",
    sessionId: "ses-1",
    method: "authorize",
    status: ActionStatus.CAPTURED,
    action: { type: "payment", amount: { currencyCode: "USD", amountMicros: 12_500_000n }, merchant: "acme" },
    decision: { outcome: Outcome.ALLOW },
    capturedAmount: { currencyCode: "USD", amountMicros: 10_000_000n },
    createTime: t("2025-07-01T10:05:00Z"),
  });
  test("an action record shows where its money is", () => {
    const out = formatActionRecord(record);
    assert.match(out, /^action +act_1\nsession +ses-1\nmethod +authorize\nstatus +captured\ntype +payment\namount +12\.50 USD\nmerchant +acme\noutcome +ALLOW\n/);
    assert.match(out, /\ncaptured +10\.00 USD\ncreated +2025-07-01T10:05:00Z$/);
  });
  test("action tables show outcome, status and reasons", () => {
    const denied = create(ActionRecordSchema, {
      actionId: "act_2",
      method: "check",
      status: ActionStatus.DENIED,
      action: { type: "tool_call" },
      decision: { outcome: Outcome.DENY, reasons: [Reason.ACTION_TYPE_NOT_ALLOWED, Reason.SESSION_PAUSED] },
    });
    const lines = formatActionsTable([record, denied]).split("\n");
    assert.match(lines[0]!, /^TIME +ACTION +METHOD +TYPE +AMOUNT +MERCHANT +OUTCOME +STATUS +REASONS$/);
    assert.match(lines[1]!, /^2025-07-01T10:05:00Z +act_1 +authorize +payment +12\.50 USD +acme +ALLOW +captured$/);
    assert.match(lines[2]!, /^- +act_2 +check +tool_call +- +DENY +denied +ACTION_TYPE_NOT_ALLOWED,SESSION_PAUSED$/);
    assert.equal(formatActionsTable([]), "no actions");
  });
  test("an agent shows its policy, or that it has none", () => {
    assert.match(formatAgent(create(AgentSchema, { agentId: "bot", sessionCount: 2n, policy })), /^agent +bot\nsessions +2\n\npolicy\n  currency +USD/);
    assert.match(formatAgent(create(AgentSchema, { agentId: "bot" })), /policy  none/);
  });
});
