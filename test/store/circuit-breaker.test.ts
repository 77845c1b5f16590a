import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, type AuthorizeResponse, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`circuit breaker on ${driver}`, () => {
    const suite = storeSuite(driver, "breaker-agent");
    const { agent } = suite;

    /** A sidecar's lease of a session, to report its decisions against. */
    const leaseOf = async (sessionId: string) =>
      (await suite.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId, holder: "sidecar-1", desiredValueMicros: USD(50), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      ))!;
    /** A decision a sidecar made `atMs` after now: 1 USD when allowed, 20 (over the limit) when denied. */
    const record = (outcome: Outcome, atMs: number) =>
      create(LeaseRecordSchema, {
        actionId: newId("act", suite.clock.ms + atMs),
        method: "check",
        action: payment(outcome === Outcome.ALLOW ? USD(1) : USD(20)),
        decision: create(DecisionSchema, { outcome, message: "x" }),
        createTime: timestampFromMs(suite.clock.ms + atMs),
        processingNanos: 1000n,
      });

    /** A sidecar's report of decisions it made from `lease`. */
    const reportTo = (sessionId: string, lease: { leaseId: string }, records: ReturnType<typeof record>[]) =>
      suite.store.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId, leaseId: lease.leaseId, records })] }));

    /** A session that denies anything above 10 USD a call. */
    const session = (breaker: { pauseAfterDenialsInARow?: number; failAfterErrors?: number }, agentId = agent()) =>
      suite.store.createSession(sessionRequest(agentId, { maxPerTransactionMicros: USD(10), circuitBreaker: breaker }), NO_HASH);
    const check = async (sessionId: string, amount: bigint) =>
      ((await suite.store.decide({ method: "check", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH })) as CheckResponse).decision!;
    const status = async (sessionId: string) => {
      const s = await suite.store.getSession(sessionId);
      return [SessionStatus[s.status], s.statusReason];
    };
    const events = async (sessionId: string) =>
      (await suite.t.db.query<{ type: string; data: { reason?: string } }>("SELECT type, data FROM events WHERE session_id = $1 ORDER BY seq", [sessionId])).rows.map(
        (r) => `${r.type}${r.data.reason === undefined ? "" : `: ${r.data.reason}`}`,
      );

    test("denials in a row pause an active session; any other outcome starts the count over", async () => {
      const s = await session({ pauseAfterDenialsInARow: 3 });
      for (const amount of [USD(20), USD(20), USD(5), USD(20), USD(20)]) await check(s.sessionId, amount);
      assert.deepEqual(await status(s.sessionId), ["ACTIVE", ""], "an ALLOW broke the run: two in a row");
      const third = await check(s.sessionId, USD(20));
      assert.equal(third.outcome, Outcome.DENY);
      assert.deepEqual(await status(s.sessionId), ["PAUSED", "circuit breaker: 3 denials in a row"]);
      const after = await check(s.sessionId, USD(5));
      assert.equal(after.outcome, Outcome.DENY, "a paused session spends nothing");
      assert.deepEqual(after.reasons, [Reason.SESSION_PAUSED]);
      assert.deepEqual((await events(s.sessionId)).slice(1), ["session.paused: circuit breaker: 3 denials in a row"]);
      // A person resumes it, and the count starts over.
      await suite.store.setPaused(s.sessionId, false, "looked into it");
      await check(s.sessionId, USD(20));
      await check(s.sessionId, USD(20));
      assert.deepEqual(await status(s.sessionId), ["ACTIVE", "looked into it"]);
      assert.equal((await check(s.sessionId, USD(5))).outcome, Outcome.ALLOW);
    });

    test("in one batch, the calls after the tripping denial find the session paused", async () => {
      const s = await session({ pauseAfterDenialsInARow: 2 });
      const outcomes = await Promise.all(Array.from({ length: 6 }, () => check(s.sessionId, USD(20))));
      assert.ok(outcomes.every((d) => d.outcome === Outcome.DENY));
      const paused = outcomes.filter((d) => d.reasons.includes(Reason.SESSION_PAUSED)).length;
      assert.equal(paused, 4, "two over the per-transaction limit, then paused");
      assert.deepEqual(await status(s.sessionId), ["PAUSED", "circuit breaker: 2 denials in a row"]);
      assert.equal((await events(s.sessionId)).filter((e) => e.startsWith("session.paused")).length, 1);
    });

    test("an agent's breaker applies to each of its sessions, and the lowest threshold trips first", async () => {
      const agentId = agent();
      const own = await session({ pauseAfterDenialsInARow: 5 }, agentId);
      const none = await session({}, agentId);
      await suite.store.updateAgentPolicy(
        create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", circuitBreaker: { pauseAfterDenialsInARow: 2 } } }),
      );
      for (const id of [own.sessionId, none.sessionId]) {
        await check(id, USD(20));
        assert.deepEqual((await status(id))[0], "ACTIVE");
        await check(id, USD(20));
        assert.deepEqual(await status(id), ["PAUSED", "circuit breaker: 2 denials in a row"]);
      }
    });

    test("without a breaker, denials never pause", async () => {
      const s = await session({});
      for (let i = 0; i < 20; i++) await check(s.sessionId, USD(20));
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
    });

    test("failed requests up to fail_after_errors end the session as FAILED, releasing its holds", async () => {
      const s = await session({ failAfterErrors: 2 });
      const hold = (await suite.store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(4)), idempotencyKey: "", requestHash: NO_HASH })) as AuthorizeResponse;
      assert.equal(hold.decision!.outcome, Outcome.ALLOW);
      await suite.store.recordError(s.sessionId);
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
      await suite.store.recordError(s.sessionId);
      assert.deepEqual(await status(s.sessionId), ["FAILED", "circuit breaker: 2 failed requests"]);
      const { rows } = await suite.t.db.query<{ status: number }>("SELECT status FROM actions WHERE action_id = $1", [hold.authorizationId]);
      assert.equal(rows[0]!.status, ActionStatus.VOIDED, "its hold went back");
      assert.ok((await events(s.sessionId)).includes("session.failed: circuit breaker: 2 failed requests"));
      // Later errors count, and change nothing.
      await suite.store.recordError(s.sessionId);
      assert.equal((await suite.store.getSession(s.sessionId)).usage!.errorCount, 3n);
      assert.deepEqual((await status(s.sessionId))[0], "FAILED");
    });

    test("a sidecar's report that trips the breaker pauses with the run that tripped it", async () => {
      const s = await suite.store.createSession(sessionRequest(agent(), { maxPerTransactionMicros: USD(10), circuitBreaker: { pauseAfterDenialsInARow: 3 } }), NO_HASH);
      const lease = await leaseOf(s.sessionId);
      // Three denials in a row (the store would have paused here), then an
      // ALLOW the sidecar made before it heard of the pause.
      await suite.store.leases.report(
        create(ReportLeasesRequestSchema, {
          holder: "sidecar-1",
          reports: [
            create(LeaseReportSchema, {
              sessionId: s.sessionId,
              leaseId: lease.leaseId,
              records: [record(Outcome.DENY, 1), record(Outcome.DENY, 2), record(Outcome.DENY, 3), record(Outcome.ALLOW, 4)],
            }),
          ],
        }),
      );
      const after = await suite.store.getSession(s.sessionId);
      assert.deepEqual([SessionStatus[after.status], after.statusReason], ["PAUSED", "circuit breaker: 3 denials in a row"]);
    });

    test("denials a sidecar made before a person resumed the session, reported after, belong to the run before and trip nothing", async () => {
      const s = await session({ pauseAfterDenialsInARow: 3 });
      const lease = await leaseOf(s.sessionId);
      const report = (...records: ReturnType<typeof record>[]) => reportTo(s.sessionId, lease, records);
      await suite.store.setPaused(s.sessionId, true, "look");
      suite.clock.advance(1_000);
      await suite.store.setPaused(s.sessionId, false, "go on");
      // Made in the second before the resume, while the sidecar had not heard of the pause.
      await report(record(Outcome.DENY, -900), record(Outcome.DENY, -800), record(Outcome.DENY, -700));
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
      await report(record(Outcome.DENY, 1), record(Outcome.DENY, 2), record(Outcome.DENY, 3));
      assert.deepEqual(await status(s.sessionId), ["PAUSED", "circuit breaker: 3 denials in a row"]);
    });

    test("a sidecar's reported denials count too, in the order they were made", async () => {
      const s = await session({ pauseAfterDenialsInARow: 3 });
      const lease = await leaseOf(s.sessionId);
      const report = (...records: ReturnType<typeof record>[]) => reportTo(s.sessionId, lease, records);
      // Sent out of order; made as DENY, ALLOW, DENY, DENY: a run of two.
      await report(record(Outcome.DENY, 3), record(Outcome.DENY, 1), record(Outcome.ALLOW, 2), record(Outcome.DENY, 4));
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
      const fifth = record(Outcome.DENY, 5);
      await report(fifth);
      assert.deepEqual(await status(s.sessionId), ["PAUSED", "circuit breaker: 3 denials in a row"]);
      assert.deepEqual((await events(s.sessionId)).slice(1), ["session.paused: circuit breaker: 3 denials in a row"]);
      // A retried report counts nothing twice.
      await suite.store.setPaused(s.sessionId, false, "resumed");
      await report(fifth);
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
      const { rows } = await suite.t.db.query<{ denial_run: number }>("SELECT denial_run FROM sessions WHERE session_id = $1", [s.sessionId]);
      assert.equal(rows[0]!.denial_run, 0);
      // The agent kept calling while the session was paused: its sidecar
      // denied for the pause, and those reports land after a resume. They
      // are about the session's state, not the agent's requests: they
      // neither count nor break a run, or a resume would trip it again.
      await suite.store.setPaused(s.sessionId, true, "look");
      const paused = (atMs: number) => {
        const r = record(Outcome.DENY, atMs);
        r.decision = create(DecisionSchema, { outcome: Outcome.DENY, reasons: [Reason.SESSION_PAUSED], message: "paused" });
        return r;
      };
      await suite.store.setPaused(s.sessionId, false, "resumed");
      await report(paused(6), paused(7), paused(8), paused(9));
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE");
      await report(record(Outcome.DENY, 10), paused(11), record(Outcome.DENY, 12));
      assert.deepEqual((await status(s.sessionId))[0], "ACTIVE", "a run of two, the pause denial between them aside");
      await report(record(Outcome.DENY, 13));
      assert.deepEqual(await status(s.sessionId), ["PAUSED", "circuit breaker: 3 denials in a row"]);
    });
  });
}
