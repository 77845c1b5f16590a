// A record's time is the sidecar's clock, which may run ahead of the
// store's: taken as the session's last activity as sent, it pushed the idle
// deadline into the future, and the session kept spending past its idle
// timeout. Activity is clamped to the store's now, as settlements are.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const HOUR = 3_600_000;

for (const driver of DRIVERS) {
  describe(`report activity time on ${driver}`, () => {
    const suite = storeSuite(driver, "agent-clock");

    test("a record stamped by a sidecar clock running ahead does not move the session's last activity past now", async () => {
      const s = await suite.store.createSession(
        sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }, { idleTimeout: durationFromMs(10 * 60_000), expiration: { case: "ttl", value: durationFromMs(24 * HOUR) } }),
        NO_HASH,
      );
      const denied = create(LeaseRecordSchema, {
        actionId: newId("act", suite.clock.ms),
        method: "check",
        action: payment(USD(1)),
        decision: create(DecisionSchema, { outcome: Outcome.DENY, message: "no" }),
        // The sidecar's clock is 5 hours ahead of the store's.
        createTime: timestampFromMs(suite.clock.ms + 5 * HOUR),
        processingNanos: 1n,
      });
      await suite.store.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId: s.sessionId, records: [denied] })] }));
      const got = await suite.store.getSession(s.sessionId);
      const lastMs = Number(got.lastActivityTime!.seconds) * 1000;
      const storeNow = suite.clock.ms;
      // 15 minutes of nothing: past the 10-minute idle timeout.
      suite.clock.advance(15 * 60_000);
      const res = await suite.check(s.sessionId, USD(1));
      assert.notEqual(
        Outcome[res.decision!.outcome],
        "ALLOW",
        `a session idle for 15 minutes (timeout 10) still spends: its last activity was stored as ${new Date(lastMs).toISOString()}, the store's now was ${new Date(storeNow).toISOString()}`,
      );
    });
  });
}
