import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { ActionStatus, ListActionsRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { newId } from "../../src/store/ids.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`ImportSession of what the source store was holding, on ${driver}`, () => {
    const source = storeSuite(driver, "agent-import");
    // A second store, on a database of its own: where the snapshot goes.
    const target = storeSuite(driver, "unused");

    test("the keys of approval verdicts stay behind with their approvals; the session's other keys travel", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(300) } }), NO_HASH);
      const r = await source.authorize(s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      await source.store.approveApproval(r.approvalId, "key_alice", "ok", undefined, { idempotencyKey: "approve-once", requestHash: new Uint8Array([7]) });
      await source.store.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(5)), idempotencyKey: "order-1", requestHash: new Uint8Array([9]) });
      const snap = await source.store.exportSession(s.sessionId);
      assert.deepEqual(
        snap.idempotencyKeys.map((k) => [k.idempotencyKey, k.method]),
        [["order-1", "check"]],
      );
    });

    test("an imported session's pending approval comes back as history holding nothing, which nothing could release", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(300) } }), NO_HASH);
      const r = await source.authorize(s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      assert.equal((await source.store.getSession(s.sessionId)).usage!.valueHeldMicros, USD(150), "the source holds it for its approval");
      const imported = await target.store.importSession(await source.store.exportSession(s.sessionId));
      assert.equal(imported.usage!.valueHeldMicros, 0n, "no approval was carried over to hold it for");
      const history = (await target.store.listActions(create(ListActionsRequestSchema, { sessionId: s.sessionId }))).actions;
      assert.deepEqual(
        history.map((a) => [ActionStatus[a.status], a.heldAmount?.amountMicros, a.approvalId]),
        [["NEEDS_APPROVAL", 0n, r.approvalId]],
        "the request is in the imported history, holding nothing, naming the approval it waited for",
      );
      await target.store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      assert.equal((await target.store.getSession(s.sessionId)).usage!.valueHeldMicros, 0n);
      // Watchers of the new store hear of the session as of any new one.
      const { rows } = await target.t.db.query<{ type: string; data: Record<string, unknown> }>("SELECT type, data FROM events WHERE session_id = $1 ORDER BY seq", [s.sessionId]);
      assert.deepEqual(
        rows.map((e) => [e.type, e.data.status, e.data.imported]),
        [
          ["session.created", "ACTIVE", true],
          ["session.completed", "COMPLETED", undefined],
        ],
      );
    });

    test("an exported session's lease reservation does not come back as a hold nothing can release", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const lease = await source.store.leases.acquire(
        create(AcquireLeaseRequestSchema, {
          sessionId: s.sessionId,
          holder: "sidecar-1",
          desiredValueMicros: USD(40),
          desiredActions: 10n,
          minValueMicros: 1n,
          ttl: durationFromMs(30_000),
        }),
      );
      assert.ok(lease !== undefined);
      assert.equal((await source.store.getSession(s.sessionId)).usage!.valueLeasedMicros, USD(40));
      const imported = await target.store.importSession(await source.store.exportSession(s.sessionId));
      // Nothing in the new store reserved this: no lease was carried over.
      assert.deepEqual([imported.usage!.valueLeasedMicros, imported.usage!.valueHeldMicros], [0n, 0n]);
      await target.store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      assert.equal((await target.store.getSession(s.sessionId)).usage!.valueHeldMicros, 0n, "an ended imported session holds nothing");
    });

    test("a fork is not attached under another agent's session that bears its parent's id in the new store", async () => {
      const owner = source.agent();
      const parent = await source.store.createSession(sessionRequest(owner, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const fork = await source.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      // Another agent's session in the target happens to have the parent's id.
      const stranger = target.agent();
      await target.store.createSession(sessionRequest(stranger, { lifetime: { maxValueMicros: USD(100) } }, { sessionId: parent.sessionId }), NO_HASH);
      await assert.rejects(target.store.importSession(await source.store.exportSession(fork.sessionId)), (e: unknown) => {
        const c = ConnectError.from(e);
        assert.equal(c.code, Code.FailedPrecondition);
        assert.match(c.rawMessage, /^snapshot.session.parent_session_id: .*another agent/);
        return true;
      });
      await assert.rejects(target.store.getSession(fork.sessionId), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    });

    test("a live fork is not re-attached under a parent, or a grandparent, that has ended here; an ended one is, as history", async () => {
      const agentId = source.agent();
      const root = await source.store.createSession(sessionRequest(agentId, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const forkOf = (parentSessionId: string) =>
        source.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(10) } } }), NO_HASH);
      const mid = await forkOf(root.sessionId);
      const leaf = await forkOf(mid.sessionId);
      // The target has the chain (same ids, same agent) and its root was revoked, which ended its forks.
      await target.store.createSession(sessionRequest(agentId, { lifetime: { maxValueMicros: USD(100) } }, { sessionId: root.sessionId }), NO_HASH);
      await target.store.importSession(await source.store.exportSession(mid.sessionId));
      await target.store.terminate(root.sessionId, SessionStatus.REVOKED, "compromised");
      // mid is REVOKED here with its root: leaf, live in the source, has nowhere to go.
      await assert.rejects(target.store.importSession(await source.store.exportSession(leaf.sessionId)), (e: unknown) => {
        const c = ConnectError.from(e);
        assert.equal(c.code, Code.FailedPrecondition);
        assert.equal(c.rawMessage, `snapshot.session.parent_session_id: session "${mid.sessionId}" here has ended: a live fork cannot be re-attached to it`);
        return true;
      });
      await assert.rejects(target.store.getSession(leaf.sessionId), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
      // Ended in the source too, it is history: it comes back as it was.
      await source.store.terminate(leaf.sessionId, SessionStatus.COMPLETED, "done");
      const ended = await target.store.importSession(await source.store.exportSession(leaf.sessionId));
      assert.equal(ended.status, SessionStatus.COMPLETED);
      assert.equal(ended.parentSessionId, mid.sessionId);
    });

    test("a snapshot with an unknown status or a negative amount is INVALID_ARGUMENT naming the field, and nothing is imported", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      await source.authorize(s.sessionId, USD(10));
      const cases: [string, (snap: Awaited<ReturnType<typeof source.store.exportSession>>) => void, RegExp][] = [
        ["status", (snap) => (snap.session!.status = 42 as SessionStatus), /^snapshot.session.status: 42 is not a session status/],
        // Session.agent_id has no rule in the proto: the store names it.
        ["agent id", (snap) => (snap.session!.agentId = "not an agent id!"), /^snapshot.session.agent_id: malformed id/],
        ["action status", (snap) => (snap.actions[0]!.status = 42 as ActionStatus), /^snapshot.actions\[0\].status: 42/],
        ["held", (snap) => (snap.actions[0]!.heldAmount!.amountMicros = -USD(5)), /^snapshot.actions\[0\].held_amount: cannot be negative/],
        // It would be counted, and later captured, as the session's own currency.
        ["held currency", (snap) => (snap.actions[0]!.heldAmount!.currencyCode = "EUR"), /^snapshot.actions\[0\].held_amount.currency_code: EUR differs from the session's currency USD/],
        // No sweep would ever release it.
        ["hold expiry", (snap) => (snap.actions[0]!.holdExpireTime = undefined), /^snapshot.actions\[0\].hold_expire_time: required for an open hold/],
        // Each fits in int64; their sum, held in every window, does not.
        [
          "held total",
          (snap) => {
            snap.actions[0]!.heldAmount!.amountMicros = 2n ** 62n;
            snap.actions.push({ ...snap.actions[0]!, actionId: `${snap.actions[0]!.actionId}x` });
          },
          /^snapshot.actions: the amounts held add up to more than 9223372036854775807 micros/,
        ],
      ];
      for (const [name, edit, message] of cases) {
        const snap = await source.store.exportSession(s.sessionId);
        edit(snap);
        await assert.rejects(target.store.importSession(snap), (e: unknown) => {
          const c = ConnectError.from(e);
          assert.equal(c.code, Code.InvalidArgument, `${name}: ${c.rawMessage}`);
          assert.match(c.rawMessage, message);
          return true;
        });
      }
      await assert.rejects(target.store.getSession(s.sessionId), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    });
  });

  // The target's books carry imported totals no ledger row of its own
  // explains (what was spent in the source), so they are not checked here.
  describe(`ImportSession charges the parents and agent it is imported under, on ${driver}`, () => {
    const source = storeSuite(driver, "agent-chain");
    const target = storeSuite(driver, "unused-chain", { ledgerCheck: false });
    const agentPolicy = (agentId: string) => create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } } });
    const agentDay = async (store: typeof target.store, agentId: string) => (await store.getAgent(agentId)).budgets.find((b) => b.window === Window.DAY)!.valueUsedMicros;

    test("an ImportSession retried with its idempotency key gets the session it imported, not ALREADY_EXISTS", async () => {
      // (This target keeps no ledger check: an import restores counters, not the charges of captured actions.)
      const s = await source.store.createSession(sessionRequest(source.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      await source.check(s.sessionId, USD(30));
      const snap = await source.store.exportSession(s.sessionId);
      const keyed = (hash: number) => ({ idempotencyKey: "import-1", requestHash: new Uint8Array([hash]) });
      const [a, b] = await Promise.all([target.store.importSession(snap, keyed(1)), target.store.importSession(snap, keyed(1))]);
      assert.equal(a.sessionId, s.sessionId);
      assert.deepEqual(b, a, "the concurrent retry waited for the first and got its answer");
      assert.equal((await target.store.getSession(s.sessionId)).usage!.valueCommittedMicros, USD(30));
      // Without the key it is a second import of a session that exists now.
      await assert.rejects(target.store.importSession(snap), (e: unknown) => ConnectError.from(e).code === Code.AlreadyExists);
      await assert.rejects(target.store.importSession(snap, keyed(2)), (e: unknown) => /idempotency_key: "import-1" was already used/.test(ConnectError.from(e).rawMessage));
    });

    test("a re-attached fork's restored hold is held in its parent and agent too, and its capture spends there", async () => {
      const owner = source.agent();
      await source.store.updateAgentPolicy(agentPolicy(owner));
      await target.store.updateAgentPolicy(agentPolicy(owner));
      const parent = await source.store.createSession(sessionRequest(owner, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const fork = await source.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const held = await source.authorize(fork.sessionId, USD(60));
      assert.equal(held.decision!.outcome, Outcome.ALLOW);
      await target.store.importSession(await source.store.exportSession(parent.sessionId));
      await target.store.importSession(await source.store.exportSession(fork.sessionId));
      assert.equal((await target.store.getSession(parent.sessionId)).usage!.valueHeldMicros, USD(60), "the fork's hold is the parent's too");
      assert.equal(await agentDay(target.store, owner), USD(60));
      const r = await target.check(parent.sessionId, USD(50));
      assert.equal(Outcome[r.decision!.outcome], Outcome[Outcome.DENY], "60 held by the fork and 50 more pass the parent's 100");
      await target.store.capture({ sessionId: fork.sessionId, authorizationId: held.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      const p = (await target.store.getSession(parent.sessionId)).usage!;
      assert.deepEqual([p.valueCommittedMicros, p.valueHeldMicros], [USD(60), 0n]);
      assert.equal(await agentDay(target.store, owner), USD(60));
    });

    test("a hold written off in the source stays written off in the import: counted as spent, and shown as such", async () => {
      const s = await source.store.createSession(sessionRequest(source.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const lease = (await source.store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-1", desiredValueMicros: USD(50), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      ))!;
      const now = source.clock.now();
      const hold = create(LeaseRecordSchema, {
        actionId: newId("act", now),
        method: "authorize",
        action: payment(USD(30)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW }),
        createTime: timestampFromMs(now),
        holdExpireTime: timestampFromMs(now + 60_000),
      });
      await source.store.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [{ sessionId: s.sessionId, leaseId: lease.leaseId, records: [hold], release: true }] }));
      // Ended before its sidecar said anything of the hold: written off.
      await source.store.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
      const imported = await target.store.importSession(await source.store.exportSession(s.sessionId));
      const [action] = (await target.store.listActions(create(ListActionsRequestSchema, { sessionId: s.sessionId }))).actions;
      assert.deepEqual(
        [ActionStatus[action!.status], action!.writtenOffAmount?.amountMicros, imported.usage!.valueCommittedMicros, imported.usage!.valueWrittenOffMicros],
        ["VOIDED", USD(30), USD(30), USD(30)],
      );
    });

    test("an imported session's spend counts against its agent's limits in the new store", async () => {
      const owner = source.agent();
      await source.store.updateAgentPolicy(agentPolicy(owner));
      await target.store.updateAgentPolicy(agentPolicy(owner));
      const s = await source.store.createSession(sessionRequest(owner, {}), NO_HASH);
      assert.equal((await source.check(s.sessionId, USD(70))).decision!.outcome, Outcome.ALLOW);
      await target.store.importSession(await source.store.exportSession(s.sessionId));
      assert.equal(await agentDay(target.store, owner), USD(70));
      const other = await target.store.createSession(sessionRequest(owner, {}), NO_HASH);
      assert.equal(Outcome[(await target.check(other.sessionId, USD(40))).decision!.outcome], Outcome[Outcome.DENY], "the agent's day has 30 left");
      assert.equal((await target.check(other.sessionId, USD(30))).decision!.outcome, Outcome.ALLOW);
    });
  });
}
