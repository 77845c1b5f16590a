import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, equals } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Reason, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, type AuthorizeResponse, type CheckResponse} from "../../src/gen/warden/v1/policy_service_pb.js";
import { ExtendSessionRequestSchema, ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { SessionSchema, SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { OPEN_HOLDS_SQL } from "../../src/store/hold-ledger.js";
import { DESCENDANTS_SQL } from "../../src/store/end-forks.js";
import { createWardenStore, LAPSED_SESSIONS_SQL, MAX_FORK_DEPTH, PRUNE_AGENT_KEYS_SQL, PRUNE_IDEMPOTENCY_KEYS_SQL, REARM_IDLE_CHECKS_SQL, type WardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { planWithoutSeqScans } from "../helpers/query-plan.js";

const NO_HASH = new Uint8Array(0);

async function rejects(p: Promise<unknown>, code: Code, field: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    const c = ConnectError.from(e);
    assert.equal(Code[c.code], Code[code], c.rawMessage);
    assert.match(c.rawMessage, field);
    return true;
  });
}

for (const driver of DRIVERS) {
  describe(`WardenStore on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let n = 0;
    const agent = () => `agent-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now });
    });
    after(async () => {
      await assertLedgerConsistent(t.db);
      await t.drop();
    });

    const check = (sessionId: string, amount: bigint, key = "", merchant = "acme") =>
      store.decide({ method: "check", sessionId, action: payment(amount, merchant), idempotencyKey: key, requestHash: key === "" ? NO_HASH : new Uint8Array([Number(amount % 256n)]) }) as Promise<CheckResponse>;
    const authorize = (sessionId: string, amount: bigint, key = "") =>
      store.decide({ method: "authorize", sessionId, action: payment(amount), idempotencyKey: key, requestHash: NO_HASH }) as Promise<AuthorizeResponse>;

    test("concurrent checks admit exactly what the daily limit allows", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(70) } }), NO_HASH);
      const results = await Promise.all(Array.from({ length: 50 }, () => check(s.sessionId, USD(10))));
      assert.equal(results.filter((r) => r.decision!.outcome === Outcome.ALLOW).length, 7);
      const denied = results.find((r) => r.decision!.outcome === Outcome.DENY)!;
      assert.deepEqual(denied.decision!.reasons, [Reason.LIMIT_DAILY_VALUE]);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(70));
      assert.equal(got.usage!.requestCount, 50n);
      assert.equal(got.usage!.denialCount, 43n);
      const day = got.usage!.windows.find((w) => w.window === Window.DAY)!;
      assert.equal(day.valueRemainingMicros, 0n);
    });

    test("an idempotent retry returns the first answer and charges once", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const first = await check(s.sessionId, USD(40), "k-1");
      const again = await Promise.all([check(s.sessionId, USD(40), "k-1"), check(s.sessionId, USD(40), "k-1")]);
      for (const r of again) assert.equal(r.actionId, first.actionId);
      assert.equal((await store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(40));
      await rejects(check(s.sessionId, USD(41), "k-1"), Code.InvalidArgument, /idempotency_key/);
    });

    test("authorize holds, capture commits part and releases the rest", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const a = await authorize(s.sessionId, USD(60));
      assert.equal(a.decision!.outcome, Outcome.ALLOW);
      assert.ok(a.holdExpireTime);
      // The hold counts against the limit.
      assert.equal((await authorize(s.sessionId, USD(50))).decision!.outcome, Outcome.DENY);
      await rejects(
        store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "", amount: { currencyCode: "USD", amountMicros: USD(61) } } as never, NO_HASH),
        Code.FailedPrecondition,
        /amount/,
      );
      await rejects(
        store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "", amount: { currencyCode: "EUR", amountMicros: USD(1) } } as never, NO_HASH),
        Code.InvalidArgument,
        /currency/,
      );
      const cap = await store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "", amount: { currencyCode: "USD", amountMicros: USD(25) } } as never, NO_HASH);
      assert.equal(cap.status, ActionStatus.CAPTURED);
      assert.equal(cap.capturedAmount!.amountMicros, USD(25));
      await rejects(store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "" } as never, NO_HASH), Code.FailedPrecondition, /already captured/);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(25));
      assert.equal(got.usage!.valueHeldMicros, 0n);
      assert.equal((await authorize(s.sessionId, USD(75))).decision!.outcome, Outcome.ALLOW);
    });

    test("void releases; capture after void or expiry fails; the sweeper expires holds", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxActions: 2n }, holdTtl: durationFromMs(60_000) }), NO_HASH);
      const a = await authorize(s.sessionId, USD(1));
      const v = await store.void({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      assert.equal(v.status, ActionStatus.VOIDED);
      await rejects(store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "" } as never, NO_HASH), Code.FailedPrecondition, /voided/);
      const b = await authorize(s.sessionId, USD(1));
      const c = await authorize(s.sessionId, USD(1));
      assert.equal((await authorize(s.sessionId, USD(1))).decision!.outcome, Outcome.DENY);
      clock.advance(61_000);
      await rejects(store.capture({ sessionId: s.sessionId, authorizationId: b.authorizationId, idempotencyKey: "" } as never, NO_HASH), Code.FailedPrecondition, /expired/);
      assert.deepEqual(await store.sweep(), {
        sessions: 0,
        holds: 1,
        holdsWrittenOff: { holds: 0, value: 0n },
        approvals: 0,
        leases: { leases: 0, writtenOffValue: 0n, writtenOffActions: 0n },
        keysPruned: 0,
        failures: [],
      });
      const cRecord = (await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.find((x) => x.actionId === c.authorizationId)!;
      assert.equal(cRecord.status, ActionStatus.EXPIRED);
      assert.equal((await store.getSession(s.sessionId)).usage!.actionsHeld, 0n);
    });

    test("unknown and ended sessions, wrong currency", async () => {
      await rejects(check("nope", USD(1)), Code.NotFound, /session_id/);
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await rejects(
        store.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(1), "acme", "EUR"), idempotencyKey: "", requestHash: NO_HASH }),
        Code.InvalidArgument,
        /action\.amount\.currency_code/,
      );
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      await rejects(check(s.sessionId, USD(1)), Code.FailedPrecondition, /REVOKED/);
      const actions = await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      assert.equal(actions.actions.length, 0, "bad input writes nothing");
    });

    test("expiry by time denies once with SESSION_EXPIRED, then the session is ended", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}, { expiration: { case: "ttl", value: durationFromMs(1000) } }), NO_HASH);
      clock.advance(1000);
      const r = await check(s.sessionId, USD(1));
      assert.deepEqual(r.decision!.reasons, [Reason.SESSION_EXPIRED]);
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.EXPIRED);
    });

    test("idle timeout expires through the sweeper", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(5000) }), NO_HASH);
      clock.advance(4000);
      assert.equal((await check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      clock.advance(4000);
      assert.equal((await store.sweep()).sessions, 0);
      clock.advance(1000);
      assert.equal((await store.sweep()).sessions, 1);
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.EXPIRED);
    });

    test("the sweeper moves an active session's idle check time, and finds lapses through indexes", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(5000) }), NO_HASH);
      const checkTime = async () =>
        (await t.db.query<{ idle_check_time: Date }>("SELECT idle_check_time FROM sessions WHERE session_id = $1", [s.sessionId])).rows[0]!.idle_check_time.getTime();
      const start = clock.now();
      assert.equal(await checkTime(), start + 5000);
      clock.advance(4000);
      assert.equal((await check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      // Past the first deadline, but active since: not ended, checked again at the new one.
      clock.advance(2000);
      assert.equal((await store.sweep()).sessions, 0);
      assert.equal(await checkTime(), start + 9000);
      clock.advance(3000);
      assert.equal((await store.sweep()).sessions, 1);
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.EXPIRED);
      // Neither statement reads every live session: with sequential scans
      // priced out, both plans name the partial indexes.
      const plans: string[] = [];
      for (const sql of [REARM_IDLE_CHECKS_SQL, LAPSED_SESSIONS_SQL]) {
        plans.push(await planWithoutSeqScans(t.db, sql.replaceAll("$1::timestamptz", "now()").replaceAll("$2", "500")));
      }
      assert.match(plans[0]!, /sessions_idle_check/);
      assert.match(plans[1]!, /sessions_live/);
      assert.match(plans[1]!, /sessions_idle_check/);
    });

    test("the sweep removes an ended session's idempotency keys once the retention has passed, through an index", async () => {
      const kept = createWardenStore({ db: t.db, now: clock.now, idempotencyRetentionMs: 60_000 });
      const live = await kept.createSession(sessionRequest(agent(), {}), NO_HASH);
      const ended = await kept.createSession(sessionRequest(agent(), {}), NO_HASH);
      const checkOn = (sessionId: string, key: string) =>
        kept.decide({ method: "check", sessionId, action: payment(USD(2)), idempotencyKey: key, requestHash: new Uint8Array([7]) }) as Promise<CheckResponse>;
      const keysOf = async (sessionId: string) =>
        (await t.db.query<{ n: number }>("SELECT count(*)::int AS n FROM idempotency_keys WHERE scope = $1", [`s:${sessionId}`])).rows[0]!.n;
      const first = await checkOn(ended.sessionId, "r-1");
      await checkOn(live.sessionId, "r-2");
      await kept.terminate(ended.sessionId, SessionStatus.COMPLETED, "done");
      // Within the retention a retry still gets its first answer.
      await kept.sweep();
      assert.equal(await keysOf(ended.sessionId), 1);
      assert.equal((await checkOn(ended.sessionId, "r-1")).actionId, first.actionId);
      clock.advance(60_001);
      assert.ok((await kept.sweep()).keysPruned >= 1);
      assert.equal(await keysOf(ended.sessionId), 0, "gone once the retention passed");
      assert.equal(await keysOf(live.sessionId), 1, "a live session keeps its keys");
      // Then a retry is refused as on any ended session: never a second charge.
      await rejects(checkOn(ended.sessionId, "r-1"), Code.FailedPrecondition, /ended/);
      assert.equal((await kept.getSession(ended.sessionId)).usage!.valueCommittedMicros, USD(2));
      // A session is pruned once; the sweep's read is a range of the partial index.
      const again = await kept.sweep();
      assert.equal(again.keysPruned, 0);
      const plan = await planWithoutSeqScans(t.db, PRUNE_IDEMPOTENCY_KEYS_SQL.replaceAll("$1::timestamptz", "now()").replaceAll("$2", "500"));
      assert.match(plan, /sessions_keys_due/);
    });

    test("the sweep removes agents' CreateSession keys once the retention has passed since they were used, through an index", async () => {
      const kept = createWardenStore({ db: t.db, now: clock.now, idempotencyRetentionMs: 60_000 });
      const id = agent();
      const keysOf = async () => (await t.db.query<{ n: number }>("SELECT count(*)::int AS n FROM idempotency_keys WHERE scope = $1", [`a:${id}`])).rows[0]!.n;
      const old = sessionRequest(id, {}, { idempotencyKey: "create-old" });
      const first = await kept.createSession(old, new Uint8Array([1]));
      clock.advance(30_000);
      await kept.createSession(sessionRequest(id, {}, { idempotencyKey: "create-new" }), new Uint8Array([2]));
      // Within the retention a retry gets the session it created.
      assert.equal((await kept.createSession(old, new Uint8Array([1]))).sessionId, first.sessionId);
      await kept.sweep();
      assert.equal(await keysOf(), 2);
      clock.advance(30_001);
      assert.ok((await kept.sweep()).keysPruned >= 1);
      assert.equal(await keysOf(), 1, "the older key went, the newer one stays");
      // After it, the key is free: a retry creates another session.
      assert.notEqual((await kept.createSession(old, new Uint8Array([1]))).sessionId, first.sessionId);
      const plan = await planWithoutSeqScans(t.db, PRUNE_AGENT_KEYS_SQL.replaceAll("$1::timestamptz", "now()").replaceAll("$2", "500"));
      assert.match(plan, /idempotency_keys_agent_by_time/);
    });

    if (driver === "postgres") {
      test("a sweep skips a session another transaction holds instead of waiting for it", async () => {
        const s = await store.createSession(sessionRequest(agent(), {}, { idleTimeout: durationFromMs(5000) }), NO_HASH);
        clock.advance(4000);
        await check(s.sessionId, USD(1));
        clock.advance(2000);
        let release!: () => void;
        const held = new Promise<void>((r) => (release = r));
        let locked!: () => void;
        const isLocked = new Promise<void>((r) => (locked = r));
        const holder = t.db.transaction(async (tx) => {
          await tx.query("SELECT 1 FROM sessions WHERE session_id = $1 FOR UPDATE", [s.sessionId]);
          locked();
          await held;
        });
        await isLocked;
        try {
          const swept = await Promise.race([store.sweep(), new Promise<"waited">((r) => setTimeout(() => r("waited"), 5000))]);
          assert.notEqual(swept, "waited", "the sweep waited for the held row");
        } finally {
          release();
          await holder;
        }
        const { rows } = await t.db.query<{ idle_check_time: Date }>("SELECT idle_check_time FROM sessions WHERE session_id = $1", [s.sessionId]);
        // Skipped while held; the next sweep moves it.
        assert.equal(rows[0]!.idle_check_time.getTime(), clock.now() - 6000 + 5000);
        await store.sweep();
        assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.ACTIVE);
        const after = await t.db.query<{ idle_check_time: Date }>("SELECT idle_check_time FROM sessions WHERE session_id = $1", [s.sessionId]);
        assert.equal(after.rows[0]!.idle_check_time.getTime(), clock.now() - 2000 + 5000);
      });
    }

    test("lifetime action limit exhausts the session", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxActions: 2n } }), NO_HASH);
      await check(s.sessionId, USD(1));
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.ACTIVE);
      await check(s.sessionId, USD(1));
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.EXHAUSTED);
    });

    test("pause denies with SESSION_PAUSED; resume allows; extend moves expiry", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await store.setPaused(s.sessionId, true, "lunch");
      assert.deepEqual((await check(s.sessionId, USD(1))).decision!.reasons, [Reason.SESSION_PAUSED]);
      await rejects(store.setPaused(s.sessionId, true, ""), Code.FailedPrecondition, /PAUSED/);
      await store.setPaused(s.sessionId, false, "");
      assert.equal((await check(s.sessionId, USD(1))).decision!.outcome, Outcome.ALLOW);
      const ext = await store.extendSession({ sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(60_000) } } as never);
      assert.equal(Number(ext.expireTime!.seconds) - Number(s.expireTime!.seconds), 60);
    });

    test("a fork cannot exceed what the parent has left, and its spend counts against the parent", async () => {
      const parent = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      await check(parent.sessionId, USD(30));
      const forkReq = (max: bigint) =>
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: max } } });
      await rejects(store.forkSession(forkReq(USD(71)), NO_HASH), Code.FailedPrecondition, /policy\.lifetime\.max_value_micros/);
      // Nor a shorter window: 71 a day of a parent with 70 left in all.
      const daily = (max: bigint) =>
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", daily: { maxValueMicros: max } } });
      await rejects(store.forkSession(daily(USD(71)), NO_HASH), Code.FailedPrecondition, /policy\.daily\.max_value_micros: 71\.00 USD is more than session "\S+" has left in its lifetime \(70\.00 USD\)/);
      const child = await store.forkSession(forkReq(USD(70)), NO_HASH);
      assert.equal(child.parentSessionId, parent.sessionId);
      assert.equal((await check(child.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      // The parent has 20 left: 25 more in the parent is denied, by the parent's own limit.
      assert.equal((await check(parent.sessionId, USD(25))).decision!.outcome, Outcome.DENY);
      // And a child charge the parent cannot cover is denied with the parent named.
      await check(parent.sessionId, USD(15));
      const r = await check(child.sessionId, USD(10));
      assert.equal(r.decision!.outcome, Outcome.DENY);
      assert.ok(r.decision!.violations.some((v) => v.scopeId === parent.sessionId));
      // Revoking the parent ends the fork too.
      await store.terminate(parent.sessionId, SessionStatus.REVOKED, "done");
      assert.equal((await store.getSession(child.sessionId)).status, SessionStatus.REVOKED);
    });

    test("a fork's daily limit fits in what the parent has left this week and this month; its weekly limit is not held to a month", async () => {
      const fork = (parentSessionId: string, policy: object) =>
        store.forkSession(create(ForkSessionRequestSchema, { parentSessionId, policy: { currencyCode: "USD", ...policy } }), NO_HASH);
      const weekly = await store.createSession(sessionRequest(agent(), { weekly: { maxValueMicros: USD(100) } }), NO_HASH);
      const monthly = await store.createSession(sessionRequest(agent(), { monthly: { maxValueMicros: USD(100) } }), NO_HASH);
      await check(weekly.sessionId, USD(95));
      await check(monthly.sessionId, USD(95));
      await rejects(fork(weekly.sessionId, { daily: { maxValueMicros: USD(50) } }), Code.FailedPrecondition, /^policy\.daily\.max_value_micros: 50\.00 USD is more than session "\S+" has left this week \(5\.00 USD\)/);
      await rejects(fork(monthly.sessionId, { daily: { maxValueMicros: USD(50) } }), Code.FailedPrecondition, /^policy\.daily\.max_value_micros: 50\.00 USD is more than session "\S+" has left this month \(5\.00 USD\)/);
      // A week may run into next month, where the parent's month starts afresh.
      assert.ok(await fork(monthly.sessionId, { weekly: { maxValueMicros: USD(50) } }));
      assert.ok(await fork(weekly.sessionId, { daily: { maxValueMicros: USD(5) } }));
    });

    test("ending a session ends its forks at every depth, found through the ancestor index", async () => {
      const id = agent();
      const root = await store.createSession(sessionRequest(id, {}), NO_HASH);
      const other = await store.createSession(sessionRequest(id, {}), NO_HASH);
      const fork = (parent: string) =>
        store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent, policy: { currencyCode: "USD" } }), NO_HASH);
      const child = await fork(root.sessionId);
      const grandchild = await fork(child.sessionId);
      const cousin = await fork(other.sessionId);
      const { rows } = await t.db.query<{ session_id: string }>(DESCENDANTS_SQL, [root.sessionId]);
      assert.deepEqual(rows.map((r) => r.session_id).sort(), [child.sessionId, grandchild.sessionId].sort());
      await store.terminate(root.sessionId, SessionStatus.REVOKED, "done");
      for (const s of [child, grandchild]) assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.REVOKED);
      for (const s of [other, cousin]) assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.ACTIVE);
      // The lookup can use the partial index: with sequential scans priced
      // out, the plan names it. A lookup the index cannot serve (such as
      // `$1 = ANY(ancestor_ids)`) plans a sequential scan whatever the price.
      const plan = await planWithoutSeqScans(t.db, DESCENDANTS_SQL.replace("$1::text", "'x'::text"));
      assert.match(plan, /sessions_by_ancestor/);
    });

    test(`forks go at most ${MAX_FORK_DEPTH} deep, by ForkSession or by ImportSession`, async () => {
      const id = agent();
      const fork = (parent: string, sessionId = "") =>
        store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent, sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      let deepest = (await store.createSession(sessionRequest(id, {}), NO_HASH)).sessionId;
      for (let depth = 1; depth <= MAX_FORK_DEPTH; depth++) deepest = (await fork(deepest, depth === MAX_FORK_DEPTH ? `deepest-${id}` : "")).sessionId;
      assert.equal((await store.getSession(deepest)).parentSessionId !== "", true);
      await rejects(fork(deepest), Code.FailedPrecondition, new RegExp(`^parent_session_id: session "${deepest}" is a fork ${MAX_FORK_DEPTH} deep; forks go at most ${MAX_FORK_DEPTH} deep$`));
      // A snapshot of a fork whose parent bears the deepest one's id (ids are the client's).
      const elsewhere = await store.createSession(sessionRequest(agent(), {}, { sessionId: `deepest-src-${id}` }), NO_HASH);
      const snap = await store.exportSession((await fork(elsewhere.sessionId)).sessionId);
      snap.session!.sessionId = `${snap.session!.sessionId}-copy`;
      snap.session!.agentId = id;
      snap.session!.parentSessionId = deepest;
      for (const a of snap.actions) a.sessionId = snap.session!.sessionId;
      await rejects(store.importSession(snap), Code.FailedPrecondition, new RegExp(`^snapshot\\.session\\.parent_session_id: session "${deepest}" here is a fork ${MAX_FORK_DEPTH} deep; forks go at most ${MAX_FORK_DEPTH} deep$`));
    });

    test("ending a session finds its open holds through an index of open holds, not its every action", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      for (let i = 0; i < 3; i++) await check(s.sessionId, USD(1));
      const held = await authorize(s.sessionId, USD(20));
      const plan = await planWithoutSeqScans(t.db, `SELECT action_id FROM actions WHERE session_id = ANY(ARRAY['${s.sessionId}']) AND ${OPEN_HOLDS_SQL}`);
      assert.match(plan, /actions_open_by_session/);
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "done");
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueHeldMicros, 0n, "the hold was released");
      assert.equal(got.usage!.valueCommittedMicros, USD(3));
      const actions = await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      assert.equal(actions.actions.find((a) => a.actionId === held.authorizationId)!.status, ActionStatus.VOIDED);
    });

    test("an agent policy spans all of its sessions", async () => {
      const id = agent();
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", monthly: { maxValueMicros: USD(50) } } }));
      const s1 = await store.createSession(sessionRequest(id, {}), NO_HASH);
      const s2 = await store.createSession(sessionRequest(id, {}), NO_HASH);
      assert.equal((await check(s1.sessionId, USD(30))).decision!.outcome, Outcome.ALLOW);
      const r = await check(s2.sessionId, USD(30));
      assert.deepEqual(r.decision!.reasons, [Reason.LIMIT_MONTHLY_VALUE]);
      const a = await store.getAgent(id);
      assert.equal(a.sessionCount, 2n);
      assert.equal(a.budgets.find((b) => b.window === Window.MONTH)!.valueRemainingMicros, USD(20));
      await rejects(store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD" }, etag: '"999"' })), Code.Aborted, /etag/);
    });

    test("an UpdateAgentPolicy retried with its idempotency key gets the first answer, not ABORTED for the etag it made stale", async () => {
      const id = agent();
      const first = await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD" } }));
      const req = create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", monthly: { maxValueMicros: USD(50) } }, etag: first.etag, idempotencyKey: "policy-1" });
      const updated = await store.updateAgentPolicy(req, new Uint8Array([1]));
      assert.notEqual(updated.etag, first.etag);
      clock.advance(1000);
      const retry = await store.updateAgentPolicy(req, new Uint8Array([1]));
      assert.equal(retry.etag, updated.etag, "applied once: no second revision");
      assert.equal((await store.getAgent(id)).etag, updated.etag);
      // Without its key the same request is refused: its etag is stale.
      await rejects(store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { ...req, idempotencyKey: "" })), Code.Aborted, /etag/);
      // The key names that request only.
      await rejects(store.updateAgentPolicy(req, new Uint8Array([2])), Code.InvalidArgument, /idempotency_key: "policy-1" was already used/);
    });

    test("an agent's value limits in one currency are refused while the windows they limit hold spend in another", async () => {
      const id = agent();
      const yen = await store.createSession(sessionRequest(id, { currencyCode: "JPY" }), NO_HASH);
      await store.decide({ method: "check", sessionId: yen.sessionId, action: payment(10_000n * 1_000_000n, "acme", "JPY"), idempotencyKey: "", requestHash: NO_HASH });
      await store.terminate(yen.sessionId, SessionStatus.COMPLETED, "done");
      const usd = (policy: object) => store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", ...policy } }));
      // 10,000 yen would count as 10,000 dollars of the agent's lifetime, and of this month.
      await rejects(usd({ lifetime: { maxValueMicros: USD(100) } }), Code.FailedPrecondition, /^policy.currency_code: agent \S+'s lifetime hold spend in JPY \(session "\S+"\)/);
      await rejects(usd({ monthly: { maxValueMicros: USD(100) } }), Code.FailedPrecondition, /current windows hold spend in JPY/);
      // Action counts have no unit; and once the yen's month is over, a monthly limit starts clean.
      await usd({ monthly: { maxActions: 5n } });
      clock.advance(32 * 24 * 3_600_000);
      const a = await usd({ monthly: { maxValueMicros: USD(100) } });
      assert.equal(a.budgets.find((b) => b.window === Window.MONTH)!.valueUsedMicros, 0n);
    });

    test("an agent's value limits are refused while the window a time-zone change would carry over holds spend in another currency", async () => {
      const HOUR = 3_600_000;
      const DAY = 24 * HOUR;
      // 02:00 UTC: the evening before in New York.
      clock.advance(DAY - (clock.now() % DAY) + 2 * HOUR);
      const id = agent();
      const yen = await store.createSession(sessionRequest(id, { currencyCode: "JPY" }), NO_HASH);
      const r = await store.decide({ method: "check", sessionId: yen.sessionId, action: payment(10_000n * 1_000_000n, "acme", "JPY"), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(r.decision!.outcome, Outcome.ALLOW);
      await store.terminate(yen.sessionId, SessionStatus.COMPLETED, "done");
      const usd = () =>
        store.updateAgentPolicy(
          create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) }, timeZone: "America/New_York" } }),
        );
      // 12:00 UTC: the New York day began (04:00 or 05:00 UTC) after the yen
      // session ended, but the agent's UTC day, which holds the yen, carries into it.
      clock.advance(10 * HOUR);
      await rejects(usd(), Code.FailedPrecondition, /^policy.currency_code: agent \S+'s current windows hold spend in JPY \(session "\S+"\)/);
      // The next New York day begins after that UTC day surely ended: nothing carries.
      clock.advance(DAY);
      const a = await usd();
      assert.equal(a.budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros, 0n);
    });

    test("an agent's value limits must be in the currency of its live sessions, both ways", async () => {
      const id = agent();
      const s = await store.createSession(sessionRequest(id, {}), NO_HASH);
      const eur = (policy: object) => store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "EUR", ...policy } }));
      await rejects(eur({ daily: { maxValueMicros: USD(50) } }), Code.FailedPrecondition, /policy.currency_code: EUR differs from USD/);
      await rejects(eur({ maxPerTransactionMicros: USD(5) }), Code.FailedPrecondition, /policy.currency_code/);
      // An approval threshold is money too: "above 100 EUR" says nothing of USD.
      await rejects(eur({ requireApprovalAboveMicros: USD(100) }), Code.FailedPrecondition, /policy.currency_code/);
      // Action counts alone have no unit; an ended session no longer counts.
      await eur({ daily: { maxActions: 5n } });
      await store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      await eur({ daily: { maxValueMicros: USD(50) } });
      await rejects(store.createSession(sessionRequest(id, {}), NO_HASH), Code.FailedPrecondition, /policy.currency_code: USD differs from agent/);
      // Nor can one come in by ImportSession: a USD snapshot under this EUR-limited agent.
      const other = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const snap = await store.exportSession(other.sessionId);
      snap.session!.sessionId = `${other.sessionId}-moved`;
      snap.session!.agentId = id;
      await rejects(store.importSession(snap), Code.FailedPrecondition, /snapshot.session.policy.currency_code: USD differs from agent/);
      await rejects(store.getSession(`${other.sessionId}-moved`), Code.NotFound, /./);
    });

    test("export and import round-trip a session with its history", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }, { labels: { team: "a" } }), NO_HASH);
      await check(s.sessionId, USD(10));
      await authorize(s.sessionId, USD(5));
      const snap = await store.exportSession(s.sessionId);
      assert.equal(snap.actions.length, 2);
      await rejects(store.importSession(snap), Code.AlreadyExists, /session_id/);
      const t2 = await openTestDatabase(driver);
      try {
        const other = createWardenStore({ db: t2.db, now: clock.now });
        const imported = await other.importSession(snap);
        assert.equal(imported.usage!.valueCommittedMicros, USD(10));
        assert.equal(imported.usage!.valueHeldMicros, USD(5));
        assert.deepEqual(imported.labels, { team: "a" });
        assert.equal((await other.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.length, 2);
        const r = (await other.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(86)), idempotencyKey: "", requestHash: NO_HASH })) as CheckResponse;
        assert.deepEqual(r.decision!.reasons, [Reason.LIMIT_DAILY_VALUE]);
      } finally {
        await t2.drop();
      }
    });

    test("list sessions filters and pages", async () => {
      const id = agent();
      for (let i = 0; i < 5; i++) {
        clock.advance(1);
        await store.createSession(sessionRequest(id, {}, { labels: { i: String(i % 2) } }), NO_HASH);
      }
      const page1 = await store.listSessions({ agentId: id, status: 0, labels: {}, pageSize: 3, pageToken: "" } as never);
      assert.equal(page1.sessions.length, 3);
      const page2 = await store.listSessions({ agentId: id, status: 0, labels: {}, pageSize: 3, pageToken: page1.nextPageToken } as never);
      assert.equal(page2.sessions.length, 2);
      assert.equal(page2.nextPageToken, "");
      const ids = new Set([...page1.sessions, ...page2.sessions].map((s) => s.sessionId));
      assert.equal(ids.size, 5);
      const odd = await store.listSessions({ agentId: id, status: 0, labels: { i: "1" }, pageSize: 10, pageToken: "" } as never);
      assert.equal(odd.sessions.length, 2);
    });

    test("a ListSessions page token only continues its own filters; page_size may change", async () => {
      const id = agent();
      for (let i = 0; i < 5; i++) {
        clock.advance(1);
        await store.createSession(sessionRequest(id, {}, { labels: { team: "t", env: "prod" } }), NO_HASH);
      }
      const list = (filter: object, pageSize: number, pageToken: string) =>
        store.listSessions({ agentId: id, status: 0, labels: { team: "t", env: "prod" }, ...filter, pageSize, pageToken } as never);
      const page1 = await list({}, 2, "");
      assert.equal(page1.sessions.length, 2);
      const different = /^page_token: was issued for a different query \(agent_id, status and labels must be the same as on the first page/;
      for (const other of [{ agentId: agent() }, { status: SessionStatus.ACTIVE }, { labels: { team: "t" } }, { labels: { team: "t", env: "dev" } }]) {
        await rejects(list(other, 2, page1.nextPageToken), Code.InvalidArgument, different);
      }
      // The same filters (labels in another order) with a larger page: the rest, none twice.
      const page2 = await list({ labels: { env: "prod", team: "t" } }, 10, page1.nextPageToken);
      assert.equal(page2.nextPageToken, "");
      const ids = [...page1.sessions, ...page2.sessions].map((s) => s.sessionId);
      assert.equal(ids.length, 5);
      assert.equal(new Set(ids).size, 5);
    });

    test("a ListActions page token from one session is INVALID_ARGUMENT for another", async () => {
      const a = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const b = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      for (const s of [a, b]) for (let i = 1; i <= 3; i++) await check(s.sessionId, USD(i));
      const page1 = await store.listActions({ sessionId: a.sessionId, pageSize: 2, pageToken: "" } as never);
      assert.notEqual(page1.nextPageToken, "");
      await rejects(
        store.listActions({ sessionId: b.sessionId, pageSize: 2, pageToken: page1.nextPageToken } as never),
        Code.InvalidArgument,
        /^page_token: was issued for a different query \(session_id must be the same as on the first page/,
      );
      const page2 = await store.listActions({ sessionId: a.sessionId, pageSize: 5, pageToken: page1.nextPageToken } as never);
      assert.equal(page2.actions.length, 1);
      assert.equal(page2.nextPageToken, "");
    });

    test("CreateSession is idempotent per agent and key", async () => {
      const id = agent();
      const req = sessionRequest(id, {}, { idempotencyKey: "create-1" });
      const a = await store.createSession(req, new Uint8Array([1]));
      const b = await store.createSession(req, new Uint8Array([1]));
      assert.equal(a.sessionId, b.sessionId);
      await rejects(store.createSession(req, new Uint8Array([2])), Code.InvalidArgument, /idempotency_key/);
      await rejects(store.createSession(sessionRequest(id, {}, { sessionId: a.sessionId }), NO_HASH), Code.AlreadyExists, /session_id/);
    });

    test("an ExtendSession retried with its idempotency key extends once and returns the first answer", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const req = create(ExtendSessionRequestSchema, { sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(3_600_000) }, idempotencyKey: "extend-1" });
      const hash = new Uint8Array([7]);
      const first = await store.extendSession(req, hash);
      assert.equal(timestampMs(first.expireTime!), timestampMs(s.expireTime!) + 3_600_000);
      clock.advance(1000);
      const retry = await store.extendSession(req, hash);
      assert.equal(timestampMs(retry.expireTime!), timestampMs(first.expireTime!), "a lost answer's retry extends again");
      assert.equal(timestampMs((await store.getSession(s.sessionId)).expireTime!), timestampMs(first.expireTime!));
      // The key names that request only.
      await rejects(store.extendSession(req, new Uint8Array([8])), Code.InvalidArgument, /idempotency_key/);
      // Without a key, each call extends.
      const again = await store.extendSession(create(ExtendSessionRequestSchema, { sessionId: s.sessionId, extension: req.extension }), NO_HASH);
      assert.equal(timestampMs(again.expireTime!), timestampMs(first.expireTime!) + 3_600_000);
    });

    test("Pause, Resume, End and Revoke retried with their idempotency keys change once and return the first answer", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const keyed = (idempotencyKey: string, hash: number) => ({ idempotencyKey, requestHash: new Uint8Array([hash]) });
      const same = (a: unknown, b: unknown) => assert.ok(equals(SessionSchema, a as never, b as never), "the first answer");

      const paused = await store.setPaused(s.sessionId, true, "hold on", keyed("pause-1", 1));
      assert.equal(paused.status, SessionStatus.PAUSED);
      clock.advance(1000);
      same(await store.setPaused(s.sessionId, true, "hold on", keyed("pause-1", 1)), paused);
      // Without its key the retry is refused: the session is paused already.
      await rejects(store.setPaused(s.sessionId, true, "hold on"), Code.FailedPrecondition, /is PAUSED/);
      const resumed = await store.setPaused(s.sessionId, false, "", keyed("resume-1", 2));
      assert.equal(resumed.status, SessionStatus.ACTIVE);
      same(await store.setPaused(s.sessionId, false, "", keyed("resume-1", 2)), resumed);
      // A key names one call on the session: another is refused, and changes nothing.
      await rejects(store.terminate(s.sessionId, SessionStatus.COMPLETED, "done", keyed("resume-1", 3)), Code.InvalidArgument, /idempotency_key: "resume-1" was already used/);
      assert.equal((await store.getSession(s.sessionId)).status, SessionStatus.ACTIVE);

      const ended = await store.terminate(s.sessionId, SessionStatus.COMPLETED, "done", keyed("end-1", 4));
      assert.equal(ended.status, SessionStatus.COMPLETED);
      clock.advance(1000);
      same(await store.terminate(s.sessionId, SessionStatus.COMPLETED, "done", keyed("end-1", 4)), ended);
      // A new key is a new call, on a session that has ended.
      await rejects(store.terminate(s.sessionId, SessionStatus.COMPLETED, "done", keyed("end-2", 4)), Code.FailedPrecondition, /already ended \(COMPLETED\)/);
      const events = await t.db.query<{ type: string }>("SELECT type FROM events WHERE session_id = $1 AND type LIKE 'session.%' ORDER BY seq", [s.sessionId]);
      assert.deepEqual(
        events.rows.map((e) => e.type),
        ["session.created", "session.paused", "session.resumed", "session.completed"],
      );

      const r = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const revoked = await store.terminate(r.sessionId, SessionStatus.REVOKED, "leaked key", keyed("revoke-1", 5));
      assert.equal(revoked.status, SessionStatus.REVOKED);
      same(await store.terminate(r.sessionId, SessionStatus.REVOKED, "leaked key", keyed("revoke-1", 5)), revoked);
      // The same key with another reason is another request.
      await rejects(store.terminate(r.sessionId, SessionStatus.REVOKED, "other", keyed("revoke-1", 6)), Code.InvalidArgument, /idempotency_key/);
    });

    test("a CreateSession retried after the expire_time it asked for gets the first answer", async () => {
      const req = sessionRequest(agent(), {}, { expiration: { case: "expireTime", value: timestampFromMs(clock.ms + 60_000) }, idempotencyKey: "create-late" });
      const first = await store.createSession(req, new Uint8Array([1]));
      clock.advance(120_000);
      assert.equal((await store.createSession(req, new Uint8Array([1]))).sessionId, first.sessionId);
      // Without the key, the same request is too late.
      await rejects(store.createSession(sessionRequest(agent(), {}, { expiration: req.expiration }), NO_HASH), Code.InvalidArgument, /^expire_time: must be in the future/);
    });

    test("a session id may not name an agent's audit chain, in a create, a fork or an import", async () => {
      const id = agent();
      await rejects(store.createSession(sessionRequest(id, {}, { sessionId: `agent:${id}` }), NO_HASH), Code.InvalidArgument, /^session_id: "agent:"/);
      const parent = await store.createSession(sessionRequest(id, {}), NO_HASH);
      await rejects(
        store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, sessionId: "agent:x", policy: { currencyCode: "USD" } }), NO_HASH),
        Code.InvalidArgument,
        /^session_id: "agent:"/,
      );
      const snap = await store.exportSession(parent.sessionId);
      snap.session!.sessionId = "agent:y";
      await rejects(store.importSession(snap), Code.InvalidArgument, /^snapshot\.session\.session_id: "agent:"/);
    });

    test("a CreateSession retried while the first is still running creates one session, not one budget per retry", async () => {
      const id = agent();
      const req = sessionRequest(id, { lifetime: { maxValueMicros: USD(100) } }, { idempotencyKey: "create-once" });
      const hash = new Uint8Array([7]);
      const made = await Promise.all([store.createSession(req, hash), store.createSession(req, hash), store.createSession(req, hash)]);
      assert.deepEqual(new Set(made.map((s) => s.sessionId)).size, 1, "every retry got the first answer");
      const { rows } = await t.db.query<{ n: number }>("SELECT count(*)::int AS n FROM sessions WHERE agent_id = $1", [id]);
      assert.equal(rows[0]!.n, 1);
    });

    // Last: it moves the shared clock half a day on.
    test("a hold settled after its day rolled over changes lifetime, not the new day", async () => {
      // 2 minutes before midnight UTC.
      clock.advance(Date.UTC(2026, 10, 22) - 120_000 - clock.now());
      const s = await store.createSession(
        sessionRequest(agent(), { daily: { maxValueMicros: USD(100) }, lifetime: { maxValueMicros: USD(1000) } }),
        NO_HASH,
      );
      const a = await authorize(s.sessionId, USD(60));
      const b = await authorize(s.sessionId, USD(30));
      assert.equal(a.decision!.outcome, Outcome.ALLOW);
      clock.advance(180_000);
      // The new day starts empty: the old day's holds limit it no more.
      assert.equal((await check(s.sessionId, USD(100))).decision!.outcome, Outcome.ALLOW);
      await store.capture({ sessionId: s.sessionId, authorizationId: a.authorizationId, idempotencyKey: "", amount: { currencyCode: "USD", amountMicros: USD(50) } } as never, NO_HASH);
      await store.void({ sessionId: s.sessionId, authorizationId: b.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(150));
      assert.equal(got.usage!.valueHeldMicros, 0n);
      const day = got.usage!.windows.find((w) => w.window === Window.DAY)!;
      assert.equal(day.valueUsedMicros, USD(100));
      await assertLedgerConsistent(t.db);
    });
  });
}
