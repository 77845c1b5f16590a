// An agent policy moving between calendars, and ImportSession into an
// agent's windows: what the windows count, and that they never move back.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { Weekday } from "../../src/gen/warden/v1/policy_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const at = (y: number, mo: number, d: number, h: number, mi = 0) => Date.UTC(y, mo, d, h, mi, 0);
const longSession = (agentId: string, policy: Record<string, unknown> = {}) =>
  sessionRequest(agentId, { holdTtl: durationFromMs(2 * DAY), ...policy }, { expiration: { case: "ttl", value: durationFromMs(5 * DAY) } });

for (const driver of DRIVERS) {
  // Calendar changes carry counts (more than the ledger), so no books check.
  describe(`calendar changes of an agent policy, on ${driver}`, () => {
    const suite = storeSuite(driver, "cal", { ledgerCheck: false });
    const agentPolicy = (agentId: string, p: Record<string, unknown>) =>
      create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, ...p } });
    const agentDay = async (agentId: string) => (await suite.store.getAgent(agentId)).budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros;

    test("a hold charged before a time zone change and its revert can still be voided (counters never go negative)", async () => {
      // Monday 7 December 2026, 01:00 UTC.
      suite.clock.ms = at(2026, 11, 7, 1);
      const id = suite.agent();
      await suite.store.updateAgentPolicy(agentPolicy(id, { timeZone: "" }));
      const s = await suite.store.createSession(longSession(id), NO_HASH);
      const h = await suite.authorize(s.sessionId, USD(60));
      assert.equal(h.decision!.outcome, Outcome.ALLOW);
      // 02:00: the agent moves to Tokyo (its day began 15:00 UTC on the 6th).
      suite.clock.ms = at(2026, 11, 7, 2);
      await suite.store.updateAgentPolicy(agentPolicy(id, { timeZone: "Asia/Tokyo" }));
      suite.clock.ms = at(2026, 11, 7, 3);
      assert.equal((await suite.check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      // 15:30 UTC: Tokyo's 8 December; the Tokyo day rolls over.
      suite.clock.ms = at(2026, 11, 7, 15, 30);
      assert.equal((await suite.check(s.sessionId, USD(10))).decision!.outcome, Outcome.ALLOW);
      // 16:00: the change is reverted to UTC, whose day (still 7 December) is the hold's.
      suite.clock.ms = at(2026, 11, 7, 16);
      await suite.store.updateAgentPolicy(agentPolicy(id, { timeZone: "" }));
      suite.clock.ms = at(2026, 11, 7, 16, 10);
      assert.equal((await suite.check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      // The hold's charge [a:agent, day, 7 Dec 00:00Z] now matches the stored
      // window, which never held it: the release drives held_value negative.
      await suite.store.void({ sessionId: s.sessionId, authorizationId: h.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      assert.ok((await agentDay(id)) >= 0n);
    });

    test("a week_start-only change: a replica whose clock lags 20 minutes does not move the (unchanged) day back, losing today's spend", async () => {
      // Tuesday 8 December 2026, 23:00 UTC.
      suite.clock.ms = at(2026, 11, 8, 23);
      const id = suite.agent();
      await suite.store.updateAgentPolicy(agentPolicy(id, { weekStart: Weekday.MONDAY }));
      const s = await suite.store.createSession(longSession(id), NO_HASH);
      // A second replica on the same database, its clock 20 minutes behind.
      const lagging = createWardenStore({ db: suite.t.db, now: () => suite.clock.ms - 20 * 60_000 });
      // 00:10 on the 9th: 90 spent in the agent's day of 9 December.
      suite.clock.ms = at(2026, 11, 9, 0, 10);
      assert.equal((await suite.check(s.sessionId, USD(90))).decision!.outcome, Outcome.ALLOW);
      // Only the week start changes: days are the same under both calendars.
      await suite.store.updateAgentPolicy(agentPolicy(id, { weekStart: Weekday.SUNDAY }));
      const small = await lagging.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(5)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(small.decision!.outcome, Outcome.ALLOW);
      suite.clock.ms = at(2026, 11, 9, 0, 30);
      const r = await suite.check(s.sessionId, USD(90));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], `90 (+5) already spent on 9 December: ${r.decision!.message}`);
    });
  });

  // The books are broken on purpose here.
  describe(`a sweep that cannot close one hold, on ${driver}`, () => {
    const suite = storeSuite(driver, "sweep-isolated", { ledgerCheck: false });

    test("closes every other and says what failed, instead of stopping at the first", async () => {
      suite.clock.ms = at(2026, 11, 7, 1);
      const broken = await suite.store.createSession(longSession(suite.agent()), NO_HASH);
      const h1 = await suite.authorize(broken.sessionId, USD(5));
      suite.clock.ms += 1000;
      const fine = await suite.store.createSession(longSession(suite.agent()), NO_HASH);
      const h2 = await suite.authorize(fine.sessionId, USD(5));
      assert.equal(h1.decision!.outcome, Outcome.ALLOW);
      assert.equal(h2.decision!.outcome, Outcome.ALLOW);
      // Releasing the first would drive its session's counter below zero.
      await suite.t.db.query("UPDATE scope_usage SET lifetime_held_value = 0 WHERE scope_key = $1", [`s:${broken.sessionId}`]);
      suite.clock.ms += 3 * DAY;
      const swept = await suite.store.sweep();
      assert.equal(swept.failures.length, 1);
      assert.match(String(swept.failures[0]), /scope_usage/);
      assert.equal((await suite.store.getSession(fine.sessionId)).usage!.valueHeldMicros, 0n, "the other expired hold was released");
    });
  });

  describe(`ImportSession into an agent's windows, on ${driver}`, () => {
    const source = storeSuite(driver, "imp", { ledgerCheck: false });
    const target = storeSuite(driver, "imp-t", { ledgerCheck: false });
    const agentPolicy = (agentId: string, p: Record<string, unknown> = {}) =>
      create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, ...p } });

    test("a restored hold stamped by a source clock an hour ahead does not roll the agent's day over early", async () => {
      const id = source.agent();
      // Target: 23:30 UTC on 9 December; the agent has spent 80 today.
      target.clock.ms = at(2026, 11, 9, 23, 30);
      await target.store.updateAgentPolicy(agentPolicy(id));
      const mine = await target.store.createSession(longSession(id), NO_HASH);
      assert.equal((await target.check(mine.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      // Source: its clock one hour ahead, already 00:30 on the 10th.
      source.clock.ms = at(2026, 11, 10, 0, 30);
      const s = await source.store.createSession(sessionRequest(id, {}), NO_HASH);
      assert.equal((await source.authorize(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      await target.store.importSession(await source.store.exportSession(s.sessionId));
      const r = await target.check(mine.sessionId, USD(50));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], `the agent's 9 December already has 80 (+1 held): ${r.decision!.message}`);
    });

    test("a restored hold from yesterday, after the agent's policy changed week start, does not move the agent's day back", async () => {
      const id = source.agent();
      // Target: Wednesday 9 December 12:00 UTC; 80 spent in the agent's day.
      target.clock.ms = at(2026, 11, 9, 12);
      await target.store.updateAgentPolicy(agentPolicy(id, { weekStart: Weekday.MONDAY }));
      const mine = await target.store.createSession(longSession(id), NO_HASH);
      assert.equal((await target.check(mine.sessionId, USD(80))).decision!.outcome, Outcome.ALLOW);
      await target.store.updateAgentPolicy(agentPolicy(id, { weekStart: Weekday.SUNDAY }));
      // Source: a hold placed yesterday (a 2-day hold TTL), exported today.
      source.clock.ms = at(2026, 11, 8, 12);
      const s = await source.store.createSession(longSession(id), NO_HASH);
      assert.equal((await source.authorize(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      source.clock.ms = at(2026, 11, 9, 12);
      await target.store.importSession(await source.store.exportSession(s.sessionId));
      const r = await target.check(mine.sessionId, USD(50));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], `the agent's 9 December already has 80: ${r.decision!.message}`);
    });

    test("a USD fork is not re-attached under a JPY parent (its dollars would count as yen there)", async () => {
      const id = source.agent();
      source.clock.ms = target.clock.ms = at(2026, 11, 9, 12);
      const p = await source.store.createSession(sessionRequest(id, {}), NO_HASH);
      const f = await source.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: p.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      // In the target, the parent's id is a JPY session of the same agent: 10 000 yen a day.
      await target.store.createSession(sessionRequest(id, { currencyCode: "JPY", daily: { maxValueMicros: USD(10_000) } }, { sessionId: p.sessionId }), NO_HASH);
      await assert.rejects(target.store.importSession(await source.store.exportSession(f.sessionId)), (e: unknown) => {
        const c = ConnectError.from(e);
        assert.equal(c.code, Code.InvalidArgument);
        assert.match(c.rawMessage, /^snapshot\.session\.policy\.currency_code: USD differs from the parent's currency JPY/);
        return true;
      });
      await assert.rejects(target.store.getSession(f.sessionId), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    });
  });
}
