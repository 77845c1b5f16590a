import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { denialRun, tripThreshold, trips } from "../../src/core/circuit-breaker.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";

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

  test("a count trips at its threshold, never when the breaker is off", () => {
    assert.equal(trips(2, 3), false);
    assert.equal(trips(3, 3), true);
    assert.equal(trips(5n, 3), true);
    assert.equal(trips(1_000, 0), false);
  });
});
