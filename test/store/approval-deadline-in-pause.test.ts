import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ApprovalStatus } from "../../src/gen/warden/v1/approval_service_pb.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ApprovalTimeoutOutcome } from "../../src/gen/warden/v1/policy_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`approval timeouts whose deadline fell in a pause, on ${driver}`, () => {
    const suite = storeSuite(driver, "pause-deadline");
    const { agent, authorize } = suite;
    const policy = {
      requireApprovalAboveMicros: USD(100),
      daily: { maxValueMicros: USD(300) },
      approvalTtl: durationFromMs(60_000),
      approvalTimeoutOutcome: ApprovalTimeoutOutcome.APPROVE,
    };

    test("an approval whose deadline passed while its session was paused is not approved on timeout once the session is resumed before the sweep", async () => {
      const s = await suite.store.createSession(sessionRequest(agent(), policy), NO_HASH);
      const r = await authorize(s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      // A person stops the agent; the approval's deadline passes while it is stopped.
      await suite.store.setPaused(s.sessionId, true, "stop");
      suite.clock.advance(60_000);
      // Nobody (sweeper, watcher) applied the timeout yet; the person resumes.
      suite.clock.advance(500);
      await suite.store.setPaused(s.sessionId, false, "go on");
      // The sweep (or a late watcher) now applies the timeout of a deadline
      // that passed while the session was paused: it must not approve.
      await suite.store.sweep();
      const a = await suite.store.getApproval(r.approvalId);
      assert.equal(
        ApprovalStatus[a.status],
        "EXPIRED",
        `the deadline passed while the session was paused, yet the clock ${ApprovalStatus[a.status]} it (${a.decidedBy}: ${a.comment})`,
      );
    });

    test("the same for a fork whose parent was paused at the fork's approval deadline", async () => {
      const parent = await suite.store.createSession(sessionRequest(agent(), policy), NO_HASH);
      const fork = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", ...policy } }), NO_HASH);
      const r = await authorize(fork.sessionId, USD(120));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      await suite.store.setPaused(parent.sessionId, true, "stop the parent");
      suite.clock.advance(60_500);
      await suite.store.setPaused(parent.sessionId, false, "go on");
      await suite.store.expireApproval(r.approvalId);
      const a = await suite.store.getApproval(r.approvalId);
      assert.equal(ApprovalStatus[a.status], "EXPIRED", `the parent was paused at the deadline, yet the clock ${ApprovalStatus[a.status]} it`);
    });
  });
}
