import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { DecisionSchema, Outcome, Reason, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { LAPSED_SESSIONS_SQL } from "../../src/store/warden-store.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const outcome = (p: Promise<unknown>) =>
  p.then(
    (r) => `ok ${ActionStatus[(r as { status: ActionStatus }).status] ?? ""}`,
    (e: unknown) => Code[ConnectError.from(e).code],
  );
const code = (p: Promise<unknown>) =>
  p.then(
    (r) => `ok ${ActionStatus[(r as { status: ActionStatus }).status] ?? ""}`,
    (e: unknown) => `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).rawMessage}`,
  );

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

    test("a fork's hold cannot be captured once its parent has lapsed (idle), whether or not the sweeper ran", async () => {
      const mk = async () => {
        const parent = await suite.store.createSession(
          sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) }, holdTtl: durationFromMs(3_600_000) }, { idleTimeout: durationFromMs(60_000) }),
          NO_HASH,
        );
        const child = await suite.store.forkSession(
          create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", holdTtl: durationFromMs(3_600_000) } }),
          NO_HASH,
        );
        const hold = await authorize(child.sessionId, USD(50));
        assert.equal(hold.decision!.outcome, Outcome.ALLOW);
        return { parent, child, hold };
      };
      const a = await mk();
      const b = await mk();
      // The parents see no activity of their own (a fork's does not count), so they go idle.
      suite.clock.advance(61_000);
      // a: nobody swept yet.
      const early = await outcome(capture(a.child.sessionId, a.hold.authorizationId));
      // b: the sweeper got there first: parent and fork EXPIRED, the hold released.
      await suite.store.sweep();
      const late = await outcome(capture(b.child.sessionId, b.hold.authorizationId));
      assert.equal(late, Code[Code.FailedPrecondition]);
      const pa = await suite.store.getSession(a.parent.sessionId);
      assert.equal(early, late, `the same capture before the sweep must get the same answer (parent a: ${SessionStatus[pa.status]}, committed ${pa.usage!.valueCommittedMicros})`);
    });

    test("deciding an approval of a REVOKED session after its expiry time leaves it REVOKED", async () => {
      const s = await suite.store.createSession(
        sessionRequest(agent(), { requireApprovalAboveMicros: USD(10) }, { expiration: { case: "ttl", value: durationFromMs(60_000) } }),
        NO_HASH,
      );
      const r = await check(s.sessionId, USD(50));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      await suite.store.terminate(s.sessionId, SessionStatus.REVOKED, "stolen key");
      suite.clock.advance(61_000);
      // The approval was canceled when the session ended: deciding it again fails.
      const answer = await code(suite.store.approveApproval(r.approvalId, "key_alice", ""));
      const after = await suite.store.getSession(s.sessionId);
      const ends = (await suite.t.db.query<{ type: string }>("SELECT type FROM events WHERE session_id = $1 AND type LIKE 'session.%' ORDER BY seq", [s.sessionId])).rows.map((e) => e.type);
      assert.deepEqual(
        [SessionStatus[after.status], after.statusReason, ends],
        ["REVOKED", "stolen key", ["session.created", "session.revoked"]],
        `a terminal status changed (approve answered: ${answer})`,
      );
      assert.match(answer, /^FailedPrecondition: .*already CANCELED/);
    });

    test("a sidecar hold reported after its session was revoked cannot be captured at the control plane", async () => {
      const s = await suite.store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const lease = (await suite.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-1", desiredValueMicros: USD(40), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      ))!;
      assert.ok(lease !== undefined);
      // The sidecar authorizes from its lease, then the session is revoked
      // before its report reaches the store.
      const actionId = newId("act", suite.clock.ms);
      const record = create(LeaseRecordSchema, {
        actionId,
        method: "authorize",
        action: payment(USD(20)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
        createTime: timestampFromMs(suite.clock.ms),
        holdExpireTime: timestampFromMs(suite.clock.ms + 15 * 60_000),
        processingNanos: 1000n,
      });
      suite.clock.advance(10);
      await suite.store.terminate(s.sessionId, SessionStatus.REVOKED, "revoked");
      suite.clock.advance(10);
      await suite.store.leases.report(
        create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: lease.leaseId, records: [record] })] }),
      );
      // README: "later calls on an ended session fail with FAILED_PRECONDITION".
      const answer = await code(suite.store.capture({ sessionId: s.sessionId, authorizationId: actionId, idempotencyKey: "" } as never, NO_HASH));
      const after = await suite.store.getSession(s.sessionId);
      assert.match(answer, /^FailedPrecondition/, `capture on a REVOKED session; committed now ${after.usage!.valueCommittedMicros}`);
    });

    test("a fork's decision after its parent went idle ends the parent, and the fork with it, without the sweeper", async () => {
      const parent = await suite.store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(60_000) }), NO_HASH);
      const child = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const hold = await authorize(child.sessionId, USD(5));
      suite.clock.advance(61_000);
      const r = await check(child.sessionId, USD(1));
      assert.deepEqual(r.decision!.reasons, [Reason.PARENT_INACTIVE]);
      const p = await suite.store.getSession(parent.sessionId);
      assert.deepEqual([SessionStatus[p.status], p.statusReason], ["EXPIRED", "idle timeout"]);
      const f = await suite.store.getSession(child.sessionId);
      assert.deepEqual([SessionStatus[f.status], f.usage!.valueHeldMicros], ["EXPIRED", 0n], "the fork ended with it, its hold released");
      assert.match(await code(capture(child.sessionId, hold.authorizationId)), /^FailedPrecondition/);
    });

    test("no fork under a grandparent that ended or went idle, though its own parent has not been ended yet", async () => {
      const root = await suite.store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(60_000) }), NO_HASH);
      const fork = (parentSessionId: string) => suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const child = await fork(root.sessionId);
      suite.clock.advance(61_000);
      assert.equal(
        await code(fork(child.sessionId)),
        `FailedPrecondition: parent_session_id: session "${child.sessionId}" is not active (its parent "${root.sessionId}" is not)`,
      );
    });

    test("revoking a session past its expiry ends it EXPIRED, with its forks, and says so, whether or not the sweeper ran first", async () => {
      const s = await suite.store.createSession(
        sessionRequest(agent(), {}, { expiration: { case: "ttl", value: durationFromMs(60_000) } }),
        NO_HASH,
      );
      const child = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: s.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      suite.clock.advance(61_000);
      assert.equal(await code(suite.store.terminate(s.sessionId, SessionStatus.REVOKED, "stop")), `FailedPrecondition: session_id: session "${s.sessionId}" has already ended (EXPIRED)`);
      for (const id of [s.sessionId, child.sessionId]) assert.equal(SessionStatus[(await suite.store.getSession(id)).status], "EXPIRED");
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

    test("a lapse found by a decision expires the session's holds exactly as the sweeper does (EXPIRED, authorization.expired)", async () => {
      const withHold = async () => {
        const s = await suite.store.createSession(sessionRequest(agent(), { holdTtl: durationFromMs(3_600_000) }, { idleTimeout: durationFromMs(60_000) }), NO_HASH);
        assert.equal((await authorize(s.sessionId, USD(5))).decision!.outcome, Outcome.ALLOW);
        return s.sessionId;
      };
      const byDecision = await withHold();
      const bySweep = await withHold();
      suite.clock.advance(61_000);
      assert.deepEqual((await check(byDecision, USD(1))).decision!.reasons, [Reason.SESSION_IDLE_TIMEOUT]);
      await suite.store.sweep();
      const record = async (sessionId: string) => {
        const { actions } = await suite.store.listActions({ sessionId, pageSize: 10, pageToken: "" } as never);
        const { rows } = await suite.t.db.query<{ type: string }>("SELECT type FROM events WHERE session_id = $1 AND type LIKE 'authorization.%' ORDER BY seq", [sessionId]);
        const s = await suite.store.getSession(sessionId);
        return { session: SessionStatus[s.status], reason: s.statusReason, hold: ActionStatus[actions.find((a) => a.method === "authorize")!.status], events: rows.map((r) => r.type) };
      };
      const swept = await record(bySweep);
      assert.deepEqual(swept, { session: "EXPIRED", reason: "idle timeout", hold: "EXPIRED", events: ["authorization.expired"] });
      assert.deepEqual(await record(byDecision), swept);
    });

    test("a paused session does not idle: a pause longer than the idle timeout can be resumed, and the resume restarts the idle clock", async () => {
      const s = await suite.store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(15 * 60_000) }), NO_HASH);
      suite.clock.advance(10 * 60_000);
      await suite.store.setPaused(s.sessionId, true, "a person looks into it");
      // The agent obeys the pause and sends nothing; the person takes 20 minutes.
      suite.clock.advance(20 * 60_000);
      await suite.store.sweep();
      assert.equal(SessionStatus[(await suite.store.getSession(s.sessionId)).status], "PAUSED");
      assert.equal(SessionStatus[(await suite.store.setPaused(s.sessionId, false, "")).status], "ACTIVE");
      // 14 minutes after the resume the session is still live; 15 after, idle.
      suite.clock.advance(14 * 60_000);
      await suite.store.sweep();
      assert.equal((await check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(15 * 60_000);
      await suite.store.sweep();
      const ended = await suite.store.getSession(s.sessionId);
      assert.deepEqual([SessionStatus[ended.status], ended.statusReason], ["EXPIRED", "idle timeout"]);
    });

    test("nor do the forks of a paused session, whose calls are denied meanwhile: its resume restarts their idle clocks too", async () => {
      const parent = await suite.store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const fork = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" }, idleTimeout: durationFromMs(60_000) }),
        NO_HASH,
      );
      const grandchild = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: fork.sessionId, policy: { currencyCode: "USD" }, idleTimeout: durationFromMs(60_000) }),
        NO_HASH,
      );
      const other = await suite.store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" }, idleTimeout: durationFromMs(60_000) }),
        NO_HASH,
      );
      const statuses = async () =>
        Promise.all([fork, grandchild].map(async (x) => {
          const got = await suite.store.getSession(x.sessionId);
          return `${SessionStatus[got.status]} ${got.statusReason}`.trim();
        }));
      assert.equal((await check(fork.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      await suite.store.setPaused(parent.sessionId, true, "a person looks into it");
      // The forks' agents stop as told; the person takes 5 minutes.
      suite.clock.advance(5 * 60_000);
      await suite.store.sweep();
      // The sweeper does not even pick them (which would cost a transaction each, every sweep).
      const picked = await suite.t.db.query<{ session_id: string }>(LAPSED_SESSIONS_SQL, [new Date(suite.clock.now()).toISOString(), 500]);
      assert.deepEqual(picked.rows.filter((r) => r.session_id === fork.sessionId || r.session_id === grandchild.sessionId), []);
      // Nor has one lapsed when it is ended meanwhile: it ends as asked.
      assert.equal(SessionStatus[(await suite.store.terminate(other.sessionId, SessionStatus.COMPLETED, "done")).status], "COMPLETED");
      // A call of the grandchild, whose parent (the fork) is idle but for
      // the pause above it, ends neither.
      for (const x of [grandchild, fork]) {
        const denied = await check(x.sessionId, USD(1));
        assert.deepEqual(denied.decision!.reasons.map((r) => Reason[r]), ["PARENT_INACTIVE"]);
      }
      assert.deepEqual(await statuses(), ["ACTIVE", "ACTIVE"]);
      await suite.store.setPaused(parent.sessionId, false, "all good");
      // Their idle clocks start at the resume: 59 s later both are live, 60 s later both idle.
      suite.clock.advance(59_000);
      await suite.store.sweep();
      assert.deepEqual(await statuses(), ["ACTIVE", "ACTIVE"]);
      suite.clock.advance(1_000);
      await suite.store.sweep();
      assert.deepEqual(await statuses(), ["EXPIRED idle timeout", "EXPIRED idle timeout"]);
    });
  });

  describe(`a day of 22 hours, on ${driver}`, () => {
    const suite = storeSuite(driver, "short-day");

    test("the day after Antarctica/Troll's 22-hour DST day starts from zero", async () => {
      // 29 March 2026 in Troll: from 00:00 UTC (GMT) to 22:00 UTC (00:00 at UTC+2).
      suite.clock.advance(Date.UTC(2026, 2, 29, 12, 0, 0) - suite.clock.now());
      const s = await suite.store.createSession(
        sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) }, timeZone: "Antarctica/Troll" }, { expiration: { case: "ttl", value: durationFromMs(86_400_000) } }),
        NO_HASH,
      );
      assert.equal((await suite.check(s.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      // 22:30 UTC: 00:30 on 30 March there.
      suite.clock.advance(Date.UTC(2026, 2, 29, 22, 30, 0) - suite.clock.now());
      const r = await suite.check(s.sessionId, USD(80));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.ALLOW], `a new day: ${r.decision!.message}`);
      const day = (await suite.store.getSession(s.sessionId)).usage!.windows.find((w) => w.window === Window.DAY)!;
      assert.equal(day.valueUsedMicros, USD(80));
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

    test("an agent policy moved east: the new calendar's day begins at once, and rolls over at its own midnight", async () => {
      // 10:00 UTC on 6 December: 19:00 in Tokyo, whose day began at 15:00 UTC on the 5th.
      suite.clock.advance(Date.UTC(2026, 11, 6, 10, 0, 0) - suite.clock.now());
      const id = agent();
      const policy = (timeZone: string) => create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone } });
      await suite.store.updateAgentPolicy(policy(""));
      const s = await suite.store.createSession(sessionRequest(id, {}, { expiration: { case: "ttl", value: durationFromMs(86_400_000) } }), NO_HASH);
      assert.equal((await check(s.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(60_000);
      await suite.store.updateAgentPolicy(policy("Asia/Tokyo"));
      // The 80 lies in Tokyo's 6 December too.
      assert.equal(Outcome[(await check(s.sessionId, USD(30))).decision!.outcome], Outcome[Outcome.DENY]);
      assert.equal((await check(s.sessionId, USD(10))).decision!.outcome, Outcome.ALLOW);
      // 15:30 UTC: 00:30 on 7 December in Tokyo. Nothing was spent in it yet.
      suite.clock.advance(Date.UTC(2026, 11, 6, 15, 30, 0) - suite.clock.now());
      const r = await check(s.sessionId, USD(80));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.ALLOW], `Tokyo's 7 December has spent nothing: ${r.decision!.message}`);
    });

    test("End, Revoke, Extend and Pause of a fork whose parent went idle fail and end both EXPIRED, whether or not the sweeper ran first", async () => {
      const results: string[] = [];
      for (const call of [
        (id: string) => suite.store.terminate(id, SessionStatus.REVOKED, "stop"),
        (id: string) => suite.store.terminate(id, SessionStatus.COMPLETED, "done"),
        (id: string) => suite.store.extendSession({ sessionId: id, extension: { case: "extendBy", value: durationFromMs(60_000) } } as never),
        (id: string) => suite.store.setPaused(id, true, "hold on"),
      ]) {
        const parent = await suite.store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(600_000) }), NO_HASH);
        const fork = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
        const grandchild = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: fork.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
        suite.clock.advance(600_000);
        // The fork itself was busy; its parent was not.
        const answer = await code(call(fork.sessionId));
        const statuses = await Promise.all([parent, fork, grandchild].map(async (x) => SessionStatus[(await suite.store.getSession(x.sessionId)).status]));
        results.push(`${answer.replace(/"[^"]+"/g, "S")} → ${statuses.join(" ")}`);
      }
      assert.deepEqual(results, Array(4).fill('FailedPrecondition: session_id: session S has ended with its parent S (EXPIRED) → EXPIRED EXPIRED EXPIRED'));
    });
  });
}
