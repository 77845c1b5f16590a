import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { denialRun, tripThreshold, trips } from "../../src/core/circuit-breaker.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { parent, payment, policy, run, session, units } from "./fixtures.js";

describe("circuit breaker", () => {
  test("the lowest threshold set over the scopes trips; 0 is off", () => {
    const p = (pauseAfterDenials: number) => ({ pauseAfterDenials, failAfterErrors: 0 });
    assert.equal(tripThreshold([p(0), p(5), p(3), p(0)], "pauseAfterDenials"), 3);
    assert.equal(tripThreshold([p(0), p(0)], "pauseAfterDenials"), 0);
    assert.equal(tripThreshold([], "failAfterErrors"), 0);
  });

  test("a denial adds one, any other outcome starts over, a denial for the session's state alone changes nothing", () => {
    assert.equal(denialRun(2, Outcome.DENY, [Reason.LIMIT_DAILY_VALUE]), 3);
    assert.equal(denialRun(2, Outcome.DENY, [Reason.SESSION_PAUSED, Reason.LIMIT_PER_TRANSACTION]), 3, "a limit too: the agent's request");
    assert.equal(denialRun(2, Outcome.DENY, [Reason.SESSION_PAUSED]), 2);
    assert.equal(denialRun(2, Outcome.DENY, [Reason.CONTROL_PLANE_UNAVAILABLE]), 2);
    assert.equal(denialRun(2, Outcome.ALLOW, []), 0);
    assert.equal(denialRun(2, Outcome.NEEDS_APPROVAL, [Reason.APPROVAL_REQUIRED]), 0);
  });

  test("a denial for the session's state of an amount above the approval threshold still changes nothing", () => {
    // The engine lists APPROVAL_REQUIRED on such a DENY: what would be asked
    // next, not why. Counted, a paused parent's large amounts paused its forks.
    const names = (rs: readonly Reason[]) => rs.map((r) => Reason[r]).join(",");
    const paused = run({ scopes: [session({ status: SessionStatus.PAUSED, policy: policy({ requireApprovalAboveMicros: units(10) }) })], action: payment(units(50)) });
    assert.equal(names(paused.reasons), "SESSION_PAUSED,APPROVAL_REQUIRED");
    assert.equal(denialRun(2, paused.outcome, paused.reasons), 2);
    const underPaused = run({
      scopes: [session({ policy: policy({ requireApprovalAboveMicros: units(10) }) }), parent("p1", { status: SessionStatus.PAUSED })],
      action: payment(units(50)),
    });
    assert.equal(names(underPaused.reasons), "PARENT_INACTIVE,APPROVAL_REQUIRED");
    assert.equal(denialRun(2, underPaused.outcome, underPaused.reasons), 2);
    assert.equal(denialRun(2, Outcome.DENY, [Reason.LIMIT_DAILY_VALUE, Reason.APPROVAL_REQUIRED]), 3, "a limit: counted");
  });

  test("a count trips at its threshold, never when the breaker is off", () => {
    assert.equal(trips(2, 3), false);
    assert.equal(trips(3, 3), true);
    assert.equal(trips(5n, 3), true);
    assert.equal(trips(1_000, 0), false);
  });
});
