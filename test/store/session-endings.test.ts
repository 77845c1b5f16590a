import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, type AuthorizeResponse, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`session endings and calendars on ${driver}`, () => {
    const suite = storeSuite(driver, "agent-endings");
    const { agent, check, authorize, capture } = suite;

    test("a parent ended by a decision (idle timeout) ends its fork and releases the fork's hold", async () => {
      const parent = await suite.store.createSession(
        sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }, { idleTimeout: durationFromMs(60_000) }),
        NO_HASH,
      );
      const child = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(100) } } }),
        NO_HASH,
      );
      const hold = await authorize(child.sessionId, USD(50));
      assert.equal(hold.decision!.outcome, Outcome.ALLOW);
      // The parent itself sees no activity (the child's does not count), so it goes idle.
      suite.clock.advance(61_000);
      const r = await check(parent.sessionId, USD(1));
      assert.deepEqual(r.decision!.reasons, [Reason.SESSION_IDLE_TIMEOUT]);
      assert.equal((await suite.store.getSession(parent.sessionId)).status, SessionStatus.EXPIRED);
      // README: "Ending a session ends its forks and releases open holds."
      // So the fork's hold can no longer be captured against the ended parent.
      const captured = await capture(child.sessionId, hold.authorizationId).then(
        (rec) => `captured ${rec.capturedAmount?.amountMicros} (${ActionStatus[rec.status]})`,
        (e: unknown) => Code[ConnectError.from(e).code],
      );
      assert.equal(captured, Code[Code.FailedPrecondition], "a fork's hold captured after its parent ended");
      assert.equal(SessionStatus[(await suite.store.getSession(child.sessionId)).status], SessionStatus[SessionStatus.EXPIRED], "the fork ended with its parent");
    });

    test("a capture after the session's expiry time fails, whether or not the sweeper ran first", async () => {
      const s = await suite.store.createSession(
        sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) }, holdTtl: durationFromMs(3_600_000) }, {
          expiration: { case: "ttl", value: durationFromMs(60_000) },
        }),
        NO_HASH,
      );
      const a = await authorize(s.sessionId, USD(40));
      const b = await authorize(s.sessionId, USD(40));
      suite.clock.advance(61_000);
      // No sweep yet: the session's time is up, its holds are not.
      const early = await capture(s.sessionId, a.authorizationId).then(
        (rec) => `captured ${ActionStatus[rec.status]}`,
        (e: unknown) => `${Code[ConnectError.from(e).code]}`,
      );
      await suite.store.sweep();
      const late = await capture(s.sessionId, b.authorizationId).then(
        (rec) => `captured ${ActionStatus[rec.status]}`,
        (e: unknown) => `${Code[ConnectError.from(e).code]}`,
      );
      assert.equal(late, Code[Code.FailedPrecondition], "after the sweep the expired session's hold is gone");
      assert.equal(early, late, "the same capture before the sweep must get the same answer");
    });

    test("approving after the session's expiry fails and gives the held amount back, whether or not the sweeper ran first", async () => {
      const s = await suite.store.createSession(
        sessionRequest(agent(), { requireApprovalAboveMicros: USD(10), lifetime: { maxValueMicros: USD(100) } }, {
          expiration: { case: "ttl", value: durationFromMs(60_000) },
        }),
        NO_HASH,
      );
      const r = await check(s.sessionId, USD(50));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      suite.clock.advance(61_000);
      await assert.rejects(suite.store.approveApproval(r.approvalId, "key_alice", ""), (e: unknown) => {
        const c = ConnectError.from(e);
        return c.code === Code.FailedPrecondition && /session has ended \(EXPIRED\)/.test(c.rawMessage);
      });
      const after = await suite.store.getSession(s.sessionId);
      assert.deepEqual([SessionStatus[after.status], after.usage!.valueCommittedMicros, after.usage!.valueHeldMicros], ["EXPIRED", 0n, 0n]);
    });

    test("a session exhausted by a capture ends its forks", async () => {
      const parent = await suite.store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const child = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }),
        NO_HASH,
      );
      const a = await authorize(parent.sessionId, USD(100));
      await capture(parent.sessionId, a.authorizationId);
      assert.equal((await suite.store.getSession(parent.sessionId)).status, SessionStatus.EXHAUSTED);
      assert.equal(SessionStatus[(await suite.store.getSession(child.sessionId)).status], SessionStatus[SessionStatus.EXHAUSTED], "the fork ended with its parent");
    });

    test("a parent whose lifetime limit a fork used up is EXHAUSTED", async () => {
      const parent = await suite.store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const child = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }),
        NO_HASH,
      );
      assert.equal((await check(child.sessionId, USD(100))).decision!.outcome, Outcome.ALLOW);
      assert.equal(SessionStatus[(await suite.store.getSession(parent.sessionId)).status], SessionStatus[SessionStatus.EXHAUSTED]);
    });
  });

  // Not in the describe above: a calendar change carries the old window's
  // counts into the new one, more than the ledger charged to it (never
  // less), so the books are not expected to balance to the micro here.
  describe(`an agent's calendar changed mid-window, on ${driver}`, () => {
    const suite = storeSuite(driver, "agent-calendar", { ledgerCheck: false });
    const { agent, check } = suite;

    test("an agent policy moved to another time zone mid-day still counts the day's spend", async () => {
      // 12:00 UTC = 07:00 in New York (EST): the New York day began at 05:00 UTC.
      suite.clock.advance(Date.UTC(2026, 10, 23, 12, 0, 0) - suite.clock.now());
      const id = agent();
      await suite.store.updateAgentPolicy(
        create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } } }),
      );
      const s = await suite.store.createSession(sessionRequest(id, {}), NO_HASH);
      assert.equal((await check(s.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(60_000);
      await suite.store.updateAgentPolicy(
        create(UpdateAgentPolicyRequestSchema, {
          agentId: id,
          policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: "America/New_York" },
        }),
      );
      // The 80 spent at 12:00 UTC lies inside today's New York day too.
      const r = await check(s.sessionId, USD(80));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], "160 spent in one New York day against a daily limit of 100");
    });
  });
}
