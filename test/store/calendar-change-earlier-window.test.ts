import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
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
