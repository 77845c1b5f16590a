// An imported session's spend, counted in its agent's windows at import,
// must still count when the agent's calendar moves east afterwards
// (rebaseAgentWindows re-reads the gap from the ledger's charges).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const HOUR = 3_600_000;
const at = (y: number, mo: number, d: number, h: number, mi = 0) => Date.UTC(y, mo, d, h, mi, 0);
const longSession = (agentId: string) =>
  sessionRequest(agentId, { holdTtl: durationFromMs(2 * 24 * HOUR) }, { expiration: { case: "ttl", value: durationFromMs(5 * 24 * HOUR) } });

for (const driver of DRIVERS) {
  describe(`an imported session's spend and a later move of its agent's calendar, on ${driver}`, () => {
    // Calendar moves carry counts; the books check is not the point here.
    const source = storeSuite(driver, "life-cal-src", { ledgerCheck: false });
    const target = storeSuite(driver, "life-cal-dst", { ledgerCheck: false });
    const agentPolicy = (agentId: string, timeZone: string) =>
      create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", timeZone, daily: { maxValueMicros: USD(100) } } });

    test("moved east after UTC midnight: an imported session's spend of the previous UTC evening still counts in the new (Tokyo) day", async () => {
      // Saturday 21 November 2026, 20:00 UTC (Sunday 05:00 in Tokyo).
      source.clock.ms = target.clock.ms = at(2026, 10, 21, 20);
      const agentId = source.agent();
      const s = await source.store.createSession(longSession(agentId), NO_HASH);
      assert.equal((await source.check(s.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);

      await target.store.updateAgentPolicy(agentPolicy(agentId, ""));
      await target.store.importSession(await source.store.exportSession(s.sessionId));
      const day = async () => (await target.store.getAgent(agentId)).budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros;
      assert.equal(await day(), USD(80), "the import counts in the agent's day");

      // 01:00 UTC on the 22nd: a new UTC day, 1 USD spent in it by another session.
      target.clock.ms = at(2026, 10, 22, 1);
      const other = await target.store.createSession(longSession(agentId), NO_HASH);
      assert.equal((await target.check(other.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);

      // The agent moves to Tokyo: its day began at 15:00 UTC on the 21st,
      // so it holds the imported 80 USD (spent at 20:00) and the 1 USD.
      target.clock.ms = at(2026, 10, 22, 1, 10);
      await target.store.updateAgentPolicy(agentPolicy(agentId, "Asia/Tokyo"));
      assert.equal(await day(), USD(81), "the Tokyo day's spend after the move");
      const r = await target.check(other.sessionId, USD(90));
      assert.equal(Outcome[r.decision!.outcome], "DENY", "81 + 90 USD in one Tokyo day, against a daily limit of 100");
    });
  });
}
