// Times that come from another clock (a sidecar's, a source store's) and
// what the sweeper makes of them; keys the sweeper prunes.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const MIN = 60_000;
const HOUR = 60 * MIN;

for (const driver of DRIVERS) {
  describe(`a sidecar's clock ahead, on ${driver}`, () => {
    const suite = storeSuite(driver, "sweep-sidecar-clock");

    test("a hold reported by a sidecar whose clock runs 2 hours ahead does not stay held in the store 2 hours past its TTL", async () => {
      const s = await suite.store.createSession(
        sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) }, holdTtl: durationFromMs(15 * MIN) }, { expiration: { case: "ttl", value: durationFromMs(24 * HOUR) } }),
        NO_HASH,
      );
      const lease = (await suite.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-1", desiredValueMicros: USD(40), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      ))!;
      assert.ok(lease !== undefined);
      // The sidecar's clock is 2 hours ahead: it stamps its hold's expiry
      // (its now + the policy's 15-minute hold TTL) in its own time.
      const sidecarNow = suite.clock.ms + 2 * HOUR;
      const actionId = newId("act", sidecarNow);
      const record = create(LeaseRecordSchema, {
        actionId,
        method: "authorize",
        action: payment(USD(20)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
        createTime: timestampFromMs(sidecarNow),
        holdExpireTime: timestampFromMs(sidecarNow + 15 * MIN),
        processingNanos: 1000n,
      });
      await suite.store.leases.report(
        create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: lease.leaseId, records: [record] })] }),
      );
      // Then the sidecar dies. 30 minutes later (TTL 15 minutes + the 60 s
      // grace long past), the store should have closed the hold.
      suite.clock.advance(30 * MIN);
      await suite.store.sweep();
      const actions = await suite.store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      const h = actions.actions.find((a) => a.actionId === actionId)!;
      const expireMs = Number(h.holdExpireTime!.seconds) * 1000;
      assert.notEqual(
        ActionStatus[h.status],
        "HELD",
        `a hold with a 15-minute TTL is still held 30 minutes after the store learned of it; its stored expiry is ${(expireMs - suite.clock.ms) / MIN} minutes from now`,
      );
    });
  });

  describe(`ImportSession and the sweeper, on ${driver}`, () => {
    const source = storeSuite(driver, "sweep-imp", { ledgerCheck: false });
    const target = storeSuite(driver, "sweep-imp-t", { ledgerCheck: false });

    test("an ImportSession of a session that ended two days ago, retried after a sweep, gets the session it imported, not ALREADY_EXISTS", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), {}), NO_HASH);
      await source.store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      const snap = await source.store.exportSession(s.sessionId);
      // Imported two days later (the retention is 24 hours), keyed.
      target.clock.ms = source.clock.ms + 48 * HOUR;
      const keyed = { idempotencyKey: "import-1", requestHash: new Uint8Array([1, 2, 3]) };
      const first = await target.store.importSession(snap, keyed);
      // The answer is lost; the sweeper runs (every second by default); the client retries.
      const keyRows = async () =>
        (await target.t.db.query("SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2", [`a:${first.agentId}`, "import-1"])).rows.length;
      assert.equal(await keyRows(), 1, "the import's key is stored, with the agent's (pruned by age)");
      target.clock.advance(1_000);
      await target.store.sweep();
      const keptAfterSweep = await keyRows();
      target.clock.advance(1_000);
      const retry = await target.store.importSession(snap, keyed).then(
        (r) => `ok ${r.sessionId}`,
        (e: unknown) => `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).rawMessage}`,
      );
      assert.equal(retry, `ok ${first.sessionId}`, `(key rows after the sweep: ${keptAfterSweep}) an ImportSession retried after a lost answer gets the session it imported`);
    });

    test("an imported live session stamped by a source clock an hour ahead still goes idle after its idle timeout", async () => {
      // The source's clock is one hour ahead of the target's.
      source.clock.ms = target.clock.ms + HOUR;
      const s = await source.store.createSession(
        sessionRequest(source.agent(), {}, { idleTimeout: durationFromMs(10 * MIN), expiration: { case: "ttl", value: durationFromMs(24 * HOUR) } }),
        NO_HASH,
      );
      assert.equal((await source.check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      await target.store.importSession(await source.store.exportSession(s.sessionId));
      // 15 minutes of nothing at the target: past the 10-minute idle timeout.
      target.clock.advance(15 * MIN);
      const r = await target.check(s.sessionId, USD(1));
      assert.notEqual(Outcome[r.decision!.outcome], "ALLOW", "a session idle for 15 minutes (timeout 10) still spends after its import");
    });
  });
}
