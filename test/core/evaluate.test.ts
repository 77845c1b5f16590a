/**
 * The policy engine. Inputs are built from protobuf policies; expected
 * windows come from UTC_STARTS / hand-written offsets, expected reasons from
 * the Reason enum's documented meaning.
 */
import { ApprovalTimeoutOutcome } from "../../src/gen/warden/v1/policy_pb.js";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { EMPTY_POLICY, type WindowKind } from "../../src/core/compiled-policy.js";
import {
  type BudgetView,
  budgetsOf,
  type Charge,
  counterKey,
  type Evaluation,
  isExhausted,
  lapse,
  LIFETIME_START_MS,
  type ScopeState,
  type Totals,
  type ViolationView,
} from "../../src/core/evaluate.js";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Outcome, Reason, Scope, Window } from "../../src/gen/warden/v1/decision_pb.js";
import type { SessionPolicySchema } from "../../src/gen/warden/v1/policy_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { budgetToProto } from "../../src/store/decision-proto.js";
import {
  agent,
  DAY,
  HOUR,
  local,
  MINUTE,
  NOW,
  parent,
  payment,
  policy,
  run,
  session,
  toolCall,
  units,
  UsageBook,
  utc,
  UTC_PREVIOUS_STARTS,
  UTC_STARTS,
} from "./fixtures.js";

type PolicyInit = MessageInitShape<typeof SessionPolicySchema>;

const WINDOWS: readonly WindowKind[] = ["day", "week", "month", "lifetime"];
/** The policy field that limits each window. */
const FIELD = { day: "daily", week: "weekly", month: "monthly", lifetime: "lifetime" } as const;
const WINDOW_ENUM: Record<WindowKind, Window> = { day: Window.DAY, week: Window.WEEK, month: Window.MONTH, lifetime: Window.LIFETIME };
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

/** A policy limiting one window. */
function windowPolicy(window: WindowKind, limit: { maxValueMicros?: bigint; maxActions?: bigint }, extra: PolicyInit = {}) {
  return policy({ [FIELD[window]]: limit, ...extra });
}

const reasonNames = (rs: readonly Reason[]) => rs.map((r) => Reason[r]);

function assertAllowed(ev: Evaluation, what = "allowed"): void {
  assert.deepEqual(reasonNames(ev.reasons), [], `${what}: ${ev.message}`);
  assert.equal(ev.outcome, Outcome.ALLOW, what);
  assert.deepEqual(ev.violations, [], what);
  assert.ok(ev.charges.length > 0, `${what}: charges`);
}

function assertDenied(ev: Evaluation, reasons: Reason[], what = "denied"): void {
  assert.deepEqual(reasonNames(ev.reasons), reasonNames(reasons), what);
  assert.equal(ev.outcome, Outcome.DENY, what);
  assert.deepEqual(ev.charges, [], `${what}: nothing is charged`);
}

const violationKey = (v: ViolationView) => `${Reason[v.reason]}|${Scope[v.scope]}|${v.scopeId}|${Window[v.window]}`;
function assertViolations(ev: Evaluation, expected: ViolationView[], what = "violations"): void {
  assert.deepEqual(ev.violations.map(violationKey).sort(), expected.map(violationKey).sort(), what);
}
const v = (reason: Reason, scope: ScopeState, window = Window.UNSPECIFIED): ViolationView => ({ reason, scope: scope.scope, scopeId: scope.id, window });

/** Reasons the sidecar, not the engine, produces. */
const NOT_FROM_ENGINE = new Set<Reason>([Reason.UNSPECIFIED, Reason.CONTROL_PLANE_UNAVAILABLE]);

interface Trigger {
  readonly build: () => Parameters<typeof run>[0];
  readonly outcome: Outcome;
  /** Where the violation comes from; absent for APPROVAL_REQUIRED. */
  readonly violation?: (s: { session: ScopeState; parent: ScopeState }) => ViolationView;
  readonly expire?: "time" | "idle";
}

/** One input per reason that produces that reason and nothing else. */
const TRIGGERS: Partial<Record<Reason, Trigger>> = {
  [Reason.AMOUNT_OUT_OF_RANGE]: {
    // No value limit anywhere, and a total already near int64's largest.
    build: () => {
      const s = session({ policy: policy({}) });
      return { scopes: [s], action: payment(2n), usage: new UsageBook().setNow(s, "lifetime", 2n ** 63n - 2n, 1n) };
    },
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.AMOUNT_OUT_OF_RANGE, s.session, Window.LIFETIME),
  },
  [Reason.LIMIT_PER_TRANSACTION]: {
    build: () => ({ scopes: [session({ policy: policy({ maxPerTransactionMicros: units(50) }) })], action: payment(units(50) + 1n) }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.LIMIT_PER_TRANSACTION, s.session),
  },
  [Reason.MERCHANT_NOT_ALLOWED]: {
    build: () => ({ scopes: [session({ policy: policy({ allowedMerchants: ["acme"] }) })], action: payment(units(1), "globex") }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.MERCHANT_NOT_ALLOWED, s.session),
  },
  [Reason.MERCHANT_BLOCKED]: {
    build: () => ({ scopes: [session({ policy: policy({ blockedMerchants: ["evil"] }) })], action: payment(units(1), "evil") }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.MERCHANT_BLOCKED, s.session),
  },
  [Reason.ACTION_TYPE_NOT_ALLOWED]: {
    build: () => ({ scopes: [session({ policy: policy({ allowedActionTypes: ["payment"] }) })], action: toolCall() }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.ACTION_TYPE_NOT_ALLOWED, s.session),
  },
  [Reason.SESSION_EXPIRED]: {
    build: () => ({ scopes: [session({ expireMs: NOW })], action: payment(units(1)) }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.SESSION_EXPIRED, s.session),
    expire: "time",
  },
  [Reason.SESSION_IDLE_TIMEOUT]: {
    build: () => ({ scopes: [session({ idleTimeoutMs: 10 * MINUTE, lastActivityMs: NOW - 10 * MINUTE })], action: payment(units(1)) }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.SESSION_IDLE_TIMEOUT, s.session),
    expire: "idle",
  },
  [Reason.PARENT_INACTIVE]: {
    build: () => ({ scopes: [session(), parent("p1", { status: SessionStatus.REVOKED }), agent()], action: payment(units(1)) }),
    outcome: Outcome.DENY,
    violation: (s) => v(Reason.PARENT_INACTIVE, s.parent),
  },
  [Reason.APPROVAL_REQUIRED]: {
    build: () => ({ scopes: [session({ policy: policy({ requireApprovalAboveMicros: units(100) }) })], action: payment(units(100) + 1n) }),
    outcome: Outcome.NEEDS_APPROVAL,
  },
};
const STATUS_OF: [Reason, SessionStatus][] = [
  [Reason.SESSION_REVOKED, SessionStatus.REVOKED],
  [Reason.SESSION_COMPLETED, SessionStatus.COMPLETED],
  [Reason.SESSION_PAUSED, SessionStatus.PAUSED],
  [Reason.SESSION_EXHAUSTED, SessionStatus.EXHAUSTED],
  [Reason.SESSION_FAILED, SessionStatus.FAILED],
];
for (const [reason, status] of STATUS_OF) {
  TRIGGERS[reason] = {
    build: () => ({ scopes: [session({ status })], action: payment(units(1)) }),
    outcome: Outcome.DENY,
    violation: (s) => v(reason, s.session),
  };
}
for (const w of WINDOWS) {
  TRIGGERS[VALUE_REASON[w]] = {
    build: () => {
      const s = session({ policy: windowPolicy(w, { maxValueMicros: units(100) }) });
      return { scopes: [s], action: payment(units(40) + 1n), usage: new UsageBook().setNow(s, w, units(60), 3n) };
    },
    outcome: Outcome.DENY,
    violation: (s) => v(VALUE_REASON[w], s.session, WINDOW_ENUM[w]),
  };
  TRIGGERS[ACTION_REASON[w]] = {
    build: () => {
      const s = session({ policy: windowPolicy(w, { maxActions: 5n }) });
      return { scopes: [s], action: payment(units(1)), usage: new UsageBook().setNow(s, w, units(1), 5n) };
    },
    outcome: Outcome.DENY,
    violation: (s) => v(ACTION_REASON[w], s.session, WINDOW_ENUM[w]),
  };
}

describe("every reason the engine can give", () => {
  test("has a trigger here (a new Reason needs a test)", () => {
    const all = Object.values(Reason).filter((r): r is Reason => typeof r === "number");
    assert.ok(all.length >= 23, "the Reason enum is read");
    const missing = all.filter((r) => !NOT_FROM_ENGINE.has(r) && TRIGGERS[r] === undefined).map((r) => Reason[r]);
    assert.deepEqual(missing, []);
  });

  for (const [key, trigger] of Object.entries(TRIGGERS)) {
    const reason = Number(key) as Reason;
    test(`${Reason[reason]}`, () => {
      const input = trigger.build();
      const ev = run(input);
      assert.deepEqual(reasonNames(ev.reasons), [Reason[reason]], ev.message);
      assert.equal(Outcome[ev.outcome], Outcome[trigger.outcome]);
      if (trigger.outcome === Outcome.DENY) assert.deepEqual(ev.charges, [], "nothing is charged");
      // A pending approval holds every window, like an authorization.
      else assert.equal(ev.charges.length, 4 * input.scopes.length, "every window is held");
      assert.notEqual(ev.message, "allowed");
      if (trigger.violation !== undefined) {
        assertViolations(ev, [trigger.violation({ session: input.scopes[0]!, parent: input.scopes[1] ?? input.scopes[0]! })]);
      }
      assert.equal(ev.expire, trigger.expire);
    });
  }
});

describe("limits at the boundary", () => {
  test("per transaction: exactly the limit is allowed, one micro more is denied", () => {
    const s = session({ policy: policy({ maxPerTransactionMicros: units(50) }) });
    assertAllowed(run({ scopes: [s], action: payment(units(50)) }));
    assertDenied(run({ scopes: [s], action: payment(units(50) + 1n) }), [Reason.LIMIT_PER_TRANSACTION]);
  });

  for (const w of WINDOWS) {
    test(`${w} value: reaching the limit exactly is allowed, one micro over is denied`, () => {
      const s = session({ policy: windowPolicy(w, { maxValueMicros: units(100) }) });
      const usage = new UsageBook().setNow(s, w, units(60), 7n);
      assertAllowed(run({ scopes: [s], action: payment(units(40)), usage }), "60 + 40 = 100");
      const ev = run({ scopes: [s], action: payment(units(40) + 1n), usage });
      assertDenied(ev, [VALUE_REASON[w]], "60 + 40.000001 > 100");
      assertViolations(ev, [v(VALUE_REASON[w], s, WINDOW_ENUM[w])]);
    });

    test(`${w} actions: the last action is allowed, one more is denied`, () => {
      const s = session({ policy: windowPolicy(w, { maxActions: 5n }) });
      assertAllowed(run({ scopes: [s], action: payment(units(1)), usage: new UsageBook().setNow(s, w, units(9), 4n) }), "4 + 1 = 5");
      const ev = run({ scopes: [s], action: payment(units(1)), usage: new UsageBook().setNow(s, w, units(9), 5n) });
      assertDenied(ev, [ACTION_REASON[w]], "5 + 1 > 5");
      assertViolations(ev, [v(ACTION_REASON[w], s, WINDOW_ENUM[w])]);
    });
  }

  test("an empty window allows exactly the whole limit in one action", () => {
    const s = session({ policy: policy({ daily: { maxValueMicros: units(100), maxActions: 1n } }) });
    assertAllowed(run({ scopes: [s], action: payment(units(100)) }));
    assertDenied(run({ scopes: [s], action: payment(units(100) + 1n) }), [Reason.LIMIT_DAILY_VALUE]);
  });

  test("a total without a value limit may reach int64's largest exactly, never pass it", () => {
    const max = 2n ** 63n - 1n;
    const s = session({ policy: policy({}) });
    const usage = new UsageBook().setNow(s, "lifetime", max - 10n, 3n);
    assertAllowed(run({ scopes: [s], action: payment(10n), usage }));
    assertDenied(run({ scopes: [s], action: payment(11n), usage }), [Reason.AMOUNT_OUT_OF_RANGE]);
  });

  test("a limit near int64 max compares exactly (no float rounding)", () => {
    const max = 2n ** 63n - 1n;
    const s = session({ policy: policy({ lifetime: { maxValueMicros: max } }) });
    const usage = new UsageBook().setNow(s, "lifetime", max - 2n ** 53n, 0n);
    assertAllowed(run({ scopes: [s], action: payment(2n ** 53n), usage }));
    assertDenied(run({ scopes: [s], action: payment(2n ** 53n + 1n), usage }), [Reason.LIMIT_LIFETIME_VALUE]);
  });
});

describe("zero limits", () => {
  test("a zero value limit denies any money; a zero per-transaction limit too", () => {
    for (const w of WINDOWS) {
      const s = session({ policy: windowPolicy(w, { maxValueMicros: 0n }) });
      assertDenied(run({ scopes: [s], action: payment(1n) }), [VALUE_REASON[w]], w);
    }
    const s = session({ policy: policy({ maxPerTransactionMicros: 0n }) });
    assertDenied(run({ scopes: [s], action: payment(1n) }), [Reason.LIMIT_PER_TRANSACTION]);
  });

  test("a zero action limit denies every action, even one without money", () => {
    for (const w of WINDOWS) {
      const s = session({ policy: windowPolicy(w, { maxActions: 0n }) });
      assertDenied(run({ scopes: [s], action: toolCall() }), [ACTION_REASON[w]], w);
      assertDenied(run({ scopes: [s], action: payment(1n) }), [ACTION_REASON[w]], w);
    }
  });

  test("zero value limits leave non-monetary actions allowed (nothing is spent)", () => {
    const s = session({ policy: policy({ daily: { maxValueMicros: 0n }, lifetime: { maxValueMicros: 0n }, maxPerTransactionMicros: 0n }) });
    assertAllowed(run({ scopes: [s], action: toolCall() }));
  });

  test("approval above zero asks for any money", () => {
    const s = session({ policy: policy({ requireApprovalAboveMicros: 0n }) });
    assert.equal(run({ scopes: [s], action: payment(1n) }).outcome, Outcome.NEEDS_APPROVAL);
    assertAllowed(run({ scopes: [s], action: toolCall() }));
  });
});

describe("merchants and action types", () => {
  test("allowed merchants are exact and case-sensitive", () => {
    const s = session({ policy: policy({ allowedMerchants: ["acme", "initech"] }) });
    assertAllowed(run({ scopes: [s], action: payment(units(1), "acme") }));
    assertAllowed(run({ scopes: [s], action: payment(units(1), "initech") }));
    for (const m of ["ACME", "acme ", "acm", "globex"]) {
      assertDenied(run({ scopes: [s], action: payment(units(1), m) }), [Reason.MERCHANT_NOT_ALLOWED], m);
    }
  });

  test("a payment naming no merchant is denied when only some merchants are allowed", () => {
    const s = session({ policy: policy({ allowedMerchants: ["acme"] }) });
    assertDenied(run({ scopes: [s], action: payment(units(1), "") }), [Reason.MERCHANT_NOT_ALLOWED]);
  });

  test("blocked wins over allowed and is the only merchant reason", () => {
    const s = session({ policy: policy({ allowedMerchants: ["acme", "evil"], blockedMerchants: ["evil"] }) });
    const ev = run({ scopes: [s], action: payment(units(1), "evil") });
    assertDenied(ev, [Reason.MERCHANT_BLOCKED]);
    assertViolations(ev, [v(Reason.MERCHANT_BLOCKED, s)]);
  });

  test("a blocklist alone leaves other merchants and merchant-less actions allowed", () => {
    const s = session({ policy: policy({ blockedMerchants: ["evil"] }) });
    assertAllowed(run({ scopes: [s], action: payment(units(1), "acme") }));
    assertAllowed(run({ scopes: [s], action: toolCall() }));
  });

  test("allowed action types", () => {
    const s = session({ policy: policy({ allowedActionTypes: ["payment", "tool_call"] }) });
    assertAllowed(run({ scopes: [s], action: toolCall() }));
    assertAllowed(run({ scopes: [s], action: payment(units(1)) }));
    assertDenied(run({ scopes: [s], action: { type: "refund", amountMicros: 0n, merchant: "" } }), [Reason.ACTION_TYPE_NOT_ALLOWED]);
    assertDenied(run({ scopes: [s], action: { type: "Payment", amountMicros: 1n, merchant: "acme" } }), [Reason.ACTION_TYPE_NOT_ALLOWED]);
  });

  test("the agent's and a parent's merchant and type rules apply to the session", () => {
    const p = parent("p1", { policy: policy({ blockedMerchants: ["evil"] }) });
    const a = agent({ policy: policy({ allowedMerchants: ["acme"], allowedActionTypes: ["payment"] }) });
    const ev = run({ scopes: [session(), p, a], action: { type: "transfer", amountMicros: units(1), merchant: "evil" } });
    assertDenied(ev, [Reason.MERCHANT_NOT_ALLOWED, Reason.MERCHANT_BLOCKED, Reason.ACTION_TYPE_NOT_ALLOWED]);
    assertViolations(ev, [v(Reason.MERCHANT_BLOCKED, p), v(Reason.MERCHANT_NOT_ALLOWED, a), v(Reason.ACTION_TYPE_NOT_ALLOWED, a)]);
  });
});

describe("several reasons at once", () => {
  test("all reasons are reported, deduplicated and ascending, each violation naming its scope and window", () => {
    const s = session({
      status: SessionStatus.PAUSED,
      policy: policy({
        maxPerTransactionMicros: units(10),
        blockedMerchants: ["evil"],
        allowedActionTypes: ["payment"],
        daily: { maxValueMicros: units(100) },
      }),
    });
    const p = parent("p1", { status: SessionStatus.REVOKED });
    const a = agent({
      policy: policy({ daily: { maxValueMicros: units(50) }, lifetime: { maxActions: 3n }, requireApprovalAboveMicros: units(5) }),
    });
    const usage = new UsageBook().setNow(a, "lifetime", 0n, 3n);
    const ev = run({ scopes: [s, p, a], action: { type: "transfer", amountMicros: units(200), merchant: "evil" }, usage });

    // Written out in enum order; APPROVAL_REQUIRED is listed though DENY wins.
    assertDenied(ev, [
      Reason.LIMIT_PER_TRANSACTION,
      Reason.LIMIT_DAILY_VALUE,
      Reason.LIMIT_LIFETIME_ACTIONS,
      Reason.MERCHANT_BLOCKED,
      Reason.ACTION_TYPE_NOT_ALLOWED,
      Reason.SESSION_PAUSED,
      Reason.PARENT_INACTIVE,
      Reason.APPROVAL_REQUIRED,
    ]);
    for (let i = 1; i < ev.reasons.length; i++) assert.ok(ev.reasons[i - 1]! < ev.reasons[i]!, "strictly ascending, no duplicates");
    assertViolations(ev, [
      v(Reason.SESSION_PAUSED, s),
      v(Reason.PARENT_INACTIVE, p),
      v(Reason.ACTION_TYPE_NOT_ALLOWED, s),
      v(Reason.MERCHANT_BLOCKED, s),
      v(Reason.LIMIT_PER_TRANSACTION, s),
      v(Reason.LIMIT_DAILY_VALUE, s, Window.DAY),
      v(Reason.LIMIT_DAILY_VALUE, a, Window.DAY),
      v(Reason.LIMIT_LIFETIME_ACTIONS, a, Window.LIFETIME),
    ]);
    assert.match(ev.message, /^deny: /);
    assert.match(ev.message, /evil/);
  });

  test("the same limit broken by session, parent and agent gives one reason and three violations", () => {
    const lim = { weekly: { maxActions: 2n } };
    const s = session({ policy: policy(lim) });
    const p = parent("p1", { policy: policy(lim) });
    const a = agent({ policy: policy(lim) });
    const usage = new UsageBook().setNow(s, "week", 0n, 2n).setNow(p, "week", 0n, 2n).setNow(a, "week", 0n, 2n);
    const ev = run({ scopes: [s, p, a], action: toolCall(), usage });
    assertDenied(ev, [Reason.LIMIT_WEEKLY_ACTIONS]);
    assertViolations(ev, [
      v(Reason.LIMIT_WEEKLY_ACTIONS, s, Window.WEEK),
      v(Reason.LIMIT_WEEKLY_ACTIONS, p, Window.WEEK),
      v(Reason.LIMIT_WEEKLY_ACTIONS, a, Window.WEEK),
    ]);
  });

  test("value and action limits of one window both reported", () => {
    const s = session({ policy: policy({ monthly: { maxValueMicros: units(10), maxActions: 1n } }) });
    const ev = run({ scopes: [s], action: payment(units(11)), usage: new UsageBook().setNow(s, "month", 0n, 1n) });
    assertDenied(ev, [Reason.LIMIT_MONTHLY_VALUE, Reason.LIMIT_MONTHLY_ACTIONS]);
  });
});

describe("parents and agent", () => {
  test("a parent's window limit denies the child, naming the parent", () => {
    const s = session();
    const p = parent("p1", { policy: policy({ daily: { maxValueMicros: units(100) } }) });
    const usage = new UsageBook().setNow(p, "day", units(90), 1n);
    assertAllowed(run({ scopes: [s, p, agent()], action: payment(units(10)), usage }));
    const ev = run({ scopes: [s, p, agent()], action: payment(units(10) + 1n), usage });
    assertDenied(ev, [Reason.LIMIT_DAILY_VALUE]);
    assertViolations(ev, [v(Reason.LIMIT_DAILY_VALUE, p, Window.DAY)]);
  });

  test("a grandparent's limit denies too", () => {
    const p1 = parent("p1");
    const p2 = parent("p2", { policy: policy({ lifetime: { maxActions: 10n } }) });
    const usage = new UsageBook().setNow(p2, "lifetime", 0n, 10n);
    const ev = run({ scopes: [session(), p1, p2, agent()], action: toolCall(), usage });
    assertDenied(ev, [Reason.LIMIT_LIFETIME_ACTIONS]);
    assertViolations(ev, [v(Reason.LIMIT_LIFETIME_ACTIONS, p2, Window.LIFETIME)]);
  });

  test("the agent's limit and per-transaction cap deny the session", () => {
    const a = agent({ policy: policy({ monthly: { maxActions: 10n }, maxPerTransactionMicros: units(5) }) });
    const usage = new UsageBook().setNow(a, "month", 0n, 10n);
    const ev = run({ scopes: [session(), a], action: payment(units(6)), usage });
    assertDenied(ev, [Reason.LIMIT_PER_TRANSACTION, Reason.LIMIT_MONTHLY_ACTIONS]);
    assertViolations(ev, [v(Reason.LIMIT_PER_TRANSACTION, a), v(Reason.LIMIT_MONTHLY_ACTIONS, a, Window.MONTH)]);
  });

  test("the session's usage does not count against the agent (each scope has its own counters)", () => {
    const s = session();
    const a = agent({ policy: policy({ daily: { maxValueMicros: units(10) } }) });
    const usage = new UsageBook().setNow(s, "day", units(1000), 100n);
    assertAllowed(run({ scopes: [s, a], action: payment(units(10)), usage }));
  });

  test("an inactive or lapsed parent gives PARENT_INACTIVE, never the parent's own status reason", () => {
    const cases: [string, Partial<ScopeState>][] = [
      ["paused", { status: SessionStatus.PAUSED }],
      ["completed", { status: SessionStatus.COMPLETED }],
      ["expired", { status: SessionStatus.EXPIRED }],
      ["revoked", { status: SessionStatus.REVOKED }],
      ["exhausted", { status: SessionStatus.EXHAUSTED }],
      ["failed", { status: SessionStatus.FAILED }],
      ["past its expiry", { expireMs: NOW }],
      ["idle", { idleTimeoutMs: HOUR, lastActivityMs: NOW - HOUR }],
    ];
    for (const [what, init] of cases) {
      const p = parent("p1", init);
      const ev = run({ scopes: [session(), p, agent()], action: payment(units(1)) });
      assertDenied(ev, [Reason.PARENT_INACTIVE], what);
      assertViolations(ev, [v(Reason.PARENT_INACTIVE, p)], what);
      assert.equal(ev.expire, undefined, `${what}: only the session itself is expired by a decision`);
    }
    const grand = parent("p2", { status: SessionStatus.REVOKED });
    const ev = run({ scopes: [session(), parent("p1"), grand, agent()], action: payment(units(1)) });
    assertViolations(ev, [v(Reason.PARENT_INACTIVE, grand)]);
  });

  test("a fork under a paused parent or grandparent does not idle: it is denied PARENT_INACTIVE, and not expired", () => {
    const idle = session({ idleTimeoutMs: HOUR, lastActivityMs: NOW - 2 * HOUR });
    const paused = parent("p2", { status: SessionStatus.PAUSED });
    // The parent between them, idle too, does not idle under the paused grandparent either.
    const ev = run({ scopes: [idle, parent("p1", { idleTimeoutMs: HOUR, lastActivityMs: NOW - 2 * HOUR }), paused, agent()], action: payment(units(1)) });
    assertDenied(ev, [Reason.PARENT_INACTIVE]);
    assertViolations(ev, [v(Reason.PARENT_INACTIVE, paused)]);
    assert.equal(ev.expire, undefined);
    // Past its expiry it has lapsed all the same.
    assert.equal(run({ scopes: [{ ...idle, expireMs: NOW }, paused, agent()], action: payment(units(1)) }).expire, "time");
  });
});

describe("approval", () => {
  test("exactly at require_approval_above is allowed; above it needs approval, which holds every window", () => {
    const s = session({ policy: policy({ requireApprovalAboveMicros: units(100) }) });
    assertAllowed(run({ scopes: [s], action: payment(units(100)) }));
    const allowed = run({ scopes: [s], action: payment(units(100)) });
    const ev = run({ scopes: [s], action: payment(units(100) + 1n) });
    assert.equal(ev.outcome, Outcome.NEEDS_APPROVAL);
    assert.deepEqual(reasonNames(ev.reasons), ["APPROVAL_REQUIRED"]);
    assert.deepEqual(ev.charges, allowed.charges, "held in the same windows an allowed action charges");
    assert.match(ev.message, /approval/);
    assert.deepEqual(ev.approval, { ttlMs: 15 * 60_000, approveOnTimeout: false }, "default: 15 minutes, deny on timeout");
    assert.equal(allowed.approval, undefined);
  });

  test("the agent's or a parent's approval threshold applies too", () => {
    for (const other of [agent({ policy: policy({ requireApprovalAboveMicros: units(20) }) }), parent("p1", { policy: policy({ requireApprovalAboveMicros: units(20) }) })]) {
      const ev = run({ scopes: [session(), other], action: payment(units(21)) });
      assert.equal(ev.outcome, Outcome.NEEDS_APPROVAL, Scope[other.scope]);
      assert.equal(ev.charges.length, 8);
    }
  });

  test("approval terms: the shortest TTL of the scopes that asked; approve on timeout only if all of them say so", () => {
    const ask = (ttlS: number, outcome: ApprovalTimeoutOutcome, above = units(10)) =>
      policy({ requireApprovalAboveMicros: above, approvalTtl: { seconds: BigInt(ttlS) }, approvalTimeoutOutcome: outcome });
    const s = session({ policy: ask(600, ApprovalTimeoutOutcome.APPROVE) });
    assert.deepEqual(run({ scopes: [s], action: payment(units(11)) }).approval, { ttlMs: 600_000, approveOnTimeout: true });
    // The agent asks too, for a shorter wait, and denies on timeout.
    const a = agent({ policy: ask(60, ApprovalTimeoutOutcome.DENY) });
    assert.deepEqual(run({ scopes: [s, a], action: payment(units(11)) }).approval, { ttlMs: 60_000, approveOnTimeout: false });
    // An agent whose threshold is not crossed has no say.
    const quiet = agent({ policy: ask(5, ApprovalTimeoutOutcome.DENY, units(1000)) });
    assert.deepEqual(run({ scopes: [s, quiet], action: payment(units(11)) }).approval, { ttlMs: 600_000, approveOnTimeout: true });
  });

  test("DENY wins over approval and still lists APPROVAL_REQUIRED", () => {
    const s = session({ policy: policy({ requireApprovalAboveMicros: units(100), daily: { maxValueMicros: units(150) } }) });
    const usage = new UsageBook().setNow(s, "day", units(100), 1n);
    const ev = run({ scopes: [s], action: payment(units(120)), usage });
    assertDenied(ev, [Reason.LIMIT_DAILY_VALUE, Reason.APPROVAL_REQUIRED]);
    // Below the limit the same amount only needs approval.
    assert.equal(run({ scopes: [s], action: payment(units(120)) }).outcome, Outcome.NEEDS_APPROVAL);
  });
});

describe("charges", () => {
  test("ALLOW charges every window of every scope, limited or not, in each scope's own calendar", () => {
    // Session: Berlin (CEST, +2 in July), weeks from Sunday. Parent: UTC,
    // weeks from Monday (WEEKDAY_UNSPECIFIED). Agent: no policy, so UTC.
    const s = session({ policy: policy({ timeZone: "Europe/Berlin", weekStart: 7, daily: { maxValueMicros: units(100) } }) });
    const p = parent("p1");
    const a = agent();
    const ev = run({ scopes: [s, p, a], action: payment(units(5)) });
    assertAllowed(ev);
    const berlin: Record<WindowKind, number> = {
      day: local(2026, 7, 15, 0, 0, 2),
      week: local(2026, 7, 12, 0, 0, 2),
      month: local(2026, 7, 1, 0, 0, 2),
      lifetime: LIFETIME_START_MS,
    };
    const expected: Charge[] = [];
    for (const [scope, starts] of [[s, berlin], [p, UTC_STARTS], [a, UTC_STARTS]] as const) {
      for (const w of WINDOWS) expected.push({ key: counterKey(scope.key, w, starts[w]), scopeKey: scope.key, window: w, startMs: starts[w] });
    }
    const byKey = (x: Charge, y: Charge) => x.key.localeCompare(y.key);
    assert.deepEqual([...ev.charges].sort(byKey), expected.sort(byKey));
    assert.equal(new Set(ev.charges.map((c) => c.key)).size, 12, "no counter charged twice");
  });

  test("DENY charges nothing; NEEDS_APPROVAL holds what ALLOW would charge", () => {
    const s = session({ policy: policy({ requireApprovalAboveMicros: units(10), maxPerTransactionMicros: units(50) }) });
    assert.equal(run({ scopes: [s, agent()], action: payment(units(11)) }).charges.length, 8);
    assert.deepEqual(run({ scopes: [s, agent()], action: payment(units(51)) }).charges, []);
  });

  test("a week start left unspecified is Monday", () => {
    const ev = run({ scopes: [session({ policy: policy({ weekStart: 0 }) })], action: payment(1n) });
    assert.deepEqual(
      ev.charges.filter((c) => c.window === "week").map((c) => c.startMs),
      [utc(2026, 7, 13)],
    );
  });
});

describe("budgets", () => {
  const setup = () => {
    const s = session({ policy: policy({ daily: { maxValueMicros: units(100), maxActions: 10n }, lifetime: { maxValueMicros: units(1000) } }) });
    const p = parent("p1");
    const a = agent({ policy: policy({ weekly: { maxActions: 50n } }) });
    const usage = new UsageBook().setNow(s, "day", units(30), 2n).setNow(s, "lifetime", units(500), 7n).setNow(a, "week", units(3), 10n);
    return { s, p, a, usage };
  };
  const dayUTC = { startMs: UTC_STARTS.day, endMs: UTC_STARTS.day + DAY };
  const weekUTC = { startMs: UTC_STARTS.week, endMs: UTC_STARTS.week + 7 * DAY };
  const monthUTC = { startMs: UTC_STARTS.month, endMs: utc(2026, 8, 1) };

  /** What the budgets must be when `plus` (value, actions) was added to every window. */
  function expectedBudgets(s: ScopeState, a: ScopeState, plusValue: bigint, plusActions: bigint): BudgetView[] {
    const S = { scope: Scope.SESSION, scopeId: s.id };
    return [
      { ...S, window: Window.DAY, span: dayUTC, valueUsed: units(30) + plusValue, actionsUsed: 2n + plusActions, valueLimit: units(100), actionLimit: 10n },
      { ...S, window: Window.WEEK, span: weekUTC, valueUsed: plusValue, actionsUsed: plusActions, valueLimit: undefined, actionLimit: undefined },
      { ...S, window: Window.MONTH, span: monthUTC, valueUsed: plusValue, actionsUsed: plusActions, valueLimit: undefined, actionLimit: undefined },
      { ...S, window: Window.LIFETIME, span: undefined, valueUsed: units(500) + plusValue, actionsUsed: 7n + plusActions, valueLimit: units(1000), actionLimit: undefined },
      // The parent has no limits: not reported. The agent: its one limited window.
      { scope: Scope.AGENT, scopeId: a.id, window: Window.WEEK, span: weekUTC, valueUsed: units(3) + plusValue, actionsUsed: 10n + plusActions, valueLimit: undefined, actionLimit: 50n },
    ];
  }

  test("after ALLOW: every session window and every limited window of the others, including the charge", () => {
    const { s, p, a, usage } = setup();
    const ev = run({ scopes: [s, p, a], action: payment(units(25)), usage });
    assertAllowed(ev);
    assert.deepEqual(ev.budgets, expectedBudgets(s, a, units(25), 1n));
  });

  test("after DENY: usage as it was; after NEEDS_APPROVAL: including the held amount", () => {
    const { s, p, a, usage } = setup();
    const denied = run({ scopes: [s, p, a], action: payment(units(70) + 1n), usage });
    assertDenied(denied, [Reason.LIMIT_DAILY_VALUE]);
    assert.deepEqual(denied.budgets, expectedBudgets(s, a, 0n, 0n));
    const a2 = agent({ policy: policy({ weekly: { maxActions: 50n }, requireApprovalAboveMicros: 1n }) });
    const held = run({ scopes: [s, p, a2], action: payment(units(2)), usage });
    assert.equal(held.outcome, Outcome.NEEDS_APPROVAL);
    assert.deepEqual(held.budgets, expectedBudgets(s, a2, units(2), 1n));
  });

  test("a non-monetary action adds an action and no value", () => {
    const { s, p, a, usage } = setup();
    const ev = run({ scopes: [s, p, a], action: toolCall(), usage });
    assertAllowed(ev);
    assert.deepEqual(ev.budgets, expectedBudgets(s, a, 0n, 1n));
  });

  test("budgetsOf reports the same views for the usage given", () => {
    const { s, p, a, usage } = setup();
    const views = budgetsOf([s, p, a], NOW, new CalendarSpanCache(), (k) => usage.lookup(k) ?? { value: 0n, actions: 0n });
    assert.deepEqual(views, expectedBudgets(s, a, 0n, 0n));
  });

  test("budgets use each scope's own calendar", () => {
    const a = agent({ policy: policy({ timeZone: "Asia/Kolkata", daily: { maxActions: 3n } }) });
    const [view] = budgetsOf([a], NOW, new CalendarSpanCache(), () => ({ value: 0n, actions: 0n }));
    // budgetsOf reports every window of the first scope; take its day.
    assert.deepEqual(view?.span, { startMs: local(2026, 7, 15, 0, 0, 5.5), endMs: local(2026, 7, 16, 0, 0, 5.5) });
  });

  test("remaining is never negative when usage is above a lowered limit", () => {
    // The agent's daily limits were lowered to 50 USD / 5 actions after 80 USD / 7 actions.
    const a = agent({ policy: policy({ daily: { maxValueMicros: units(50), maxActions: 5n } }) });
    const usage = new UsageBook().setNow(a, "day", units(80), 7n);
    const ev = run({ scopes: [session(), a], action: payment(units(1)), usage });
    assertDenied(ev, [Reason.LIMIT_DAILY_VALUE, Reason.LIMIT_DAILY_ACTIONS]);
    const agentDay = ev.budgets.find((b) => b.scope === Scope.AGENT && b.window === Window.DAY);
    assert.ok(agentDay);
    assert.equal(agentDay.valueUsed, units(80), "the core reports usage as it is");
    const proto = budgetToProto(agentDay);
    assert.equal(proto.valueRemainingMicros, 0n);
    assert.equal(proto.actionsRemaining, 0n);
    // Within the limit, remaining is limit − used.
    const within = budgetToProto({ ...agentDay, valueUsed: units(20), actionsUsed: 2n });
    assert.equal(within.valueRemainingMicros, units(30));
    assert.equal(within.actionsRemaining, 3n);
    // No limit, no remaining.
    const unlimited = budgetToProto({ ...agentDay, valueLimit: undefined, actionLimit: undefined });
    assert.equal(unlimited.valueRemainingMicros, undefined);
    assert.equal(unlimited.actionsRemaining, undefined);
  });
});

describe("non-monetary actions", () => {
  test("count against action limits only", () => {
    const s = session({ policy: policy({ daily: { maxValueMicros: units(10), maxActions: 3n } }) });
    assertAllowed(run({ scopes: [s], action: toolCall(), usage: new UsageBook().setNow(s, "day", units(10), 2n) }), "value used up, an action left");
    assertDenied(run({ scopes: [s], action: toolCall(), usage: new UsageBook().setNow(s, "day", 0n, 3n) }), [Reason.LIMIT_DAILY_ACTIONS]);
  });

  test("are not denied by a value limit that usage already exceeds", () => {
    // Usage above a limit lowered after the spend (agent policy update, import).
    const a = agent({ policy: policy({ daily: { maxValueMicros: units(50) }, lifetime: { maxValueMicros: units(50) } }) });
    const usage = new UsageBook().setNow(a, "day", units(80), 7n).setNow(a, "lifetime", units(80), 7n);
    assertAllowed(run({ scopes: [session(), a], action: toolCall(), usage }));
    assertDenied(run({ scopes: [session(), a], action: payment(1n), usage }), [Reason.LIMIT_DAILY_VALUE, Reason.LIMIT_LIFETIME_VALUE]);
  });
});

describe("calendar windows in decisions", () => {
  const full = { maxValueMicros: units(100), maxActions: 5n };

  for (const w of ["day", "week", "month"] as const) {
    test(`usage of the previous ${w} does not count now; usage of this ${w} does`, () => {
      const s = session({ policy: windowPolicy(w, full) });
      const previous = new UsageBook().set(s, w, UTC_PREVIOUS_STARTS[w], units(100), 5n);
      assertAllowed(run({ scopes: [s], action: payment(units(100)), usage: previous }));
      const current = new UsageBook().setNow(s, w, units(100), 5n);
      assertDenied(run({ scopes: [s], action: payment(1n), usage: current }), [VALUE_REASON[w], ACTION_REASON[w]]);
    });
  }

  test("at midnight the new day starts empty; a millisecond before, yesterday is full", () => {
    const s = session({ policy: policy({ daily: full }), expireMs: NOW + 7 * DAY });
    const usage = new UsageBook().set(s, "day", UTC_STARTS.day, units(100), 5n);
    const midnight = UTC_STARTS.day + DAY;
    assertAllowed(run({ scopes: [s], action: payment(units(100)), usage, nowMs: midnight }));
    assertDenied(run({ scopes: [s], action: payment(1n), usage, nowMs: midnight - 1 }), [Reason.LIMIT_DAILY_VALUE, Reason.LIMIT_DAILY_ACTIONS]);
  });

  test("windows follow the policy's zone: Berlin's day started at 22:00Z, not at UTC midnight", () => {
    const s = session({ policy: policy({ timeZone: "Europe/Berlin", daily: full }) });
    const berlinDay = local(2026, 7, 15, 0, 0, 2);
    assertDenied(
      run({ scopes: [s], action: payment(1n), usage: new UsageBook().set(s, "day", berlinDay, units(100), 0n) }),
      [Reason.LIMIT_DAILY_VALUE],
    );
    assertAllowed(run({ scopes: [s], action: payment(1n), usage: new UsageBook().set(s, "day", UTC_STARTS.day, units(100), 5n) }));
  });

  test("the agent's windows use the agent's zone", () => {
    const a = agent({ policy: policy({ timeZone: "Asia/Kolkata", daily: { maxActions: 1n } }) });
    const usage = new UsageBook().set(a, "day", local(2026, 7, 15, 0, 0, 5.5), 0n, 1n);
    assertDenied(run({ scopes: [session(), a], action: toolCall(), usage }), [Reason.LIMIT_DAILY_ACTIONS]);
    // 18:30Z is midnight in Kolkata: a new day there.
    assertAllowed(run({ scopes: [session({ expireMs: NOW + DAY }), a], action: toolCall(), usage, nowMs: local(2026, 7, 16, 0, 0, 5.5) }));
  });
});

describe("session lifecycle", () => {
  test("expiry is half-open: at expireMs the session has expired, a millisecond before it has not", () => {
    const s = session({ expireMs: NOW + 1 });
    const before = run({ scopes: [s], action: payment(1n) });
    assertAllowed(before);
    assert.equal(before.expire, undefined);
    const at = run({ scopes: [s], action: payment(1n), nowMs: NOW + 1 });
    assertDenied(at, [Reason.SESSION_EXPIRED]);
    assert.equal(at.expire, "time");
  });

  test("idle timeout: exactly the timeout since the last activity is idle", () => {
    const s = session({ idleTimeoutMs: 10 * MINUTE, lastActivityMs: NOW - 10 * MINUTE + 1 });
    assertAllowed(run({ scopes: [s], action: payment(1n) }));
    const ev = run({ scopes: [s], action: payment(1n), nowMs: NOW + 1 });
    assertDenied(ev, [Reason.SESSION_IDLE_TIMEOUT]);
    assert.equal(ev.expire, "idle");
  });

  test("past both expiry and idle timeout, the expiry is reported", () => {
    const ev = run({ scopes: [session({ expireMs: NOW, idleTimeoutMs: MINUTE, lastActivityMs: NOW - HOUR })], action: payment(1n) });
    assertDenied(ev, [Reason.SESSION_EXPIRED]);
    assert.equal(ev.expire, "time");
  });

  test("a session already marked EXPIRED is denied without asking to expire it again", () => {
    const ev = run({ scopes: [session({ status: SessionStatus.EXPIRED, expireMs: NOW - HOUR })], action: payment(1n) });
    assertDenied(ev, [Reason.SESSION_EXPIRED]);
    assert.equal(ev.expire, undefined);
  });

  test("a paused session past its expiry has expired", () => {
    const ev = run({ scopes: [session({ status: SessionStatus.PAUSED, expireMs: NOW })], action: payment(1n) });
    assertDenied(ev, [Reason.SESSION_EXPIRED]);
    assert.equal(ev.expire, "time");
  });

  test("a terminal session past its expiry keeps its own reason", () => {
    const ev = run({ scopes: [session({ status: SessionStatus.REVOKED, expireMs: NOW - HOUR })], action: payment(1n) });
    assertDenied(ev, [Reason.SESSION_REVOKED]);
    assert.equal(ev.expire, undefined);
  });

  test("no expiry and no idle timeout: never lapses", () => {
    const s = session({ expireMs: undefined, idleTimeoutMs: undefined, lastActivityMs: 0 });
    assertAllowed(run({ scopes: [s], action: payment(1n), nowMs: utc(2099, 1, 1) }));
  });
});

describe("lapse", () => {
  const base = session({ expireMs: undefined, idleTimeoutMs: undefined, lastActivityMs: undefined });

  test("undefined without expiry or idle timeout", () => {
    assert.equal(lapse(base, NOW), undefined);
  });

  test("time at and after expireMs, not before", () => {
    const s = { ...base, expireMs: NOW };
    assert.equal(lapse(s, NOW - 1), undefined);
    assert.equal(lapse(s, NOW), "time");
    assert.equal(lapse(s, NOW + DAY), "time");
  });

  test("idle once idleTimeoutMs has passed since the last activity", () => {
    const s = { ...base, idleTimeoutMs: 5 * MINUTE, lastActivityMs: NOW };
    assert.equal(lapse(s, NOW + 5 * MINUTE - 1), undefined);
    assert.equal(lapse(s, NOW + 5 * MINUTE), "idle");
    assert.equal(lapse({ ...s, lastActivityMs: undefined }, NOW + DAY), undefined, "no activity recorded: no idle clock");
  });

  test("time wins over idle", () => {
    assert.equal(lapse({ ...base, expireMs: NOW, idleTimeoutMs: MINUTE, lastActivityMs: NOW - HOUR }, NOW), "time");
  });

  test("no idle under a paused ancestor, whichever; an agent scope (no status) is no ancestor", () => {
    const s = { ...base, idleTimeoutMs: MINUTE, lastActivityMs: NOW - HOUR };
    assert.equal(lapse(s, NOW, [{ status: SessionStatus.ACTIVE }, { status: SessionStatus.PAUSED }]), undefined);
    assert.equal(lapse(s, NOW, [{ status: SessionStatus.ACTIVE }, {}]), "idle");
    assert.equal(lapse({ ...s, expireMs: NOW }, NOW, [{ status: SessionStatus.PAUSED }]), "time");
  });

  test("waiting on an approval: the idle clock runs from its deadline when that is later than the last activity", () => {
    const s = { ...base, idleTimeoutMs: 5 * MINUTE, lastActivityMs: NOW, awaitingApprovalUntilMs: NOW + HOUR };
    assert.equal(lapse(s, NOW + HOUR + 5 * MINUTE - 1), undefined);
    assert.equal(lapse(s, NOW + HOUR + 5 * MINUTE), "idle");
    assert.equal(lapse({ ...s, awaitingApprovalUntilMs: NOW - HOUR }, NOW + 5 * MINUTE), "idle", "an earlier deadline changes nothing");
    assert.equal(lapse({ ...s, expireMs: NOW + MINUTE }, NOW + MINUTE), "time", "nor does it stop the expiry");
  });
});

describe("isExhausted", () => {
  const committed = (value: bigint, actions: bigint): Totals => ({ value, actions });

  test("lifetime value limit: exhausted once committed reaches it", () => {
    const p = policy({ lifetime: { maxValueMicros: units(100) } });
    assert.equal(isExhausted(p, committed(units(100) - 1n, 1_000n)), false);
    assert.equal(isExhausted(p, committed(units(100), 1n)), true);
    assert.equal(isExhausted(p, committed(units(150), 1n)), true, "above a lowered limit");
  });

  test("lifetime action limit: exhausted once committed actions reach it", () => {
    const p = policy({ lifetime: { maxActions: 5n } });
    assert.equal(isExhausted(p, committed(units(1_000_000), 4n)), false);
    assert.equal(isExhausted(p, committed(0n, 5n)), true);
  });

  test("only committed usage counts: the caller's holds do not exhaust", () => {
    // 60 committed + 40 held would reach 100, but a hold may still be voided.
    const p = policy({ lifetime: { maxValueMicros: units(100), maxActions: 2n } });
    assert.equal(isExhausted(p, committed(units(60), 1n)), false);
  });

  test("window limits and no limits never exhaust a session", () => {
    const windowsOnly = policy({ daily: { maxValueMicros: 1n, maxActions: 1n }, weekly: { maxActions: 1n }, monthly: { maxValueMicros: 1n } });
    assert.equal(isExhausted(windowsOnly, committed(units(1_000), 1_000n)), false);
    assert.equal(isExhausted(EMPTY_POLICY, committed(2n ** 62n, 2n ** 62n)), false);
  });

  test("a zero action limit is exhausted from the start", () => {
    assert.equal(isExhausted(policy({ lifetime: { maxActions: 0n } }), committed(0n, 0n)), true);
  });

  test("a zero value limit does not exhaust: actions without money remain possible", () => {
    // Consistent with evaluate: such a session still allows non-monetary actions.
    const p = policy({ lifetime: { maxValueMicros: 0n } });
    assert.equal(isExhausted(p, committed(0n, 10n)), false);
    assertAllowed(run({ scopes: [session({ policy: p })], action: toolCall() }));
  });
});

describe("purity", () => {
  test("the same inputs give the same answer and usage is not modified", () => {
    const s = session({ policy: policy({ daily: { maxValueMicros: units(100) } }) });
    const usage = new UsageBook().setNow(s, "day", units(10), 1n);
    const snapshot = new Map(usage.map);
    const spans = new CalendarSpanCache();
    const first = run({ scopes: [s, agent()], action: payment(units(5)), usage, spans });
    const second = run({ scopes: [s, agent()], action: payment(units(5)), usage, spans });
    assert.deepEqual(second, first);
    assert.deepEqual(usage.map, snapshot);
    assert.equal(first.message, "allowed");
  });
});
