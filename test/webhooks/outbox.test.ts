import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ExtendSessionRequestSchema, ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { CreateWebhookEndpointRequestSchema } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { createWebhookStore, type WebhookStore } from "../../src/webhooks/webhook-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";

const NO_HASH = new Uint8Array(0);

interface EventRow {
  event_id: string;
  type: string;
  session_id: string;
  agent_id: string;
  data: Record<string, unknown>;
}

for (const driver of DRIVERS) {
  describe(`session events (outbox) on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let hooks: WebhookStore;
    let n = 0;
    const agent = () => `events-agent-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now });
      hooks = createWebhookStore({ db: t.db, now: clock.now });
    });
    after(async () => {
      await assertLedgerConsistent(t.db);
      await t.drop();
    });

    const eventsOf = async (sessionId: string) =>
      (await t.db.query<EventRow>("SELECT event_id, type, session_id, agent_id, data FROM events WHERE session_id = $1 ORDER BY seq", [sessionId])).rows;
    const typesOf = async (sessionId: string) => (await eventsOf(sessionId)).map((e) => e.type);
    const check = (sessionId: string, amount: bigint) =>
      store.decide({ method: "check", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<CheckResponse>;

    test("create, extend, pause, resume and revoke record one event each, in order", async () => {
      const a = agent();
      const s = await store.createSession(sessionRequest(a, {}), NO_HASH);
      await store.extendSession(create(ExtendSessionRequestSchema, { sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(60_000) } }));
      await store.setPaused(s.sessionId, true, "look");
      await store.setPaused(s.sessionId, false, "fine");
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      const events = await eventsOf(s.sessionId);
      assert.deepEqual(
        events.map((e) => e.type),
        ["session.created", "session.extended", "session.paused", "session.resumed", "session.revoked"],
      );
      for (const e of events) {
        assert.match(e.event_id, /^evt_[0-9a-z]{26}$/);
        assert.equal(e.agent_id, a);
      }
      assert.equal(new Set(events.map((e) => e.event_id)).size, events.length);
      assert.deepEqual(events[2]!.data, { status: "PAUSED", reason: "look" });
      assert.deepEqual(events[4]!.data, { status: "REVOKED", reason: "stop" });
      assert.equal(typeof events[1]!.data.expire_time, "string");
    });

    test("a change that fails records no event", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      await assert.rejects(store.setPaused(s.sessionId, true, "late"), (e) => ConnectError.from(e).code === Code.FailedPrecondition);
      await assert.rejects(store.terminate(s.sessionId, SessionStatus.REVOKED, "again"), (e) => ConnectError.from(e).code === Code.FailedPrecondition);
      await assert.rejects(
        store.extendSession(create(ExtendSessionRequestSchema, { sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(1000) } })),
        (e) => ConnectError.from(e).code === Code.FailedPrecondition,
      );
      // A duplicate session id rolls its whole creation back, event included.
      await assert.rejects(store.createSession(sessionRequest(agent(), {}, { sessionId: s.sessionId }), NO_HASH), (e) => ConnectError.from(e).code === Code.AlreadyExists);
      assert.deepEqual(await typesOf(s.sessionId), ["session.created", "session.completed"]);
    });

    test("revoking a parent records an event for each live fork it ends", async () => {
      const parent = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const fork = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      await store.terminate(parent.sessionId, SessionStatus.REVOKED, "stop all");
      assert.deepEqual(await typesOf(parent.sessionId), ["session.created", "session.revoked"]);
      const forkEvents = await eventsOf(fork.sessionId);
      assert.deepEqual(forkEvents.map((e) => e.type), ["session.created", "session.revoked"]);
      assert.equal(forkEvents[0]!.data.parent_session_id, parent.sessionId);
      assert.equal(forkEvents[1]!.data.ended_with, parent.sessionId);
    });

    test("a decision that uses up the lifetime limit records session.exhausted, once", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(10) } }), NO_HASH);
      // One batch: the second decision ends the session inside the batch's statement.
      const answers = await Promise.all([check(s.sessionId, USD(4)), check(s.sessionId, USD(6))]);
      assert.deepEqual(answers.map((a) => a.decision!.outcome), [Outcome.ALLOW, Outcome.ALLOW]);
      await assert.rejects(check(s.sessionId, USD(1)), (e) => ConnectError.from(e).code === Code.FailedPrecondition);
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.EXHAUSTED);
      const events = await eventsOf(s.sessionId);
      assert.deepEqual(events.map((e) => e.type), ["session.created", "session.exhausted"]);
      assert.deepEqual(events[1]!.data, { status: "EXHAUSTED", reason: "lifetime limit used up" });
    });

    test("a decision that finds its session lapsed records session.expired; the sweep adds none", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}, { expiration: { case: "ttl", value: durationFromMs(1000) } }), NO_HASH);
      clock.advance(2000);
      assert.equal((await check(s.sessionId, USD(1))).decision!.outcome, Outcome.DENY);
      await store.sweep();
      assert.deepEqual(await typesOf(s.sessionId), ["session.created", "session.expired"]);
    });

    test("the sweep records session.expired for a session nobody used", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}, { expiration: { case: "ttl", value: durationFromMs(1000) } }), NO_HASH);
      clock.advance(2000);
      await store.sweep();
      assert.deepEqual(await typesOf(s.sessionId), ["session.created", "session.expired"]);
    });

    test("capturing the last of a lifetime limit records session.exhausted", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxActions: 1n } }), NO_HASH);
      const auth = await store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(1)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(auth.decision!.outcome, Outcome.ALLOW);
      await store.capture({ sessionId: s.sessionId, authorizationId: (auth as { authorizationId: string }).authorizationId, idempotencyKey: "" } as never, NO_HASH);
      assert.deepEqual(await typesOf(s.sessionId), ["session.created", "authorization.captured", "session.exhausted"]);
    });

    test("authorizations record what became of them: captured (with what was released), voided, expired", async () => {
      const s = await store.createSession(sessionRequest(agent(), { holdTtl: durationFromMs(60_000) }), NO_HASH);
      const authorize = async (units: number) => {
        const r = await store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(units)), idempotencyKey: "", requestHash: NO_HASH });
        return (r as { authorizationId: string }).authorizationId;
      };
      const a1 = await authorize(5);
      const a2 = await authorize(6);
      const a3 = await authorize(7);
      await store.capture({ sessionId: s.sessionId, authorizationId: a1, amount: { currencyCode: "USD", amountMicros: USD(3) }, idempotencyKey: "" } as never, NO_HASH);
      await store.void({ sessionId: s.sessionId, authorizationId: a2, idempotencyKey: "" } as never, NO_HASH);
      clock.advance(61_000);
      const swept = await store.sweep();
      assert.equal(swept.holds, 1);
      const events = await eventsOf(s.sessionId);
      assert.deepEqual(
        events.map((e) => e.type),
        ["session.created", "authorization.captured", "authorization.voided", "authorization.expired"],
      );
      assert.deepEqual(events[1]!.data, { authorization_id: a1, currency: "USD", captured_amount_micros: "3000000", released_amount_micros: "2000000" });
      assert.deepEqual(events[2]!.data, { authorization_id: a2, currency: "USD", released_amount_micros: "6000000" });
      assert.deepEqual(events[3]!.data, { authorization_id: a3, currency: "USD", released_amount_micros: "7000000" });
    });

    test("session.limit_reached: once per limit and window, told again in the next window, never for the per-transaction cap", async () => {
      const s = await store.createSession(
        sessionRequest(agent(), { daily: { maxValueMicros: USD(10) }, maxPerTransactionMicros: USD(8) }, { expiration: { case: "ttl", value: durationFromMs(3 * 86_400_000) } }),
        NO_HASH,
      );
      assert.equal((await check(s.sessionId, USD(9))).decision!.outcome, Outcome.DENY); // per transaction only
      assert.equal((await check(s.sessionId, USD(6))).decision!.outcome, Outcome.ALLOW);
      assert.equal((await check(s.sessionId, USD(5))).decision!.outcome, Outcome.DENY); // daily
      assert.equal((await check(s.sessionId, USD(5))).decision!.outcome, Outcome.DENY); // daily again: no second event
      let reached = (await eventsOf(s.sessionId)).filter((e) => e.type === "session.limit_reached");
      assert.equal(reached.length, 1);
      const data = reached[0]!.data;
      assert.equal(data.reason, "LIMIT_DAILY_VALUE");
      assert.equal(data.scope, "SESSION");
      assert.equal(data.scope_id, s.sessionId);
      assert.equal(data.window, "DAY");
      assert.equal(data.value_limit_micros, "10000000");
      assert.equal(data.window_start_time, new Date(Date.UTC(2026, 10, 21)).toISOString());
      assert.equal(data.window_end_time, new Date(Date.UTC(2026, 10, 22)).toISOString());
      assert.match(String(data.action_id), /^act_/);
      clock.advance(86_400_000);
      assert.equal((await check(s.sessionId, USD(6))).decision!.outcome, Outcome.ALLOW);
      assert.equal((await check(s.sessionId, USD(6))).decision!.outcome, Outcome.DENY);
      reached = (await eventsOf(s.sessionId)).filter((e) => e.type === "session.limit_reached");
      assert.equal(reached.length, 2);
      assert.equal(reached[1]!.data.window_start_time, new Date(Date.UTC(2026, 10, 22)).toISOString());
    });

    test("every event takes the next position, in the order events were recorded", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await store.setPaused(s.sessionId, true, "look");
      await store.setPaused(s.sessionId, false, "fine");
      const { rows } = await t.db.query<{ position: string; seq: string }>("SELECT position, seq FROM events ORDER BY position");
      const positions = rows.map((r) => BigInt(r.position));
      for (let i = 1; i < positions.length; i++) assert.ok(positions[i]! > positions[i - 1]!);
      const bySeq = [...rows].sort((a, b) => Number(BigInt(a.seq) - BigInt(b.seq)));
      assert.deepEqual(bySeq.map((r) => r.position), rows.map((r) => r.position));
    });

    test("deliveries are queued with the event for active endpoints subscribed to its type only", async () => {
      const revoked = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/a", eventTypes: ["session.revoked"] }));
      const all = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/b", eventTypes: ["session.created", "session.revoked"] }));
      assert.match(revoked.secret, /^whsec_/);
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      const { rows } = await t.db.query<{ endpoint_id: string; type: string; status: number; attempts: number }>(
        `SELECT d.endpoint_id, e.type, d.status, d.attempts FROM webhook_deliveries d JOIN events e USING (event_id)
          WHERE e.session_id = $1 ORDER BY e.seq, d.endpoint_id`,
        [s.sessionId],
      );
      const ids = [revoked.endpoint.endpointId, all.endpoint.endpointId].sort();
      assert.deepEqual(
        rows.map((r) => [r.endpoint_id, r.type]),
        [[all.endpoint.endpointId, "session.created"], ...ids.map((id) => [id, "session.revoked"])],
      );
      assert.ok(rows.every((r) => r.status === 1 && r.attempts === 0));
      await hooks.deleteEndpoint(revoked.endpoint.endpointId);
      await hooks.deleteEndpoint(all.endpoint.endpointId);
    });

    test("claims skip rows another transaction holds (SKIP LOCKED), so replicas never send one delivery twice at once", async () => {
      const ep = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/c", eventTypes: ["session.created"] }));
      await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const first = await hooks.claimDue(1, 30_000);
      const rest = await hooks.claimDue(10, 30_000);
      assert.equal(first.length, 1);
      assert.equal(rest.length, 1);
      assert.notEqual(first[0]!.eventId, rest[0]!.eventId);
      // Both are leased now: nothing is due until the lease runs out.
      assert.deepEqual(await hooks.claimDue(10, 30_000), []);
      clock.advance(30_001);
      assert.equal((await hooks.claimDue(10, 30_000)).length, 2);
      await hooks.deleteEndpoint(ep.endpoint.endpointId);
    });

    test("a disabled endpoint's pending deliveries wait outside the claims' range until it is enabled again", async () => {
      const ep = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/p", eventTypes: ["session.created"] }));
      const id = ep.endpoint.endpointId;
      for (let i = 0; i < 3; i++) await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      // The range of the due index a claim reads: pending and due by now.
      const dueNow = async () =>
        (
          await t.db.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 1 AND next_attempt_time <= $2::timestamptz",
            [id, new Date(clock.now()).toISOString()],
          )
        ).rows[0]!.n;
      assert.equal(await dueNow(), 3);
      const [a, b] = await hooks.claimDue(2, 30_000);
      // A's failure disables the endpoint; B is still in flight meanwhile.
      assert.match((await hooks.markFailed(a!, "HTTP 503", clock.now() + 10_000, 1)) ?? "", /consecutive failed deliveries/);
      // B fails after that: it joins the others instead of coming due in 10 s.
      assert.equal(await hooks.markFailed(b!, "HTTP 503", clock.now() + 10_000, 1), undefined);
      clock.advance(86_400_000);
      assert.equal(await dueNow(), 0, "none of them in any claim's range, however long it stays disabled");
      assert.deepEqual(await hooks.claimDue(10, 30_000), []);
      await hooks.enableEndpoint(id);
      assert.equal(await dueNow(), 3, "all due at once when enabled");
      assert.equal((await hooks.claimDue(10, 30_000)).length, 3);
      await hooks.deleteEndpoint(id);
    });
  });
}
