// The idle clock as the sweeper and replicas see it.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { DRIVERS } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const MIN = 60_000;

for (const driver of DRIVERS) {
  describe(`the idle clock on ${driver}`, () => {
    const suite = storeSuite(driver, "sweep-idle");

    test("the sweeper expires a session that went idle after its agent's approval was decided before its deadline", async () => {
      const s = await suite.store.createSession(
        sessionRequest(
          suite.agent(),
          { requireApprovalAboveMicros: USD(100), approvalTtl: durationFromMs(15 * MIN), holdTtl: durationFromMs(60 * MIN) },
          { idleTimeout: durationFromMs(MIN) },
        ),
        NO_HASH,
      );
      // An ordinary hold (1 hour TTL), and a request that waits on a person (15 minutes).
      const hold = await suite.authorize(s.sessionId, USD(10));
      assert.equal(hold.decision!.outcome, Outcome.ALLOW);
      const asked = await suite.authorize(s.sessionId, USD(150));
      assert.equal(asked.decision!.outcome, Outcome.NEEDS_APPROVAL);
      // A sweep after the idle timeout: the session waits on the approval, so it
      // is live; the sweeper moves its idle check time to deadline + idle timeout.
      suite.clock.advance(MIN + 1_000);
      await suite.store.sweep();
      assert.equal(SessionStatus[(await suite.store.getSession(s.sessionId)).status], "ACTIVE");
      // The person denies it 10 s later: the wait is over, the idle clock starts now.
      suite.clock.advance(10_000);
      await suite.store.denyApproval(asked.approvalId, "key_alice", "no");
      // The agent does nothing more. 5 minutes later (idle timeout 1 minute) the
      // session has been idle for 4 minutes; the sweeper should have ended it and
      // given its hold back.
      suite.clock.advance(5 * MIN);
      await suite.store.sweep();
      const got = await suite.store.getSession(s.sessionId);
      const actions = await suite.store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      const h = actions.actions.find((a) => a.actionId === hold.authorizationId)!;
      assert.deepEqual(
        [SessionStatus[got.status], got.statusReason, ActionStatus[h.status]],
        ["EXPIRED", "idle timeout", "EXPIRED"],
        "a session idle for 4 minutes past its 1-minute idle timeout is still ACTIVE after a sweep, its hold still held",
      );
    });
  });

  describe(`replicas whose clocks differ, on ${driver}`, () => {
    const suite = storeSuite(driver, "sweep-skew");

    test("a decision on a replica whose clock lags does not move the session's last activity back (it would idle early)", async () => {
      // A second replica on the same database, its clock 2 minutes behind.
      const lagging = new ManualClock(suite.clock.ms - 2 * MIN);
      const replica = createWardenStore({ db: suite.t.db, now: lagging.now });
      const s = await suite.store.createSession(sessionRequest(suite.agent(), {}, { idleTimeout: durationFromMs(3 * MIN) }), NO_HASH);
      const decideOn = (store: typeof replica, id: string) =>
        store.decide({ method: "check", sessionId: id, action: payment(USD(1)), idempotencyKey: "", requestHash: NO_HASH }) as Promise<CheckResponse>;
      // t = 0: a call on the first replica. t = 1 min: a call on the lagging one.
      assert.equal((await decideOn(suite.store, s.sessionId)).decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(MIN);
      lagging.advance(MIN);
      assert.equal((await decideOn(replica, s.sessionId)).decision!.outcome, Outcome.ALLOW);
      // The lagging replica stamped its call 1 minute before the first
      // one's (its clock says so); the store keeps the later of the two.
      // t = 2 min 30 s: 2 min 30 s after the last activity the store knows,
      // under the 3-minute idle timeout. (Taken back to the lagging stamp,
      // it would be 3 min 30 s: idle.)
      suite.clock.advance(MIN + 30_000);
      lagging.advance(MIN + 30_000);
      const r = await decideOn(suite.store, s.sessionId);
      assert.equal(
        Outcome[r.decision!.outcome],
        "ALLOW",
        `a session last active 2.5 minutes ago (idle timeout 3) was refused: ${r.decision!.message}; status ${SessionStatus[(await suite.store.getSession(s.sessionId)).status]}`,
      );
    });
  });
}

