// A lease granted a few minutes before an agent's new calendar's day began,
// spent from after that instant and reported late (its sidecar cut off)
// after the agent's time zone moved east: the spend lies in the new day.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { DecisionSchema, Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const DAY = 86_400_000;

for (const driver of DRIVERS) {
  describe(`a lease record reported after the agent's calendar moved, on ${driver}`, () => {
    const suite = storeSuite(driver, "cal-late-record", { ledgerCheck: false });

    for (const sweep of [false, true]) {
      test(`spend from a lease in the gap of a window moved earlier counts in the new day (lease ${sweep ? "reconciled" : "not yet reconciled"} before the move)`, async () => {
        // 14:58 UTC on Sunday 6 December 2026; the agent is in UTC.
        suite.clock.ms = Date.UTC(2026, 11, 6, 14, 58);
        const id = suite.agent();
        const policy = (tz: string) => create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: tz } });
        await suite.store.updateAgentPolicy(policy(""));
        const s = await suite.store.createSession(sessionRequest(id, {}, { expiration: { case: "ttl", value: durationFromMs(2 * DAY) } }), NO_HASH);
        const lease = (await suite.store.leases.acquire(
          create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sc", desiredValueMicros: USD(40), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(5 * 60_000) }),
        ))!;
        assert.equal(lease.valueMicros, USD(40));
        // 15:01 UTC (00:01 on 7 December in Tokyo): the sidecar spends the 40
        // from its lease, then loses the control plane before reporting it.
        const spentAt = Date.UTC(2026, 11, 6, 15, 1);

        // 00:30 UTC on the 7th: 10 spent; the agent's stored day is UTC 7 December.
        suite.clock.ms = Date.UTC(2026, 11, 7, 0, 30);
        if (sweep) await suite.store.sweep();
        assert.equal((await suite.check(s.sessionId, USD(10))).decision!.outcome, Outcome.ALLOW);

        // 01:00 UTC: the agent moves to Tokyo, whose 7 December began at 15:00 UTC on the 6th.
        suite.clock.ms = Date.UTC(2026, 11, 7, 1, 0);
        await suite.store.updateAgentPolicy(policy("Asia/Tokyo"));

        // 01:10 UTC: the sidecar is back and reports what it spent at 15:01 on the 6th.
        suite.clock.ms = Date.UTC(2026, 11, 7, 1, 10);
        await suite.store.leases.report(
          create(ReportLeasesRequestSchema, {
            holder: "sc",
            reports: [
              {
                sessionId: s.sessionId,
                leaseId: lease.leaseId,
                records: [
                  create(LeaseRecordSchema, {
                    actionId: newId("act", spentAt),
                    method: "check",
                    action: payment(USD(40)),
                    decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "from lease" }),
                    createTime: timestampFromMs(spentAt),
                    processingNanos: 1000n,
                  }),
                ],
                release: true,
              },
            ],
          }),
        );
        const used = (await suite.store.getAgent(id)).budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros;
        // Tokyo's 7 December holds the 40 (at 00:01 Tokyo) and the 10.
        assert.equal(used / 1_000_000n, 50n, "the Tokyo day's usage");
        const r = await suite.check(s.sessionId, USD(60));
        assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], `50 already spent in Tokyo's 7 December: ${r.decision!.message}`);
      });
    }
  });
}
