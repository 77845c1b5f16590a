// Totals at the edge of int64 (money is int64 micros, counts are int64):
// a total that would pass it is denied, never a store error, and one
// session's counts never fail other sessions' writes; imported windows that
// start in the future do not freeze a limit.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { DecisionSchema, Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { AcquireLeaseRequestSchema, type Lease, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { INT64_MAX } from "../../src/core/money.js";
import { newId } from "../../src/store/ids.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const DAY_MS = 86_400_000;

async function outcome<T>(p: Promise<T>): Promise<string> {
  try {
    const r = (await p) as { decision?: { outcome: Outcome; reasons: Reason[] } };
    return `OK ${Outcome[r.decision!.outcome]} ${r.decision!.reasons.map((x) => Reason[x]).join(",")}`;
  } catch (e) {
    const c = ConnectError.from(e);
    return `${Code[c.code]}: ${c.rawMessage}`;
  }
}

for (const driver of DRIVERS) {
  describe(`int64 edges of imported sessions, on ${driver}`, () => {
    const source = storeSuite(driver, "ximp-src", { ledgerCheck: false });
    const target = storeSuite(driver, "ximp-dst", { ledgerCheck: false });
    test("a session imported with INT64_MAX lifetime actions (allowed) is denied, not failed with a store error, on its next action", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), {}), NO_HASH);
      await source.check(s.sessionId, USD(1));
      const snap = await source.store.exportSession(s.sessionId);
      for (const c of snap.counters) if (c.window === "lifetime") c.committedActions = INT64_MAX;
      // The import takes it: INT64_MAX is not past int64.
      await target.store.importSession(snap);
      const r = await outcome(target.check(s.sessionId, 1n));
      assert.equal(r, "OK DENY AMOUNT_OUT_OF_RANGE", "one more action cannot be counted: a denial, not a store failure");
      // And the session stays readable.
      assert.equal((await target.store.getSession(s.sessionId)).usage!.actionsCommitted ?? INT64_MAX, INT64_MAX);
    });

    test("a session imported with INT64_MAX value in its day window (lifetime far below) is denied, not failed with a store error, on its next payment", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), {}), NO_HASH);
      await source.check(s.sessionId, USD(1));
      const snap = await source.store.exportSession(s.sessionId);
      // Each counter is in int64 and not negative: the import takes it.
      for (const c of snap.counters) if (c.window === "day") c.committedValueMicros = INT64_MAX;
      await target.store.importSession(snap);
      const r = await outcome(target.check(s.sessionId, 1n));
      assert.equal(r, "OK DENY AMOUNT_OUT_OF_RANGE", "the day total cannot go past int64: a denial, not a store failure");
    });

    test("an imported day counter whose window starts in the future does not keep the daily limit from ever resetting", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { daily: { maxValueMicros: USD(10) } }, { expiration: { case: "ttl", value: { seconds: 30n * 86400n, nanos: 0 } } }), NO_HASH);
      await source.check(s.sessionId, USD(10));
      const snap = await source.store.exportSession(s.sessionId);
      // A source whose clock ran a year ahead (or a hand-edited file): the
      // day window it names starts a year from now.
      for (const c of snap.counters) if (c.window === "day") c.windowStartTime = timestampFromMs(target.clock.ms + 365 * DAY_MS);
      target.clock.ms = source.clock.ms;
      await target.store.importSession(snap);
      const today = await outcome(target.check(s.sessionId, USD(1)));
      // Days later the daily limit must have reset.
      target.clock.advance(3 * DAY_MS);
      const later = await outcome(target.check(s.sessionId, USD(1)));
      const stored = (await target.t.db.query<{ day_start: Date }>("SELECT day_start FROM scope_usage WHERE scope_key = $1", [`s:${s.sessionId}`])).rows[0]?.day_start;
      assert.equal(later, "OK ALLOW ", `three days after the import (today: ${today}), the session's stored day window still starts ${stored?.toISOString()}`);
    });

    test("an imported session's counts leave room to count on: past half of int64 they are refused by name; at it, its decisions and others' batched with it go through", async () => {
      target.clock.ms = source.clock.ms;
      const s = await source.store.createSession(sessionRequest(source.agent(), {}), NO_HASH);
      await source.check(s.sessionId, USD(1));
      for (const field of ["requestCount", "errorCount", "denialCount"] as const) {
        const snap = await source.store.exportSession(s.sessionId);
        snap.session!.usage![field] = INT64_MAX;
        const name = field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
        assert.match(await outcome(target.store.importSession(snap)), new RegExp(`^InvalidArgument: snapshot.session.usage.${name}: `));
      }
      const snap = await source.store.exportSession(s.sessionId);
      snap.session!.usage!.processingTime = { seconds: 9_223_372_035n, nanos: 0 } as never;
      assert.match(await outcome(target.store.importSession(snap)), /^InvalidArgument: snapshot.session.usage.processing_time: /);
      snap.session!.usage!.processingTime = undefined;
      snap.session!.usage!.requestCount = INT64_MAX / 2n;
      await target.store.importSession(snap);
      const others = await Promise.all(Array.from({ length: 6 }, () => target.store.createSession(sessionRequest(target.agent(), {}), NO_HASH)));
      // Concurrent, as a busy server decides them: one batch.
      const all = await Promise.all([s.sessionId, ...others.map((o) => o.sessionId)].map((id) => outcome(target.check(id, USD(1)))));
      assert.deepEqual(all, Array(7).fill("OK ALLOW "));
    });
  });

  describe(`int64 edges of leases, on ${driver}`, () => {
    const leases = storeSuite(driver, "xlease", { ledgerCheck: false });
    const acquire = (sessionId: string, holder: string) =>
      leases.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId, holder, desiredValueMicros: INT64_MAX, desiredActions: 100n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      );
    const report = (holder: string, sessionId: string, lease: Lease, amount: bigint) =>
      leases.store.leases.report(
        create(ReportLeasesRequestSchema, {
          holder,
          reports: [
            create(LeaseReportSchema, {
              sessionId,
              leaseId: lease.leaseId,
              records: [
                create(LeaseRecordSchema, {
                  actionId: newId("act", leases.clock.ms),
                  method: "check",
                  action: payment(amount),
                  decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
                  createTime: timestampFromMs(leases.clock.ms),
                  processingNanos: 1000n,
                }),
              ],
            }),
          ],
        }),
      );

    test("two sidecars' leases on a session without value limits: what they report together past int64 is stored as int64's largest, not a store error, and nothing more is allowed", async () => {
      const s = await leases.store.createSession(sessionRequest(leases.agent(), { lifetime: { maxActions: 1000n } }), NO_HASH);
      const a = (await acquire(s.sessionId, "sidecar-a"))!;
      const b = (await acquire(s.sessionId, "sidecar-b"))!;
      assert.ok(a !== undefined && b !== undefined, "both sidecars got a lease");
      // Each lease's view: nothing spent yet; each sidecar allows INT64_MAX
      // locally, as evaluate() against its lease's usage lets it.
      const leased = [a.valueMicros, b.valueMicros];
      await report("sidecar-a", s.sessionId, a, INT64_MAX);
      let second: string;
      try {
        await report("sidecar-b", s.sessionId, b, 1n);
        second = "OK";
      } catch (e) {
        const c = ConnectError.from(e);
        second = `${Code[c.code]}: ${c.rawMessage} ${c.cause instanceof Error ? c.cause.message : ""}`;
      }
      // What is due: the leases together could never have covered more than
      // an int64 (each reserves value, as under a lifetime limit of INT64_MAX),
      // so the second sidecar's record fits; or, at the least, it is not a
      // store failure that makes the sidecar resend its whole batch for ever.
      assert.equal(second, "OK", `leases granted ${leased.map(String).join(" and ")} (undefined: unlimited value); the second report failed`);
      assert.equal((await leases.store.getSession(s.sessionId)).usage!.valueCommittedMicros, INT64_MAX);
      assert.equal(await outcome(leases.check(s.sessionId, 1n)), "OK DENY AMOUNT_OUT_OF_RANGE");
    });
  });
}
