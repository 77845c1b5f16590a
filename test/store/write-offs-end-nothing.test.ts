// What the store writes off (a cut-off sidecar's unreported lease, its
// holds closed without word) counts as spent, so it limits every decision;
// but it may come back, so on its own it never ends a session EXHAUSTED:
// not at the sweep, not at the next report that names the session (before,
// any report did), not at a decision through the store that reaches the
// limit only with it, not when it is a fork's, counted in its parent's
// lifetime (hold-ledger.ts, usedUpWithoutWriteOffs).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { AcquireLeaseRequestSchema, type Lease, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const RECONCILE_GRACE_MS = 10_000;

for (const driver of DRIVERS) {
  describe(`write-offs end no session on their own, on ${driver}`, () => {
    const suite = storeSuite(driver, "agent-wo");
    const acquire = (sessionId: string, holder: string, desired: bigint, ttlMs: number) =>
      suite.store.leases.acquire(create(AcquireLeaseRequestSchema, { sessionId, holder, desiredValueMicros: desired, desiredActions: 100n, minValueMicros: 1n, ttl: durationFromMs(ttlMs) }));
    const report = (holder: string, sessionId: string, lease: Lease | undefined, init: Record<string, unknown>) =>
      suite.store.leases.report(create(ReportLeasesRequestSchema, { holder, reports: [create(LeaseReportSchema, { sessionId, leaseId: lease?.leaseId ?? "", ...init })] }));
    /** A lease of 40 to sidecar-1, cut off past its expiry and the grace: the sweeper writes it off. */
    const writtenOffLease = async (sessionId: string) => {
      const l = (await acquire(sessionId, "sidecar-1", USD(40), 5_000))!;
      assert.equal(l.valueMicros, USD(40));
      suite.clock.advance(5_000 + RECONCILE_GRACE_MS);
      assert.equal((await suite.store.sweep()).leases.leases, 1);
      return l;
    };

    test("a report that only records a denial does not end a session EXHAUSTED on a lease write-off alone", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, "sidecar-1", USD(80), 5_000))!;
      assert.equal(l.valueMicros, USD(50));
      assert.equal((await suite.check(s.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      // sidecar-1 is cut off past its lease's expiry and the grace: written off.
      suite.clock.advance(5_000 + RECONCILE_GRACE_MS);
      assert.equal((await suite.store.sweep()).leases.leases, 1);
      assert.equal(SessionStatus[(await suite.store.getSession(s.sessionId)).status], "ACTIVE", "the sweep alone ends nothing (as designed)");
      // Another sidecar of the agent reports a call it denied on this session.
      const denied = create(LeaseRecordSchema, {
        actionId: newId("act", suite.clock.ms),
        method: "check",
        action: payment(USD(1)),
        decision: create(DecisionSchema, { outcome: Outcome.DENY, message: "no" }),
        createTime: timestampFromMs(suite.clock.ms),
        processingNanos: 1n,
      });
      await report("sidecar-2", s.sessionId, undefined, { records: [denied] });
      let got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE", `a write-off alone ended the session: ${SessionStatus[got.status]} (${got.statusReason})`);
      // sidecar-1 comes back and gives its unused lease back: 50 of 100 is left to spend.
      await report("sidecar-1", s.sessionId, l, { records: [], release: true });
      got = await suite.store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(50));
      assert.equal(SessionStatus[got.status], "ACTIVE");
    });

    test("a sidecar hold written off by the sweeper does not end its session EXHAUSTED at the next report that names the session", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, "sidecar-1", USD(80), 120_000))!;
      assert.equal(l.valueMicros, USD(50));
      const hold = create(LeaseRecordSchema, {
        actionId: newId("act", suite.clock.ms),
        method: "authorize",
        action: payment(USD(50)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "ok" }),
        createTime: timestampFromMs(suite.clock.ms),
        holdExpireTime: timestampFromMs(suite.clock.ms + 1_000),
        processingNanos: 1n,
      });
      await report("sidecar-1", s.sessionId, l, { records: [hold], release: true });
      assert.equal((await suite.check(s.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      // Past the hold's expiry and the sidecar grace: the sweeper writes the hold off (counted as spent).
      suite.clock.advance(1_000 + 60_000);
      assert.equal((await suite.store.sweep()).holdsWrittenOff.holds, 1);
      assert.equal(SessionStatus[(await suite.store.getSession(s.sessionId)).status], "ACTIVE", "the sweep alone ends nothing (as designed)");
      // Any report naming the session, here an empty one from another sidecar.
      await report("sidecar-2", s.sessionId, undefined, {});
      const got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE", `a hold write-off alone ended the session: ${SessionStatus[got.status]} (${got.statusReason})`);
    });
    test("a decision through the store that reaches the lifetime limit only with a write-off leaves the session ACTIVE; once given back, spend up to the limit ends it", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = await writtenOffLease(s.sessionId);
      // 40 written off + 60 committed: the limit is reached, with the write-off.
      assert.equal((await suite.check(s.sessionId, USD(60))).decision!.outcome, Outcome.ALLOW);
      let got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE", `the write-off ended the session: ${got.statusReason}`);
      assert.equal((await suite.check(s.sessionId, USD(1))).decision!.outcome, Outcome.DENY, "the write-off limits like spend");
      // The sidecar was only cut off: it reports nothing spent and gives the lease back.
      await report("sidecar-1", s.sessionId, l, { records: [], release: true });
      assert.equal((await suite.store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(60));
      assert.equal((await suite.check(s.sessionId, USD(40))).decision!.outcome, Outcome.ALLOW);
      got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "EXHAUSTED", "spend alone up to the limit ends it");
    });
    test("a fork's write-off counts in its parent's lifetime but ends the parent no more than its own", async () => {
      const p = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const f = (await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: p.sessionId, policy: { currencyCode: "USD" } }), NO_HASH));
      const l = await writtenOffLease(f.sessionId);
      // 40 written off in the fork (and so in the parent) + 60 spent by the parent: its limit, with the write-off.
      assert.equal((await suite.check(p.sessionId, USD(60))).decision!.outcome, Outcome.ALLOW);
      let got = await suite.store.getSession(p.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE", `the fork's write-off ended the parent: ${got.statusReason}`);
      assert.equal((await suite.check(p.sessionId, USD(1))).decision!.outcome, Outcome.DENY, "the write-off limits the parent like spend");
      // The fork's sidecar was only cut off: it gives the lease back, and the parent may spend the 40.
      await report("sidecar-1", f.sessionId, l, { records: [], release: true });
      assert.equal((await suite.check(p.sessionId, USD(40))).decision!.outcome, Outcome.ALLOW);
      got = await suite.store.getSession(p.sessionId);
      assert.equal(SessionStatus[got.status], "EXHAUSTED");
    });
  });
}
