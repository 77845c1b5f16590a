import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { CaptureRequestSchema, VoidRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { AcquireLeaseRequestSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

// An agent policy whose time_zone changes mid-window carries what was spent
// into the new calendar's windows in effect, never less. When the new
// calendar's day began before the stored (UTC) day, the spend between the
// two starts belonged to a UTC day already rolled over: before, it was not
// counted, and the daily limit could be passed within one new day.
// UpdateAgentPolicy now reads it from the ledger (rebase-agent-windows.ts).
for (const driver of DRIVERS) {
  describe(`time-zone change to a calendar whose day began earlier, on ${driver}`, () => {
    // The moved window holds charges made under the old calendar: the ledger check does not model that.
    const suite = storeSuite(driver, "time-tz-earlier", { ledgerCheck: false });

    /**
     * An agent in UTC with a daily limit of 100 spends 80 at `firstUtc` and
     * 10 after the next UTC midnight, then moves to `timeZone`, whose day in
     * effect holds both: 80 more must be refused, and exactly 10 are left.
     */
    const spendThenMove = async (firstUtc: number, timeZone: string, where: string) => {
      suite.clock.advance(firstUtc - suite.clock.now());
      const id = suite.agent();
      const policy = (tz: string) => create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: tz } });
      await suite.store.updateAgentPolicy(policy(""));
      const s = await suite.store.createSession(sessionRequest(id, {}, { expiration: { case: "ttl", value: durationFromMs(86_400_000) } }), NO_HASH);
      assert.equal((await suite.check(s.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      // 00:30 UTC the next day: a new UTC day, the same day in `timeZone`.
      const midnight = firstUtc - (firstUtc % 86_400_000) + 86_400_000;
      suite.clock.advance(midnight + 30 * 60_000 - suite.clock.now());
      assert.equal((await suite.check(s.sessionId, USD(10))).decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(30 * 60_000);
      await suite.store.updateAgentPolicy(policy(timeZone));
      const r = await suite.check(s.sessionId, USD(80));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], `170 spent in one ${where} day against a daily limit of 100: ${r.decision!.message}`);
      // Exactly what was spent, not the whole previous UTC day.
      assert.equal((await suite.check(s.sessionId, USD(10))).decision!.outcome, Outcome.ALLOW);
      assert.equal((await suite.check(s.sessionId, USD(1))).decision!.outcome, Outcome.DENY);
    };

    test("moved east after UTC midnight: spend of the previous UTC evening still counts in the new (Tokyo) day", async () => {
      // 20:00 UTC on 6 December is 05:00 on 7 December in Tokyo, whose 7 December began at 15:00 UTC on the 6th.
      await spendThenMove(Date.UTC(2026, 11, 6, 20, 0, 0), "Asia/Tokyo", "Tokyo");
    });
    test("moved west after UTC midnight: spend of the previous UTC afternoon still counts in the new (New York) day", async () => {
      // 18:00 UTC on 8 December is 13:00 in New York, whose 8 December runs to 05:00 UTC on the 9th.
      await spendThenMove(Date.UTC(2026, 11, 8, 18, 0, 0), "America/New_York", "New York");
    });
  });
}

// A hold placed before the agent's calendar moves is counted in the window
// it moved to; voided or captured after, it must settle there. Before, its
// charges still named the old window, no longer stored: its amount stayed
// held in the new one until that rolled over (a day, or a month).
for (const driver of DRIVERS) {
  describe(`a hold placed before a time-zone change, settled after it, on ${driver}`, () => {
    const suite = storeSuite(driver, "time-tz-holds", { ledgerCheck: false });
    const DAY = 86_400_000;

    /** An agent in UTC with a daily limit of 100, a session, and a hold of 60 placed at `atUtc`. */
    const holdThenMove = async (atUtc: number, moveAtUtc: number, timeZone: string) => {
      suite.clock.advance(atUtc - suite.clock.now());
      const id = suite.agent();
      const policy = (tz: string) => create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: tz } });
      await suite.store.updateAgentPolicy(policy(""));
      const s = await suite.store.createSession(
        sessionRequest(id, { holdTtl: durationFromMs(2 * DAY) }, { expiration: { case: "ttl", value: durationFromMs(3 * DAY) } }),
        NO_HASH,
      );
      const hold = await suite.authorize(s.sessionId, USD(60));
      assert.equal(hold.decision!.outcome, Outcome.ALLOW);
      suite.clock.advance(moveAtUtc - suite.clock.now());
      await suite.store.updateAgentPolicy(policy(timeZone));
      return { sessionId: s.sessionId, authorizationId: hold.authorizationId };
    };
    const dayUsed = async (sessionId: string) => {
      const agentId = (await suite.store.getSession(sessionId)).agentId;
      const b = (await suite.store.getAgent(agentId)).budgets.find((x) => x.window === Window.DAY)!;
      return b.valueUsedMicros / 1_000_000n;
    };

    test("the window carried to the new calendar (same UTC day, Tokyo): a void gives the 60 back", async () => {
      // 20:00 UTC on 6 December is 05:00 on the 7th in Tokyo, whose day began at 15:00 UTC on the 6th.
      const { sessionId, authorizationId } = await holdThenMove(Date.UTC(2026, 11, 6, 20), Date.UTC(2026, 11, 6, 20, 30), "Asia/Tokyo");
      await suite.store.void(create(VoidRequestSchema, { sessionId, authorizationId }), NO_HASH);
      assert.equal(await dayUsed(sessionId), 0n, "committed and held in the Tokyo day");
      assert.equal((await suite.check(sessionId, USD(100))).decision!.outcome, Outcome.ALLOW);
    });

    test("a sidecar's lease granted before the move, released after it: its unspent rest leaves the Tokyo day", async () => {
      suite.clock.advance(Date.UTC(2026, 11, 10, 20) - suite.clock.now());
      const id = suite.agent();
      const policy = (tz: string) => create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: tz } });
      await suite.store.updateAgentPolicy(policy(""));
      const s = await suite.store.createSession(sessionRequest(id, {}, { expiration: { case: "ttl", value: durationFromMs(DAY) } }), NO_HASH);
      const lease = (await suite.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-tz", desiredValueMicros: USD(40), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(60_000) }),
      ))!;
      assert.equal(await dayUsed(s.sessionId), 40n, "reserved by the lease");
      suite.clock.advance(60_000);
      await suite.store.updateAgentPolicy(policy("Asia/Tokyo"));
      await suite.store.leases.report(
        create(ReportLeasesRequestSchema, { holder: "sidecar-tz", reports: [{ sessionId: s.sessionId, leaseId: lease.leaseId, release: true }] }),
      );
      assert.equal(await dayUsed(s.sessionId), 0n);
    });

    test("the window moved earlier (after UTC midnight, Tokyo): a partial capture commits 20 there and gives 40 back", async () => {
      // Held at 20:00 UTC on the 8th; the UTC day rolls over; at 01:00 on the 9th the agent moves to Tokyo, whose day began at 15:00 UTC on the 8th.
      const { sessionId, authorizationId } = await holdThenMove(Date.UTC(2026, 11, 8, 20), Date.UTC(2026, 11, 9, 1), "Asia/Tokyo");
      assert.equal(await dayUsed(sessionId), 60n, "the gap's hold counts in the Tokyo day");
      await suite.store.capture(create(CaptureRequestSchema, { sessionId, authorizationId, amount: { currencyCode: "USD", amountMicros: USD(20) } }), NO_HASH);
      assert.equal(await dayUsed(sessionId), 20n, "committed and held in the Tokyo day");
      assert.equal((await suite.check(sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      assert.equal((await suite.check(sessionId, USD(1))).decision!.outcome, Outcome.DENY);
    });
  });
}
