import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { DecisionSchema, Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionRecordSchema, ActionStatus, type CheckResponse, CheckResponseSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import {
  AcquireLeaseRequestSchema,
  IdempotencyKeyClaimSchema,
  IdempotencyKeyState,
  type Lease,
  HoldRelease,
  type LeaseRecord,
  LeaseRecordSchema,
  LeaseSettlementSchema,
  type LeaseReport,
  LeaseReportSchema,
  ReportLeasesRequestSchema,
} from "../../src/gen/warden/v1/sync_service_pb.js";
import { ExtendSessionRequestSchema, ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { SIDECAR_HOLD_GRACE_MS } from "../../src/store/hold-ledger.js";
import { newId } from "../../src/store/ids.js";
import { LEASE_TOTALS_SQL } from "../../src/store/session-row.js";
import { CHANGED_SESSIONS_SQL, SETTLED_HOLDS_SQL } from "../../src/store/session-sync.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { planWithoutSeqScans } from "../helpers/query-plan.js";

const NO_HASH = new Uint8Array(0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const driver of DRIVERS) {
  describe(`LeaseLedger on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let n = 0;
    const agent = () => `lease-agent-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now, leaseReconcileGraceMs: 1000 });
    });
    after(async () => {
      await assertLedgerConsistent(t.db);
      await t.drop();
    });

    const acquire = (sessionId: string, desiredValue: bigint, desiredActions = 100n, ttlMs = 30_000) =>
      store.leases.acquire(
        create(AcquireLeaseRequestSchema, {
          sessionId,
          holder: "sidecar-1",
          desiredValueMicros: desiredValue,
          desiredActions,
          minValueMicros: 1n,
          ttl: durationFromMs(ttlMs),
        }),
      );
    const record = (method: "check" | "authorize", amount: bigint, outcome = Outcome.ALLOW, holdMs = 60_000) =>
      create(LeaseRecordSchema, {
        actionId: newId("act", clock.ms),
        method,
        action: payment(amount),
        decision: create(DecisionSchema, { outcome, message: "x" }),
        createTime: timestampFromMs(clock.ms),
        holdExpireTime: method === "authorize" ? timestampFromMs(clock.ms + holdMs) : undefined,
        processingNanos: 1000n,
      });
    const report = (...reports: LeaseReport[]) => store.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports }));
    const rep = (
      sessionId: string,
      lease: Lease | undefined,
      init: {
        records?: LeaseRecord[];
        settlements?: MessageInitShape<typeof LeaseSettlementSchema>[];
        release?: boolean;
        releasedClaims?: { idempotencyKey: string; actionId: string }[];
      },
    ) =>
      create(LeaseReportSchema, { sessionId, leaseId: lease?.leaseId ?? "", ...init });
    const day = async (sessionId: string) => (await store.getSession(sessionId)).usage!.windows.find((w) => w.window === Window.DAY)!;

    test("a grant is at most half of what is left and is held in every window", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100), maxActions: 10n } }), NO_HASH);
      const l1 = (await acquire(s.sessionId, USD(80)))!;
      assert.equal(l1.valueMicros, USD(50));
      assert.equal(l1.actions, 5n);
      const l2 = (await acquire(s.sessionId, USD(10)))!;
      assert.equal(l2.valueMicros, USD(10), "a small wish is granted whole");
      const d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, USD(60));
      assert.equal(d.valueRemainingMicros, USD(40));
      // The usage in the grant includes the grant itself.
      const u = l2.usage.find((c) => c.scopeKey === `s:${s.sessionId}` && c.window === Window.DAY)!;
      assert.equal(u.valueMicros, USD(60));
      await assertLedgerConsistent(t.db);
    });

    test("leases shrink near the limit and stop when nothing useful is left", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: 8n } }), NO_HASH);
      const grants: bigint[] = [];
      for (let i = 0; i < 6; i++) {
        const l = await acquire(s.sessionId, 100n);
        if (l === undefined) break;
        grants.push(l.valueMicros!);
      }
      assert.deepEqual(grants, [4n, 2n, 1n]);
      assert.equal(await acquire(s.sessionId, 100n), undefined);
    });

    test("an unlimited dimension is granted unlimited and reserves nothing", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxActions: 4n } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(1000), 100n))!;
      assert.equal(l.valueMicros, undefined);
      assert.equal(l.actions, 2n);
    });

    test("records move spend out of the lease; a retried report charges nothing twice; release returns the rest", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(40)))!;
      const r1 = record("check", USD(10));
      const r2 = record("check", USD(5));
      const denied = record("check", USD(1), Outcome.DENY);
      const first = rep(s.sessionId, l, { records: [r1, r2, denied] });
      assert.deepEqual(await report(first), []);
      assert.deepEqual(await report(first), [], "a retry is accepted");
      let d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, USD(40), "committed 15 + still leased 25");
      assert.equal((await store.getSession(s.sessionId)).usage!.valueLeasedMicros, USD(25));
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(15));
      assert.equal(got.usage!.requestCount, 3n);
      assert.equal(got.usage!.denialCount, 1n);
      await report(rep(s.sessionId, l, { release: true }));
      d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, USD(15));
      const actions = await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      assert.equal(actions.actions.length, 3);
      await assertLedgerConsistent(t.db);
    });

    test("an idempotency key is claimed by one action, answered by its record, freed by its release or when it lapses", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(40)))!;
      const hash = (b: number) => new Uint8Array(32).fill(b);
      const act = () => newId("act", clock.ms);
      const claim = (key: string, actionId: string, h = hash(1), sessionId = s.sessionId, ttlMs = 30_000) =>
        create(IdempotencyKeyClaimSchema, { sessionId, idempotencyKey: key, method: "check", requestHash: h, actionId, ttl: durationFromMs(ttlMs) });
      const state = async (key: string, actionId = act(), ttlMs = 30_000) => (await store.claimKeys([claim(key, actionId, hash(1), s.sessionId, ttlMs)]))[0]!;
      const check = (key: string, h: Uint8Array) =>
        store.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(1)), idempotencyKey: key, requestHash: h }) as Promise<CheckResponse>;
      const keyed = (actionId: string, key: string, amount: bigint) => ({
        ...record("check", amount),
        actionId,
        idempotencyKey: key,
        requestHash: hash(1),
        response: toBinary(CheckResponseSchema, create(CheckResponseSchema, { actionId })),
      });
      const fails = (p: Promise<unknown>, code: Code, msg: RegExp) =>
        assert.rejects(p, (e: unknown) => ConnectError.from(e).code === code && msg.test(ConnectError.from(e).rawMessage));

      // The first action claims; an unknown session claims nothing.
      const a1 = act();
      const [won, unknown] = await store.claimKeys([claim("k1", a1), claim("k1", a1, hash(1), "ses_unknown")]);
      assert.equal(won!.state, IdempotencyKeyState.CLAIMED);
      assert.equal(unknown!.state, IdempotencyKeyState.UNSPECIFIED);
      // Another action (a retry on another sidecar) is told it is in
      // progress, with the claim's request and when it lapses (TTL + the
      // reconcile grace, 1 s here); the claiming action's own retry keeps it.
      const busy = await state("k1");
      assert.equal(busy.state, IdempotencyKeyState.IN_PROGRESS);
      assert.deepEqual([...busy.requestHash], [...hash(1)]);
      assert.equal(timestampMs(busy.claimExpireTime!), clock.ms + 31_000);
      assert.equal((await state("k1", a1)).state, IdempotencyKeyState.CLAIMED);
      // The store's own decisions respect the claim: in progress, or a
      // different request.
      await fails(check("k1", hash(1)), Code.Aborted, /idempotency_key: a call with "k1" is still being decided/);
      await fails(check("k1", hash(2)), Code.InvalidArgument, /idempotency_key: "k1" was already used for a different request/);
      await fails(store.claimKeys([claim("k9", act()), claim("k9", act())]), Code.InvalidArgument, /claims\[1\]: key "k9"/);

      // The claiming action's record answers the key; a record of another
      // action with it (decided unclaimed, offline) does not take a live claim.
      const a2 = act();
      assert.equal((await state("k2", a2)).state, IdempotencyKeyState.CLAIMED);
      await report(rep(s.sessionId, l, { records: [keyed(a1, "k1", USD(10)), keyed(act(), "k2", USD(3))] }));
      const answered = await state("k1");
      assert.equal(answered.state, IdempotencyKeyState.ANSWERED);
      assert.equal(fromBinary(CheckResponseSchema, answered.response).actionId, a1);
      assert.equal((await check("k1", hash(1))).actionId, a1, "the store replays it too");
      assert.equal((await state("k2")).state, IdempotencyKeyState.IN_PROGRESS);

      // A release frees only the releasing action's claim.
      await report(rep(s.sessionId, undefined, { releasedClaims: [{ idempotencyKey: "k2", actionId: act() }] }));
      assert.equal((await state("k2")).state, IdempotencyKeyState.IN_PROGRESS, "not a2's release");
      await report(rep(s.sessionId, undefined, { releasedClaims: [{ idempotencyKey: "k2", actionId: a2 }] }));
      // This claim and the next last 1 ms (+ the 1 s grace): a sidecar with
      // short leases.
      assert.equal((await state("k2", act(), 1)).state, IdempotencyKeyState.CLAIMED);

      // A claim whose sidecar never reports lapses: the key is free again,
      // for another claim or for the store's own decision.
      await report(rep(s.sessionId, l, { release: true }));
      assert.equal((await state("k3", act(), 1)).state, IdempotencyKeyState.CLAIMED);
      assert.equal((await state("k2")).state, IdempotencyKeyState.IN_PROGRESS);
      clock.advance(1_001);
      assert.equal((await state("k2")).state, IdempotencyKeyState.CLAIMED);
      const decided = await check("k3", hash(1));
      assert.equal(decided.decision!.outcome, Outcome.ALLOW);
      const k3 = await state("k3");
      assert.equal(k3.state, IdempotencyKeyState.ANSWERED);
      assert.equal(fromBinary(CheckResponseSchema, k3.response).actionId, decided.actionId);
      // Charged: the reported records (10 + 3) and the one store decision.
      assert.equal((await store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(14));
      await assertLedgerConsistent(t.db);
    });

    test("a claim and a store decision racing for one key: one of them has it, never both", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(1000) } }), NO_HASH);
      const hash = new Uint8Array(32).fill(5);
      const outcomes = await Promise.all(
        Array.from({ length: 40 }, async (_, i) => {
          const key = `race-${i}`;
          // Staggered both ways, so that either may come first.
          const [decideAfter, claimAfter] = i % 2 === 0 ? [0, i % 5] : [i % 5, 0];
          const decide = async () => {
            await sleep(decideAfter);
            try {
              return ((await store.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(1)), idempotencyKey: key, requestHash: hash })) as CheckResponse).actionId;
            } catch (e) {
              return ConnectError.from(e).code;
            }
          };
          const claimIt = async () => {
            await sleep(claimAfter);
            const claim = create(IdempotencyKeyClaimSchema, { sessionId: s.sessionId, idempotencyKey: key, method: "check", requestHash: hash, actionId: newId("act", clock.ms), ttl: durationFromMs(30_000) });
            return (await store.claimKeys([claim]))[0];
          };
          const [decided, claim] = await Promise.all([decide(), claimIt()]);
          return { decided, state: claim!.state, answer: claim!.response.length > 0 ? fromBinary(CheckResponseSchema, claim!.response).actionId : undefined };
        }),
      );
      for (const o of outcomes) {
        if (o.state === IdempotencyKeyState.CLAIMED) assert.equal(o.decided, Code.Aborted, "the store waited for the claim");
        else {
          assert.equal(o.state, IdempotencyKeyState.ANSWERED);
          assert.equal(o.answer, o.decided, "the claim found the store's answer");
        }
      }
      const charged = outcomes.filter((o) => typeof o.decided === "string").length;
      assert.equal((await store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(charged));
    });

    test("a record repeated within one report (or across two reports of one request) is charged once", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(40)))!;
      const r1 = record("check", USD(10));
      assert.deepEqual(await report(rep(s.sessionId, l, { records: [r1, r1] }), rep(s.sessionId, l, { records: [r1] })), []);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(10));
      assert.equal(got.usage!.requestCount, 1n);
      assert.equal(got.usage!.valueLeasedMicros, USD(30));
      await assertLedgerConsistent(t.db);
    });

    test("holds placed from a lease are settled by capture or void", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const a1 = record("authorize", USD(20));
      const a2 = record("authorize", USD(10));
      await report(rep(s.sessionId, l, { records: [a1, a2] }));
      const rejected = await report(
        rep(s.sessionId, l, {
          settlements: [
            { authorizationId: a1.actionId, captureMicros: USD(15), time: timestampFromMs(clock.ms) },
            { authorizationId: a2.actionId, time: timestampFromMs(clock.ms) },
            { authorizationId: a2.actionId, time: timestampFromMs(clock.ms) },
          ],
          release: true,
        }),
      );
      assert.equal(rejected.length, 1);
      assert.match(rejected[0]!, /VOIDED/);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(15));
      assert.equal(got.usage!.valueHeldMicros, 0n);
      const a = await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never);
      assert.deepEqual(a.actions.map((x) => x.status).sort(), [ActionStatus.CAPTURED, ActionStatus.VOIDED].sort());
      await assertLedgerConsistent(t.db);
    });

    test("a sidecar's hold expires at its expiry everywhere but the sweeper, which waits the grace for its capture report", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const late = record("authorize", USD(20), Outcome.ALLOW, 1_000);
      const lapsed = record("authorize", USD(10), Outcome.ALLOW, 1_000);
      await report(rep(s.sessionId, l, { records: [late, lapsed], release: true }));
      const status = async (id: string) => (await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.find((a) => a.actionId === id)!.status;
      clock.advance(2_000);
      // Past its expiry: the control plane refuses it, as its sidecar does...
      await assert.rejects(store.capture({ sessionId: s.sessionId, authorizationId: late.actionId, idempotencyKey: "" } as never, NO_HASH), /has expired/);
      // ...but keeps it open, and so does the sweeper, for the sidecar's
      // capture made before the expiry and reported after it.
      await store.sweep();
      assert.equal(await status(late.actionId), ActionStatus.HELD);
      assert.deepEqual(await report(rep(s.sessionId, undefined, { settlements: [{ authorizationId: late.actionId, captureMicros: USD(20), time: timestampFromMs(clock.ms - 1_500) }] })), []);
      assert.equal(await status(late.actionId), ActionStatus.CAPTURED);
      // Past the grace the sweeper closes what was never reported, counting
      // it as spent (closeHolds): its sidecar may have captured it and died.
      clock.advance(SIDECAR_HOLD_GRACE_MS);
      const swept = await store.sweep();
      assert.deepEqual(swept.holdsWrittenOff, { holds: 1, value: USD(10) });
      assert.equal(await status(lapsed.actionId), ActionStatus.EXPIRED);
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, USD(30));
      assert.equal(u.valueWrittenOffMicros, USD(10));
      assert.equal(u.actionsWrittenOff, 1n);
      assert.equal(u.valueHeldMicros, 0n);
      await assertLedgerConsistent(t.db);
    });

    test("a sidecar's hold voided through the control plane stays spent until its sidecar's word: a capture it answered first, or nothing", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const [capturedFirst, unsettled, capturedElsewhere] = [record("authorize", USD(20)), record("authorize", USD(10)), record("authorize", USD(5))];
      await report(rep(s.sessionId, l, { records: [capturedFirst, unsettled, capturedElsewhere], release: true }));
      // The agent's voids reach the control plane through another sidecar,
      // while the placing one has answered a capture of the first that its
      // report has not brought yet.
      const settle = { sessionId: s.sessionId, idempotencyKey: "" };
      for (const id of [capturedFirst.actionId, unsettled.actionId]) {
        const voided = await store.void({ ...settle, authorizationId: id } as never, NO_HASH);
        assert.equal(voided.status, ActionStatus.VOIDED);
        assert.equal(voided.writtenOffAmount?.amountMicros, id === capturedFirst.actionId ? USD(20) : USD(10), "the void's answer shows the amount still counted");
      }
      await store.capture({ ...settle, authorizationId: capturedElsewhere.actionId } as never, NO_HASH);
      let u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, USD(35), "both voided holds count as spent until their sidecar says");
      assert.equal(u.valueWrittenOffMicros, USD(30));
      const rejected = await report(
        rep(s.sessionId, undefined, {
          settlements: [
            { authorizationId: capturedFirst.actionId, captureMicros: USD(15), time: timestampFromMs(clock.ms) },
            { authorizationId: unsettled.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.SETTLED_ELSEWHERE },
            // Told of the capture too: a hold captured elsewhere had no write-off, and nothing changes.
            { authorizationId: capturedElsewhere.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.SETTLED_ELSEWHERE },
          ],
        }),
      );
      assert.deepEqual(rejected, [], "the sidecar's capture is the spend, not a refused second settlement");
      const a = new Map((await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.map((x) => [x.actionId, x]));
      assert.deepEqual(
        [capturedFirst, unsettled, capturedElsewhere].map((r) => {
          const x = a.get(r.actionId)!;
          return [ActionStatus[x.status], x.capturedAmount?.amountMicros, x.writtenOffAmount?.amountMicros];
        }),
        [
          ["CAPTURED", USD(15), undefined],
          ["VOIDED", 0n, undefined],
          ["CAPTURED", USD(5), undefined],
        ],
      );
      u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, USD(20), "the capture the placing sidecar answered, and the one through the control plane");
      assert.equal(u.actionsCommitted, 2n);
      assert.equal(u.valueWrittenOffMicros, 0n);
      await assertLedgerConsistent(t.db);
    });

    test("an agent's value limits in another currency are refused while an ended session's lease, which reserves no value, may still bring spend", async () => {
      const a = agent();
      // Limited by action count only: its lease reserves no value, so its usage shows nothing yet.
      const eur = await store.createSession(sessionRequest(a, { currencyCode: "EUR", daily: { maxActions: 10n } }), NO_HASH);
      const l = (await acquire(eur.sessionId, USD(1000), 4n))!;
      assert.equal(l.valueMicros, undefined);
      // The sidecar allows 500 EUR from it; its report is on the way when a person revokes the session.
      const spent = create(LeaseRecordSchema, { ...record("check", USD(500)), action: payment(USD(500), "acme", "EUR") });
      await store.terminate(eur.sessionId, SessionStatus.REVOKED, "done");
      const usd = () => store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: a, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } } }));
      await assert.rejects(usd(), (e: unknown) => {
        const c = ConnectError.from(e);
        return c.code === Code.FailedPrecondition && c.rawMessage.includes(`current windows hold spend in EUR (session "${eur.sessionId}")`);
      });
      assert.deepEqual(await report(rep(eur.sessionId, l, { records: [spent], release: true })), []);
      // Reported, the 500 EUR is in the agent's day: still refused, until that day is over.
      await assert.rejects(usd(), (e: unknown) => ConnectError.from(e).code === Code.FailedPrecondition);
      clock.advance(25 * 3_600_000);
      const agentNow = await usd();
      assert.equal(agentNow.budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros, 0n, "no euro counted as a dollar");
    });

    test("only the sidecar that placed a hold settles it by report: another's word, or one about a handed-back hold, is refused", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const [held, handed] = [record("authorize", USD(20)), record("authorize", USD(10))];
      await report(rep(s.sessionId, l, { records: [held, handed], settlements: [] }));
      await report(rep(s.sessionId, undefined, { settlements: [{ authorizationId: handed.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.HANDED_BACK }] }));
      const settle = (holder: string, authorizationId: string) =>
        store.leases.report(
          create(ReportLeasesRequestSchema, {
            holder,
            reports: [rep(s.sessionId, undefined, { settlements: [{ authorizationId, captureMicros: USD(5), time: timestampFromMs(clock.ms) }] })],
          }),
        );
      assert.deepEqual(await settle("sidecar-2", held.actionId), [`${held.actionId}: placed by another sidecar, or handed back`]);
      assert.deepEqual(await settle("sidecar-1", handed.actionId), [`${handed.actionId}: placed by another sidecar, or handed back`]);
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, 0n, "nothing captured");
      assert.deepEqual(await settle("sidecar-1", held.actionId), [], "its own sidecar's capture goes through");
      await report(rep(s.sessionId, l, { release: true }));
      await store.void({ sessionId: s.sessionId, authorizationId: handed.actionId, idempotencyKey: "" } as never, NO_HASH);
      await assertLedgerConsistent(t.db);
    });

    test("a sidecar's hold written off by the sweeper becomes what its sidecar reports late: a capture, or nothing spent", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const captured = record("authorize", USD(20), Outcome.ALLOW, 1_000);
      const lapsed = record("authorize", USD(10), Outcome.ALLOW, 1_000);
      await report(rep(s.sessionId, l, { records: [captured, lapsed], release: true }));
      clock.advance(1_000 + SIDECAR_HOLD_GRACE_MS);
      assert.deepEqual((await store.sweep()).holdsWrittenOff, { holds: 2, value: USD(30) });
      const actions = async () => new Map((await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.map((a) => [a.actionId, a]));
      let a = await actions();
      assert.equal(a.get(captured.actionId)!.writtenOffAmount?.amountMicros, USD(20), "the ledger shows what was written off");
      assert.equal((await store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(30));
      // The sidecar was cut off, not dead: its word arrives.
      const at = timestampFromMs(clock.ms - SIDECAR_HOLD_GRACE_MS - 500);
      const rejected = await report(
        rep(s.sessionId, undefined, {
          settlements: [
            { authorizationId: captured.actionId, captureMicros: USD(15), time: at },
            { authorizationId: lapsed.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.EXPIRED },
          ],
        }),
      );
      assert.deepEqual(rejected, []);
      a = await actions();
      assert.equal(a.get(captured.actionId)!.status, ActionStatus.CAPTURED);
      assert.equal(a.get(captured.actionId)!.capturedAmount?.amountMicros, USD(15));
      assert.equal(a.get(captured.actionId)!.writtenOffAmount, undefined);
      assert.equal(a.get(lapsed.actionId)!.status, ActionStatus.EXPIRED);
      assert.equal(a.get(lapsed.actionId)!.writtenOffAmount, undefined);
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, USD(15));
      assert.equal(u.actionsCommitted, 1n);
      assert.equal(u.valueWrittenOffMicros, 0n);
      // Told once: a second word about either is refused.
      const again = await report(rep(s.sessionId, undefined, { settlements: [{ authorizationId: lapsed.actionId, time: timestampFromMs(clock.ms) }] }));
      assert.deepEqual(again, [`${lapsed.actionId}: is EXPIRED`]);
      await assertLedgerConsistent(t.db);
    });

    test("ending a session writes off its sidecars' open holds, as a capture may be on its way; the sidecar's word settles them", async () => {
      const a = agent();
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: a, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } } }));
      const s = await store.createSession(sessionRequest(a, {}), NO_HASH);
      const l = (await acquire(s.sessionId, USD(60)))!;
      const spent = record("authorize", USD(40));
      const unspent = record("authorize", USD(10));
      await report(rep(s.sessionId, l, { records: [spent, unspent], release: true }));
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      const agentDay = async () => (await store.getAgent(a)).budgets.find((w) => w.window === Window.DAY)!.valueUsedMicros;
      assert.equal(await agentDay(), USD(50), "the agent's budget still counts both: either may have been captured");
      // The sidecar reports what it did before it heard, and what it now cannot do.
      assert.deepEqual(
        await report(
          rep(s.sessionId, undefined, {
            settlements: [
              { authorizationId: spent.actionId, captureMicros: USD(40), time: timestampFromMs(clock.ms) },
              { authorizationId: unspent.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.SESSION_ENDED },
            ],
          }),
        ),
        [],
      );
      assert.equal(await agentDay(), USD(40));
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(40));
      assert.equal(got.usage!.valueWrittenOffMicros, 0n);
      await assertLedgerConsistent(t.db);
    });

    test("a hold reported after its session ended, and captured in the same report, counts as captured", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      const held = record("authorize", USD(30));
      assert.deepEqual(
        await report(rep(s.sessionId, l, { records: [held], settlements: [{ authorizationId: held.actionId, captureMicros: USD(30), time: timestampFromMs(clock.ms) }] })),
        [],
      );
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(30), "the sidecar answered that capture before it heard of the revocation");
      await assertLedgerConsistent(t.db);
    });

    test("a hold handed back by a sidecar shutting down is the store's: captured through the control plane, expired at its expiry with no write-off", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const kept = record("authorize", USD(20), Outcome.ALLOW, 1_000);
      const left = record("authorize", USD(10), Outcome.ALLOW, 1_000);
      await report(rep(s.sessionId, l, { records: [kept, left], release: true }));
      const back = (id: string) => ({ authorizationId: id, time: timestampFromMs(clock.ms), release: HoldRelease.HANDED_BACK });
      assert.deepEqual(await report(rep(s.sessionId, undefined, { settlements: [back(kept.actionId), back(left.actionId)] })), []);
      const { rows } = await t.db.query<{ n: string }>("SELECT count(*) AS n FROM actions WHERE action_id = ANY($1::text[]) AND placed_by IS NOT NULL", [[kept.actionId, left.actionId]]);
      assert.equal(rows[0]!.n, "0");
      const cap = await store.capture({ sessionId: s.sessionId, authorizationId: kept.actionId, idempotencyKey: "" } as never, NO_HASH);
      assert.equal(cap.status, ActionStatus.CAPTURED);
      // At its expiry, not after the grace, and released, not written off.
      clock.advance(1_000);
      const swept = await store.sweep();
      assert.equal(swept.holds, 1);
      assert.deepEqual(swept.holdsWrittenOff, { holds: 0, value: 0n });
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueCommittedMicros, USD(20));
      assert.equal(u.valueWrittenOffMicros, 0n);
      await assertLedgerConsistent(t.db);
    });

    test("a key claimed for a capture of a sidecar's hold: its settlement fills the claim; a refused settlement gives it back", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const h1 = record("authorize", USD(20));
      const h2 = record("authorize", USD(10));
      await report(rep(s.sessionId, l, { records: [h1, h2] }));
      const hash = new Uint8Array(32).fill(7);
      const claim = (key: string, actionId: string) =>
        store.claimKeys([create(IdempotencyKeyClaimSchema, { sessionId: s.sessionId, idempotencyKey: key, method: "capture", requestHash: hash, actionId, ttl: durationFromMs(30_000) })]);
      const capture = (authorizationId: string, key: string) => store.capture({ sessionId: s.sessionId, authorizationId, idempotencyKey: key } as never, hash);
      assert.equal((await claim("cap-1", h1.actionId))[0]!.state, IdempotencyKeyState.CLAIMED);
      // While the sidecar settles it, the key is in progress everywhere else.
      await assert.rejects(capture(h1.actionId, "cap-1"), (e: unknown) => ConnectError.from(e).code === Code.Aborted);
      const response = toBinary(ActionRecordSchema, create(ActionRecordSchema, { actionId: h1.actionId, status: ActionStatus.CAPTURED }));
      const settle = (id: string, key: string) => ({ authorizationId: id, captureMicros: USD(5), time: timestampFromMs(clock.ms), idempotencyKey: key, requestHash: hash, response });
      assert.deepEqual(await report(rep(s.sessionId, undefined, { settlements: [settle(h1.actionId, "cap-1")] })), []);
      // Filled: a retry through the control plane gets the sidecar's answer.
      assert.equal((await capture(h1.actionId, "cap-1")).status, ActionStatus.CAPTURED);
      // A settlement the store refuses (the hold was captured through the
      // control plane meanwhile) leaves its key free, not in progress.
      assert.equal((await claim("cap-2", h2.actionId))[0]!.state, IdempotencyKeyState.CLAIMED);
      await capture(h2.actionId, "");
      assert.deepEqual(await report(rep(s.sessionId, undefined, { settlements: [settle(h2.actionId, "cap-2")] })), [`${h2.actionId}: is CAPTURED`]);
      assert.equal((await claim("cap-2", newId("act", clock.ms)))[0]!.state, IdempotencyKeyState.CLAIMED);
      await report(rep(s.sessionId, l, { release: true }));
      await assertLedgerConsistent(t.db);
    });

    test("a fork's hold reported after the fork ended stays open for its sidecar's word, and its parent is not ended on it", async () => {
      const parent = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const fork = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const l = (await acquire(fork.sessionId, USD(50)))!;
      assert.equal(l.valueMicros, USD(50));
      // The parent spends the other half itself.
      const direct = await store.decide({ method: "check", sessionId: parent.sessionId, action: payment(USD(50)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(direct.decision!.outcome, Outcome.ALLOW);
      // The fork is revoked; its sidecar places a hold from its lease before it hears.
      await store.terminate(fork.sessionId, SessionStatus.REVOKED, "stop the fork");
      const hold = record("authorize", USD(50));
      assert.deepEqual(await report(rep(fork.sessionId, l, { records: [hold] })), []);
      // Then it hears the fork ended, and says the hold was never captured.
      assert.deepEqual(
        await report(rep(fork.sessionId, undefined, { settlements: [{ authorizationId: hold.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.SESSION_ENDED }], release: true })),
        [],
      );
      const [h] = (await store.listActions({ sessionId: fork.sessionId, pageSize: 10, pageToken: "" } as never)).actions;
      assert.equal(ActionStatus[h!.status], "VOIDED", "released as its revoked session's holds were");
      const p = await store.getSession(parent.sessionId);
      assert.equal(p.usage!.valueCommittedMicros, USD(50), "only the parent's own 50 was spent");
      assert.equal(
        SessionStatus[p.status],
        "ACTIVE",
        `the parent has 50 of its 100 lifetime left, but the provisional write-off ended it (${p.statusReason})`,
      );
      await assertLedgerConsistent(t.db);
    });

    test("a hold the sweeper writes off does not end its session EXHAUSTED: the sidecar, only cut off, gives it back", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const direct = await store.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(50)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(direct.decision!.outcome, Outcome.ALLOW);
      const hold = record("authorize", USD(50), Outcome.ALLOW, 1_000);
      await report(rep(s.sessionId, l, { records: [hold], release: true }));
      clock.advance(1_000 + SIDECAR_HOLD_GRACE_MS);
      assert.deepEqual((await store.sweep()).holdsWrittenOff, { holds: 1, value: USD(50) });
      // The sidecar was cut off, not dead: its word (the hold lapsed unsettled) arrives.
      assert.deepEqual(await report(rep(s.sessionId, undefined, { settlements: [{ authorizationId: hold.actionId, time: timestampFromMs(clock.ms), release: HoldRelease.EXPIRED }] })), []);
      const got = await store.getSession(s.sessionId);
      assert.equal(got.usage!.valueCommittedMicros, USD(50));
      assert.equal(SessionStatus[got.status], "ACTIVE", `50 of 100 spent, yet the session is ${SessionStatus[got.status]} (${got.statusReason})`);
    });

    test("an allowed record without a lease is refused and changes nothing", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      await assert.rejects(report(rep(s.sessionId, undefined, { records: [record("check", USD(1))] })), (e: unknown) => {
        assert.equal(ConnectError.from(e).code, Code.InvalidArgument);
        assert.match(ConnectError.from(e).rawMessage, /lease_id/);
        return true;
      });
      assert.equal((await store.getSession(s.sessionId)).usage!.requestCount, 0n);
    });

    test("an expired lease that was never released is written off; a late record takes from the write-off", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(30), 100n, 5_000))!;
      await report(rep(s.sessionId, l, { records: [record("check", USD(10))] }));
      clock.advance(5_500);
      assert.equal((await store.sweep()).leases.leases, 0, "still within the grace");
      clock.advance(1_000);
      const swept = await store.sweep();
      assert.equal(swept.leases.leases, 1);
      assert.equal(swept.leases.writtenOffValue, USD(20));
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueWrittenOffMicros, USD(20), "usage shows the write-off");
      assert.equal(u.actionsWrittenOff, 0n, "no action limit: no action slots were reserved");
      assert.equal(u.valueLeasedMicros, 0n);
      let d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, USD(30), "the unreported rest counts as spent");
      await assertLedgerConsistent(t.db);
      // The sidecar comes back and reports what it really allowed.
      await report(rep(s.sessionId, l, { records: [record("check", USD(7))] }));
      d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, USD(30), "not charged twice");
      assert.equal((await store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(30));
      await assertLedgerConsistent(t.db);
    });

    test("a session's lease totals come from its active and written-off leases, through an index", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      for (let i = 0; i < 3; i++) {
        const l = (await acquire(s.sessionId, USD(10)))!;
        await report(rep(s.sessionId, l, { records: [record("check", USD(1))], release: true }));
      }
      const active = (await acquire(s.sessionId, USD(20)))!;
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueLeasedMicros, active.valueMicros, "released leases hold nothing");
      assert.equal(u.valueCommittedMicros, USD(3));
      // The store refuses a released lease that holds or wrote off anything,
      // which is what lets the totals skip released leases.
      const released = await t.db.query<{ lease_id: string }>("SELECT lease_id FROM leases WHERE session_id = $1 AND status = 2 LIMIT 1", [s.sessionId]);
      await assert.rejects(
        t.db.query("UPDATE leases SET held_value = 1 WHERE lease_id = $1", [released.rows[0]!.lease_id]),
        /leases_released_hold_nothing/,
      );
      const plan = await planWithoutSeqScans(t.db, LEASE_TOTALS_SQL.replaceAll("$1::text[]", `ARRAY['${s.sessionId}']`));
      assert.match(plan, /leases_by_session/);
      assert.match(plan, /actions_written_off_by_session/);
      await report(rep(s.sessionId, active, { release: true }));
    });

    test("no lease for a paused, ended or lapsed session", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      await store.setPaused(s.sessionId, true, "hold on");
      assert.equal(await acquire(s.sessionId, USD(1)), undefined);
      await store.setPaused(s.sessionId, false, "");
      assert.ok(await acquire(s.sessionId, USD(1)));
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      assert.equal(await acquire(s.sessionId, USD(1)), undefined);
    });

    const acquireNamed = (sessionId: string, leaseId: string, desiredValue: bigint, holder = "sidecar-1") =>
      store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId, holder, desiredValueMicros: desiredValue, desiredActions: 100n, minValueMicros: 1n, ttl: durationFromMs(30_000), leaseId }),
      );
    const leaseRow = async (leaseId: string) =>
      (
        await t.db.query<{ session_id: string; status: number; held_value: string; written_off_value: string }>(
          "SELECT session_id, status, held_value, written_off_value FROM leases WHERE lease_id = $1",
          [leaseId],
        )
      ).rows[0];
    const refusedNaming = (field: RegExp) => (e: unknown) => {
      assert.equal(Code[ConnectError.from(e).code], Code[Code.InvalidArgument]);
      assert.match(ConnectError.from(e).rawMessage, field);
      return true;
    };

    test("a grant asked again under the id it was granted under is the same lease, reserved once; once released, nothing", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const id = newId("lse", clock.ms);
      const l1 = (await acquireNamed(s.sessionId, id, USD(40)))!;
      assert.equal(l1.leaseId, id, "granted under the id asked for");
      assert.equal(l1.valueMicros, USD(40));
      const l2 = (await acquireNamed(s.sessionId, id, USD(40)))!;
      assert.equal(l2.leaseId, id);
      assert.equal(l2.valueMicros, USD(40));
      assert.equal(l2.expireTime!.seconds, l1.expireTime!.seconds);
      assert.equal((await day(s.sessionId)).valueUsedMicros, USD(40), "reserved once");
      assert.equal(l2.usage.find((c) => c.scopeKey === `s:${s.sessionId}` && c.window === Window.DAY)!.valueMicros, USD(40));
      // Spent from, then asked again: what it has left.
      await report(rep(s.sessionId, l1, { records: [record("check", USD(10))] }));
      assert.equal((await acquireNamed(s.sessionId, id, USD(40)))!.valueMicros, USD(30));
      // Asked twice in one batch: the second is a replay of the first.
      const id2 = newId("lse", clock.ms);
      const [a, b] = await Promise.all([acquireNamed(s.sessionId, id2, USD(20)), acquireNamed(s.sessionId, id2, USD(20))]);
      assert.equal(a!.leaseId, id2);
      assert.equal(b!.leaseId, id2);
      assert.equal((await day(s.sessionId)).valueUsedMicros, USD(60), "committed 10 + leased 30 + 20, the batch's reserved once");
      await assertLedgerConsistent(t.db);
      await report(rep(s.sessionId, l1, { release: true }), rep(s.sessionId, a, { release: true }));
      assert.equal(await acquireNamed(s.sessionId, id, USD(40)), undefined, "released: nothing new under its id");
      assert.equal((await day(s.sessionId)).valueUsedMicros, USD(10));
      assert.equal((await leaseRow(id))!.status, 2);
      await assertLedgerConsistent(t.db);
    });

    test("a release reported for a lease the store does not have keeps its id from ever being granted", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100), maxActions: 10n } }), NO_HASH);
      const id = newId("lse", clock.ms);
      // The sidecar gave up on a grant whose answer it lost; the grant
      // itself reaches the store after its release.
      assert.deepEqual(await report(create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: id, release: true })), []);
      assert.deepEqual(await leaseRow(id), { session_id: s.sessionId, status: 2, held_value: "0", written_off_value: "0" });
      assert.equal(await acquireNamed(s.sessionId, id, USD(40)), undefined, "no lease");
      const d = await day(s.sessionId);
      assert.equal(d.valueUsedMicros, 0n, "nothing reserved");
      assert.equal(d.actionsUsed, 0n);
      const u = (await store.getSession(s.sessionId)).usage!;
      assert.equal(u.valueLeasedMicros, 0n);
      assert.equal(u.valueWrittenOffMicros, 0n);
      // Released again (a retried report): nothing changes.
      assert.deepEqual(await report(create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: id, release: true })), []);
      // Only an id the store could have granted is kept: nothing for
      // another shape, or for a session the store does not have.
      await report(create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: "lse_not-one-of-ours", release: true }));
      assert.equal(await leaseRow("lse_not-one-of-ours"), undefined);
      const unknown = newId("lse", clock.ms);
      await report(create(LeaseReportSchema, { sessionId: "no-such-session", leaseId: unknown, release: true }));
      assert.equal(await leaseRow(unknown), undefined);
      // Other grants are not disturbed, and a sweep past its expiry finds nothing to write off.
      assert.equal((await acquire(s.sessionId, USD(20)))!.valueMicros, USD(20));
      clock.advance(60_000);
      await store.sweep();
      assert.equal((await store.getSession(s.sessionId)).usage!.valueWrittenOffMicros, USD(20), "only the real lease is written off");
      assert.equal((await leaseRow(id))!.status, 2);
      await assertLedgerConsistent(t.db);
    });

    test("a lease id of another session or holder is refused, naming lease_id, and fails only its own request", async () => {
      const a = agent();
      const s1 = await store.createSession(sessionRequest(a, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const s2 = await store.createSession(sessionRequest(a, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const id = newId("lse", clock.ms);
      assert.ok(await acquireNamed(s1.sessionId, id, USD(10)));
      await assert.rejects(acquireNamed(s2.sessionId, id, USD(10)), refusedNaming(/^lease_id: /));
      await assert.rejects(acquireNamed(s1.sessionId, id, USD(10), "sidecar-2"), refusedNaming(/^lease_id: /));
      // In one batch: the first asker has it; the rest of the batch is granted.
      const id2 = newId("lse", clock.ms);
      const [first, other, rest] = await Promise.allSettled([
        acquireNamed(s1.sessionId, id2, USD(10)),
        acquireNamed(s2.sessionId, id2, USD(10)),
        acquireNamed(s2.sessionId, newId("lse", clock.ms), USD(10)),
      ]);
      assert.equal(first.status === "fulfilled" && first.value?.leaseId, id2);
      assert.equal(other.status, "rejected");
      refusedNaming(/^lease_id: /)((other as PromiseRejectedResult).reason);
      assert.equal(rest.status === "fulfilled" && rest.value?.valueMicros, USD(10));
      // A released (tombstoned) id is another session's too.
      const gone = newId("lse", clock.ms);
      await report(create(LeaseReportSchema, { sessionId: s1.sessionId, leaseId: gone, release: true }));
      await assert.rejects(acquireNamed(s2.sessionId, gone, USD(10)), refusedNaming(/^lease_id: /));
      assert.equal((await day(s1.sessionId)).valueUsedMicros, USD(20));
      assert.equal((await day(s2.sessionId)).valueUsedMicros, USD(10), "only the grant that was answered");
      await assertLedgerConsistent(t.db);
    });

    test("an id another session's grant takes while this one is being granted is refused, and this grant undone", async () => {
      const s1 = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const s2 = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const id = newId("lse", clock.ms);
      let granting: Promise<Lease | undefined> | undefined;
      // Another replica's transaction has inserted the id, not yet
      // committed: on PostgreSQL this grant reads no such lease, reserves,
      // and then waits on that insert (on PGlite it runs after the commit).
      await t.db.transaction(async (tx) => {
        await tx.query(
          `INSERT INTO leases (lease_id, session_id, holder, status, granted_value, granted_actions, held_value, held_actions, charges, create_time, update_time, expire_time)
           VALUES ($1, $2, 'sidecar-1', 2, 0, 0, 0, 0, '[]'::jsonb, now(), now(), now())`,
          [id, s1.sessionId],
        );
        granting = acquireNamed(s2.sessionId, id, USD(10));
        granting.catch(() => {});
        if (driver === "postgres") {
          for (let i = 0; i < 100; i++) {
            const { rows } = await t.db.query<{ n: string }>(
              "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO leases%'",
            );
            if (rows[0]!.n !== "0") break;
            await sleep(10);
          }
        }
      });
      await assert.rejects(granting!, refusedNaming(/^lease_id: /));
      assert.equal((await day(s2.sessionId)).valueUsedMicros, 0n, "nothing reserved");
      assert.equal((await leaseRow(id))!.session_id, s1.sessionId);
      await assertLedgerConsistent(t.db);
    });

    test("a lease never outlives the day it reserved in", async () => {
      const saved = clock.ms;
      clock.ms = Date.UTC(2026, 10, 21, 23, 59, 50);
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(1), 1n, 60_000))!;
      assert.equal(Number(l.expireTime!.seconds) * 1000, Date.UTC(2026, 10, 22));
      clock.ms = saved;
    });

    test("lifetime limit used up through reports exhausts the session", async () => {
      const s = await store.createSession(sessionRequest(agent(), { lifetime: { maxActions: 2n } }), NO_HASH);
      const l = (await acquire(s.sessionId, 0n, 5n))!;
      assert.equal(l.actions, 1n);
      await report(rep(s.sessionId, l, { records: [record("check", USD(1))], release: true }));
      const l2 = (await acquire(s.sessionId, 0n, 5n))!;
      assert.equal(l2, undefined, "one action left: half rounds down to none, so decide exactly");
      const got = await store.getSession(s.sessionId);
      assert.equal(got.status, SessionStatus.ACTIVE);
    });

    test("a fork's capture, reported, that uses up its parent's lifetime exhausts the parent, and the fork ends with it", async () => {
      const parent = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(20) } }), NO_HASH);
      const fork = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const l = (await acquire(fork.sessionId, USD(10)))!;
      assert.equal(l.valueMicros, USD(10));
      const hold = record("authorize", USD(10));
      await report(rep(fork.sessionId, l, { records: [hold], release: true }));
      const direct = (await store.decide({ method: "check", sessionId: parent.sessionId, action: payment(USD(10)), idempotencyKey: "", requestHash: NO_HASH })) as CheckResponse;
      assert.equal(direct.decision!.outcome, Outcome.ALLOW);
      assert.equal((await store.getSession(parent.sessionId)).status, SessionStatus.ACTIVE, "10 committed, 10 held by the fork");
      await report(rep(fork.sessionId, undefined, { settlements: [{ authorizationId: hold.actionId, captureMicros: USD(10), time: timestampFromMs(clock.ms) }] }));
      const p = await store.getSession(parent.sessionId);
      assert.deepEqual([SessionStatus[p.status], p.statusReason], ["EXHAUSTED", "lifetime limit used up"]);
      const f = await store.getSession(fork.sessionId);
      assert.deepEqual([SessionStatus[f.status], f.statusReason], ["EXHAUSTED", "lifetime limit used up"], "the fork ended with its parent");
    });

    test("a lease granted by a replica whose clock lags another's is charged, spent and given back in the window the other replica rolled over to", async () => {
      // Two control-plane replicas on one database; B's clock is 10 s behind A's.
      const clockA = new ManualClock(Date.UTC(2026, 10, 22, 0, 0, 5));
      const clockB = new ManualClock(Date.UTC(2026, 10, 21, 23, 59, 55));
      const a = createWardenStore({ db: t.db, now: clockA.now });
      const b = createWardenStore({ db: t.db, now: clockB.now });
      const s = await a.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      // A decides in the new day: the stored day window is now Nov 22.
      assert.equal((await a.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(10)), idempotencyKey: "", requestHash: NO_HASH })).decision!.outcome, Outcome.ALLOW);
      // B, still in Nov 21 by its clock, grants a lease: it reserves in the stored window.
      const lease = (await b.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-1", desiredValueMicros: USD(20), desiredActions: 100n, minValueMicros: 1n, ttl: durationFromMs(2_000) }),
      ))!;
      const dayOf = async () => (await a.getSession(s.sessionId)).usage!.windows.find((w) => w.window === Window.DAY)!;
      assert.equal((await dayOf()).valueUsedMicros, USD(10) + lease.valueMicros!);
      assert.equal(lease.usage.find((u) => u.window === Window.DAY)!.windowStartUnixMs, BigInt(Date.UTC(2026, 10, 22)), "the window it was charged in");
      // The sidecar spends 5 and gives the rest back.
      const spent = create(LeaseRecordSchema, {
        actionId: newId("act", clockB.ms),
        method: "check",
        action: payment(USD(5)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "x" }),
        createTime: timestampFromMs(clockB.ms),
        processingNanos: 1000n,
      });
      await b.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [rep(s.sessionId, lease, { records: [spent], release: true })] }));
      assert.equal((await a.getSession(s.sessionId)).usage!.valueLeasedMicros, 0n);
      assert.equal((await dayOf()).valueUsedMicros, USD(15), "what was committed, 10 + 5, and nothing of the lease left held");
    });

    test("concurrent grants never reserve more than the limit", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const leases = await Promise.all(Array.from({ length: 30 }, () => acquire(s.sessionId, USD(30))));
      const total = leases.reduce((sum, l) => sum + (l?.valueMicros ?? 0n), 0n);
      assert.ok(total <= USD(100), `granted ${total}`);
      assert.equal((await day(s.sessionId)).valueUsedMicros, total);
    });

    test("grants asked at once for an agent's sessions each see the reserves of those before them", async () => {
      const a = agent();
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: a, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(64) } } }));
      const sessions = await Promise.all(Array.from({ length: 6 }, () => store.createSession(sessionRequest(a, {}), NO_HASH)));
      // Asked in one turn, they are granted together (group commit); an
      // unknown session among them gets nothing and fails no one else.
      const leases = await Promise.all([...sessions.map((s) => acquire(s.sessionId, USD(1000))), acquire("ses_unknown", USD(1))]);
      assert.equal(leases.at(-1), undefined);
      const granted = leases.slice(0, -1).map((l) => l!.valueMicros!);
      // Half of what the agent has left, each after the ones before.
      assert.deepEqual(granted, [USD(32), USD(16), USD(8), USD(4), USD(2), USD(1)]);
      const { rows } = await t.db.query<{ v: string }>("SELECT day_held_value AS v FROM scope_usage WHERE scope_key = $1", [`a:${a}`]);
      assert.equal(BigInt(rows[0]!.v), USD(63), "every grant is held in the agent's day");
      for (const [i, s] of sessions.entries()) assert.equal((await day(s.sessionId)).valueUsedMicros, granted[i]);
      await assertLedgerConsistent(t.db);
    });

    test("one report settles many holds across sessions, each judged in order", async () => {
      const s1 = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const s2 = await store.createSession(sessionRequest(agent(), { lifetime: { maxValueMicros: USD(20) } }), NO_HASH);
      const l1 = (await acquire(s1.sessionId, USD(50)))!;
      const l2 = (await acquire(s2.sessionId, USD(10)))!;
      const [a1, a2, a3, b1] = [record("authorize", USD(20)), record("authorize", USD(10)), record("authorize", USD(5)), record("authorize", USD(10))];
      await report(rep(s1.sessionId, l1, { records: [a1, a2, a3] }), rep(s2.sessionId, l2, { records: [b1] }));
      const at = timestampFromMs(clock.ms);
      const rejected = await report(
        rep(s1.sessionId, l1, {
          settlements: [
            { authorizationId: a1.actionId, captureMicros: USD(15), time: at },
            { authorizationId: a2.actionId, time: at },
            { authorizationId: a2.actionId, captureMicros: USD(1), time: at },
            { authorizationId: a3.actionId, captureMicros: USD(6), time: at },
            { authorizationId: b1.actionId, time: at },
          ],
          release: true,
        }),
        rep(s2.sessionId, l2, { settlements: [{ authorizationId: b1.actionId, captureMicros: USD(10), time: at }], release: true }),
      );
      assert.deepEqual(
        rejected.map((r) => r.replace(/^act_\S+: /, "")),
        ["is VOIDED", "capture above the held amount", "not found"],
        "a settled hold, too much, another session's hold",
      );
      const u1 = (await store.getSession(s1.sessionId)).usage!;
      assert.equal(u1.valueCommittedMicros, USD(15));
      assert.equal(u1.valueHeldMicros, USD(5), "the refused capture leaves its hold open");
      const got2 = await store.getSession(s2.sessionId);
      assert.equal(got2.usage!.valueCommittedMicros, USD(10));
      const statuses = (await store.listActions({ sessionId: s1.sessionId, pageSize: 10, pageToken: "" } as never)).actions.map((x) => x.status);
      assert.deepEqual(statuses.sort(), [ActionStatus.CAPTURED, ActionStatus.VOIDED, ActionStatus.HELD].sort());
      await assertLedgerConsistent(t.db);
      // A capture that uses up a lifetime limit ends the session, in a report too.
      const l3 = (await acquire(s2.sessionId, USD(10)))!;
      assert.equal(l3.valueMicros, USD(5), "half of the 10 left");
      const b2 = record("authorize", USD(5));
      await report(rep(s2.sessionId, l3, { records: [b2] }));
      const direct = await store.decide({ method: "check", sessionId: s2.sessionId, action: payment(USD(5)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal(direct.decision!.outcome, Outcome.ALLOW);
      assert.equal((await store.getSession(s2.sessionId)).status, SessionStatus.ACTIVE, "15 of 20 committed, 5 held");
      await report(rep(s2.sessionId, l3, { settlements: [{ authorizationId: b2.actionId, captureMicros: USD(5), time: at }] }));
      const ended = await store.getSession(s2.sessionId);
      assert.equal(ended.status, SessionStatus.EXHAUSTED);
      assert.equal(ended.usage!.valueCommittedMicros, USD(20));
      await assertLedgerConsistent(t.db);
    });

    test("session states asked at once are read together, each with its parents and agent; unknown ones fail alone", async () => {
      const a = agent();
      const parent = await store.createSession(sessionRequest(a, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const child = await store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(10) } } }),
        NO_HASH,
      );
      const grandchild = await store.forkSession(
        create(ForkSessionRequestSchema, { parentSessionId: child.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(5) } } }),
        NO_HASH,
      );
      const other = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      const ids = [grandchild.sessionId, parent.sessionId, "ses_missing", other.sessionId, grandchild.sessionId, child.sessionId];
      const got = await Promise.allSettled(ids.map((id) => store.sessionState(id)));
      const chain = (i: number) => (got[i] as PromiseFulfilledResult<Awaited<ReturnType<typeof store.sessionState>>>).value.sessions.map((x) => x.sessionId);
      assert.deepEqual(chain(0), [grandchild.sessionId, child.sessionId, parent.sessionId], "parents nearest first");
      assert.deepEqual(chain(1), [parent.sessionId]);
      assert.equal(got[2]!.status, "rejected");
      assert.equal(ConnectError.from((got[2] as PromiseRejectedResult).reason).code, Code.NotFound);
      assert.deepEqual(chain(3), [other.sessionId]);
      assert.deepEqual(chain(4), chain(0), "the same session twice");
      assert.deepEqual(chain(5), [child.sessionId, parent.sessionId]);
      const third = (got[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof store.sessionState>>>).value;
      assert.equal(third.agent!.agentId, a);
      assert.equal(third.sessions[0]!.policy!.lifetime!.maxValueMicros, USD(5));
      assert.equal((got[3] as PromiseFulfilledResult<Awaited<ReturnType<typeof store.sessionState>>>).value.agent!.agentId, other.agentId);
    });

    test("changes after a revision, in order, with the session's state", async () => {
      const a = agent();
      const s = await store.createSession(sessionRequest(a, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const from = await store.revision();
      await store.setPaused(s.sessionId, true, "x");
      await store.extendSession(create(ExtendSessionRequestSchema, { sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(60_000) } }));
      const ch = await store.changes(a, from);
      assert.equal(ch.sessions.length, 1);
      assert.equal(ch.sessions[0]!.status, SessionStatus.PAUSED);
      assert.ok(ch.revision > from);
      assert.equal(ch.sessions[0]!.revision, ch.revision);
      const none = await store.changes(a, ch.revision);
      assert.equal(none.sessions.length, 0);
      const other = await store.changes(`${a}-other`, from);
      assert.equal(other.sessions.length, 0);
      const state = await store.sessionState(s.sessionId);
      assert.equal(state.sessions[0]!.sessionId, s.sessionId);
      assert.equal(state.agent!.agentId, a);
      void payment;
    });

    test("a hold a sidecar placed and the store then settled is in the changes, once; the store's own holds are not", async () => {
      const a = agent();
      const s = await store.createSession(sessionRequest(a, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const [captured, voided, settledHere] = [record("authorize", USD(10)), record("authorize", USD(5)), record("authorize", USD(3))];
      await report(rep(s.sessionId, l, { records: [captured, voided, settledHere] }));
      const from = await store.revision();
      // The sidecar's own settlement comes in its report: nobody needs telling.
      await report(rep(s.sessionId, undefined, { settlements: [{ authorizationId: settledHere.actionId, captureMicros: USD(3), time: timestampFromMs(clock.ms) }] }));
      const own = await store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(1)), idempotencyKey: "", requestHash: NO_HASH });
      assert.equal((await store.changes(a, from)).settledHolds.length, 0);
      // Captures and voids through the control plane (another sidecar).
      const settle = { sessionId: s.sessionId, idempotencyKey: "" };
      await store.capture({ ...settle, authorizationId: captured.actionId, amount: { currencyCode: "USD", amountMicros: USD(4) } } as never, NO_HASH);
      await store.void({ ...settle, authorizationId: voided.actionId } as never, NO_HASH);
      await store.capture({ ...settle, authorizationId: (own as { authorizationId: string }).authorizationId } as never, NO_HASH);
      const ch = await store.changes(a, from);
      assert.deepEqual(
        ch.settledHolds.map((h) => [h.authorizationId, h.sessionId, h.agentId, h.status]),
        [
          [captured.actionId, s.sessionId, a, ActionStatus.CAPTURED],
          [voided.actionId, s.sessionId, a, ActionStatus.VOIDED],
        ],
      );
      assert.ok(ch.revision > from);
      assert.equal((await store.changes(a, ch.revision)).settledHolds.length, 0, "told once");
      assert.equal((await store.changes(`${a}-other`, from)).settledHolds.length, 0, "only to its agent");
      assert.equal((await store.changes(undefined, from)).settledHolds.length, 2, "and to a feed of every agent");
      const plan = await planWithoutSeqScans(t.db, SETTLED_HOLDS_SQL.replaceAll("$1", "NULL").replace("$2", "0").replace("$3", "10"));
      assert.match(plan, /actions_settled_by_revision/);
      await report(rep(s.sessionId, l, { release: true }));
    });

    test("every agent's changes come from a range of a revision index, not a walk of all sessions", async () => {
      const [a, b] = [agent(), agent()];
      const from = await store.revision();
      const sa = await store.createSession(sessionRequest(a, {}), NO_HASH);
      const sb = await store.createSession(sessionRequest(b, {}), NO_HASH);
      await store.setPaused(sa.sessionId, true, "x");
      const all = await store.changes(undefined, from);
      assert.deepEqual(
        all.sessions.map((x) => x.sessionId),
        [sb.sessionId, sa.sessionId],
        "in revision order: b's creation, then a's pause",
      );
      assert.deepEqual((await store.changes(a, from)).sessions.map((x) => x.sessionId), [sa.sessionId]);
      const plan = (agentId: string) =>
        planWithoutSeqScans(t.db, CHANGED_SESSIONS_SQL.replaceAll("$1", agentId).replace("$2", "0").replace("$3", "10").replace("$4", "1000"));
      // Without an agent the range is on sessions_revision (the other
      // index leads with agent_id, and would be walked end to end).
      assert.match(await plan("NULL"), /sessions_revision .*\n.*Index Cond: \(\(revision > /);
    });
  });
}
