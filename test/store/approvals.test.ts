import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { ApprovalStatus } from "../../src/gen/warden/v1/approval_service_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { MoneySchema } from "../../src/gen/warden/v1/money_pb.js";
import { ApprovalTimeoutOutcome } from "../../src/gen/warden/v1/policy_pb.js";
import { ActionStatus, type AuthorizeResponse, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";

const NO_HASH = new Uint8Array(0);

async function rejects(p: Promise<unknown>, code: Code, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    const c = ConnectError.from(e);
    assert.equal(Code[c.code], Code[code], c.rawMessage);
    assert.match(c.rawMessage, message);
    return true;
  });
}

for (const driver of DRIVERS) {
  describe(`approvals in the store on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let n = 0;
    const agent = () => `agent-apr-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now });
    });
    after(async () => {
      await assertLedgerConsistent(t.db);
      await t.drop();
    });

    const authorize = (sessionId: string, amount: bigint) =>
      store.decide({ method: "authorize", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<AuthorizeResponse>;
    const check = (sessionId: string, amount: bigint) =>
      store.decide({ method: "check", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<CheckResponse>;
    const usage = async (sessionId: string) => (await store.getSession(sessionId)).usage!;
    const capture = (sessionId: string, authorizationId: string, amountMicros?: bigint) =>
      store.capture(
        { sessionId, authorizationId, idempotencyKey: "", amount: amountMicros === undefined ? undefined : { currencyCode: "USD", amountMicros } } as never,
        NO_HASH,
      );
    const approvalPolicy = (extra: object = {}) => ({ requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(300) }, ...extra });

    test("NEEDS_APPROVAL creates a pending approval that holds the amount; approving turns it into an authorization", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const r = await authorize(s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      assert.deepEqual(r.decision!.reasons, [Reason.APPROVAL_REQUIRED]);
      assert.match(r.approvalId, /^apr_/);
      assert.equal(r.authorizationId, "", "nothing to capture yet");
      assert.equal(timestampMs(r.approvalExpireTime!), clock.ms + 15 * 60_000);
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(150));

      const pending = await store.getApproval(r.approvalId);
      assert.equal(pending.status, ApprovalStatus.PENDING);
      assert.equal(pending.amount!.amountMicros, USD(150));
      const [action] = (await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions;
      assert.equal(action!.status, ActionStatus.NEEDS_APPROVAL);
      assert.equal(action!.approvalId, r.approvalId);
      await rejects(capture(s.sessionId, pending.actionId), Code.FailedPrecondition, /awaits a person's approval; capture it once approved/);
      // Nor voided: the approval is what to cancel.
      await rejects(
        store.void({ sessionId: s.sessionId, authorizationId: pending.actionId, idempotencyKey: "" } as never, NO_HASH),
        Code.FailedPrecondition,
        /cannot void "\S+": it awaits a person's approval; cancel that instead \(CancelApproval\)/,
      );

      clock.advance(1000);
      const approved = await store.approveApproval(r.approvalId, "key_alice", "ok for the offsite");
      assert.equal(approved.status, ApprovalStatus.APPROVED);
      assert.equal(approved.decidedBy, "key_alice");
      assert.equal(approved.comment, "ok for the offsite");
      assert.equal(approved.approvedAmount!.amountMicros, USD(150));
      assert.equal(timestampMs(approved.holdExpireTime!), clock.ms + 15 * 60_000, "the policy's hold TTL, from the approval");
      await rejects(store.approveApproval(r.approvalId, "key_bob", ""), Code.FailedPrecondition, /already APPROVED by key_alice/);
      await rejects(store.denyApproval(r.approvalId, "key_bob", ""), Code.FailedPrecondition, /already APPROVED/);

      const cap = await capture(s.sessionId, approved.actionId);
      assert.equal(cap.status, ActionStatus.CAPTURED);
      const u = await usage(s.sessionId);
      assert.equal(u.valueCommittedMicros, USD(150));
      assert.equal(u.valueHeldMicros, 0n);
    });

    test("a verdict retried with its idempotency key gets the first answer, and applies once", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const keyed = (idempotencyKey: string, hash: number) => ({ idempotencyKey, requestHash: new Uint8Array([hash]) });
      const r = await authorize(s.sessionId, USD(150));
      const approved = await store.approveApproval(r.approvalId, "key_alice", "ok", create(MoneySchema, { currencyCode: "USD", amountMicros: USD(120) }), keyed("apr-1", 1));
      assert.equal(approved.approvedAmount!.amountMicros, USD(120));
      clock.advance(1000);
      const retry = await store.approveApproval(r.approvalId, "key_alice", "ok", create(MoneySchema, { currencyCode: "USD", amountMicros: USD(120) }), keyed("apr-1", 1));
      assert.deepEqual(retry, approved, "the first answer, not FAILED_PRECONDITION");
      // Applied once: 30 of the 150 held went back, once.
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(120));
      const events = await t.db.query("SELECT 1 FROM events WHERE session_id = $1 AND type = 'approval.approved'", [s.sessionId]);
      assert.equal(events.rows.length, 1);
      // Without its key, or with the key for another verdict, it is refused.
      await rejects(store.approveApproval(r.approvalId, "key_alice", "ok"), Code.FailedPrecondition, /already APPROVED/);
      await rejects(store.denyApproval(r.approvalId, "key_alice", "no", keyed("apr-1", 2)), Code.InvalidArgument, /idempotency_key: "apr-1" was already used/);

      const d = await authorize(s.sessionId, USD(110));
      const denied = await store.denyApproval(d.approvalId, "key_bob", "too much", keyed("deny-1", 3));
      assert.equal(denied.status, ApprovalStatus.DENIED);
      assert.deepEqual(await store.denyApproval(d.approvalId, "key_bob", "too much", keyed("deny-1", 3)), denied);
      const c = await authorize(s.sessionId, USD(105));
      const canceled = await store.cancelApproval(c.approvalId, s.sessionId, "agent:x", "not needed", keyed("cancel-1", 4));
      assert.equal(canceled.status, ApprovalStatus.CANCELED);
      assert.deepEqual(await store.cancelApproval(c.approvalId, s.sessionId, "agent:x", "not needed", keyed("cancel-1", 4)), canceled);
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(120), "the denied and canceled holds went back once");
    });

    test("approval.requested carries its status, PENDING, like every approval.* event", async () => {
      const sess = await store.createSession(sessionRequest(agent(), { requireApprovalAboveMicros: USD(100) }), NO_HASH);
      const r = await check(sess.sessionId, USD(150));
      const { rows } = await t.db.query<{ data: Record<string, unknown> }>("SELECT data FROM events WHERE session_id = $1 AND type = 'approval.requested'", [sess.sessionId]);
      assert.deepEqual(
        rows.map((e) => [e.data.approval_id, e.data.status, e.data.amount_micros, e.data.currency]),
        [[r.approvalId, "PENDING", USD(150).toString(), "USD"]],
      );
    });

    test("a pending approval holds the budget: later spending cannot starve it, and it cannot push the session over", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const r = await check(s.sessionId, USD(250));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      // 250 of 300 held: 60 more would go over, 50 fits.
      const over = await check(s.sessionId, USD(60));
      assert.equal(over.decision!.outcome, Outcome.DENY);
      assert.deepEqual(over.decision!.reasons, [Reason.LIMIT_DAILY_VALUE]);
      assert.equal((await check(s.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      // A second large request is denied, not queued for approval, while the first holds the room.
      assert.equal((await check(s.sessionId, USD(150))).decision!.outcome, Outcome.DENY);
      const approved = await store.approveApproval(r.approvalId, "key_a", "");
      await capture(s.sessionId, approved.actionId);
      assert.equal((await usage(s.sessionId)).valueCommittedMicros, USD(300));
    });

    test("approve a lower amount: the rest goes back at once, and capture is capped at what was approved", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const r = await authorize(s.sessionId, USD(200));
      await rejects(
        store.approveApproval(r.approvalId, "key_a", "", { currencyCode: "USD", amountMicros: USD(201) } as never),
        Code.InvalidArgument,
        /amount: 201\.00 USD is above the 200\.00 USD asked for/,
      );
      await rejects(store.approveApproval(r.approvalId, "key_a", "", { currencyCode: "EUR", amountMicros: USD(1) } as never), Code.InvalidArgument, /currency_code/);
      const a = await store.approveApproval(r.approvalId, "key_a", "half", { currencyCode: "USD", amountMicros: USD(120) } as never);
      assert.equal(a.approvedAmount!.amountMicros, USD(120));
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(120));
      await rejects(capture(s.sessionId, a.actionId, USD(121)), Code.FailedPrecondition, /above the held/);
      await capture(s.sessionId, a.actionId, USD(120));
      assert.equal((await usage(s.sessionId)).valueCommittedMicros, USD(120));
    });

    test("deny and cancel release the hold; the action says so", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const d = await authorize(s.sessionId, USD(150));
      const c = await authorize(s.sessionId, USD(140));
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(290));
      const denied = await store.denyApproval(d.approvalId, "key_a", "not this merchant");
      assert.equal(denied.status, ApprovalStatus.DENIED);
      assert.equal(denied.comment, "not this merchant");
      await rejects(store.cancelApproval(c.approvalId, "other-session", "agent", ""), Code.NotFound, /approval_id/);
      const canceled = await store.cancelApproval(c.approvalId, s.sessionId, "session:x", "found it cheaper");
      assert.equal(canceled.status, ApprovalStatus.CANCELED);
      assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);
      const actions = (await store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions;
      assert.deepEqual(
        actions.map((a) => ActionStatus[a.status]).sort(),
        ["DENIED", "VOIDED"],
      );
      await rejects(capture(s.sessionId, denied.actionId), Code.FailedPrecondition, /denied/);
      await rejects(store.approveApproval(c.approvalId, "key_a", ""), Code.FailedPrecondition, /already CANCELED/);
    });

    test("timeout: denied by default, approved when every asking policy says so; the sweeper and a late decision both apply it", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy({ approvalTtl: durationFromMs(60_000) })), NO_HASH);
      const late = await authorize(s.sessionId, USD(110));
      const swept = await authorize(s.sessionId, USD(120));
      clock.advance(60_000);
      await rejects(store.approveApproval(late.approvalId, "key_a", ""), Code.FailedPrecondition, /expired .* denied on timeout/);
      assert.equal((await store.getApproval(late.approvalId)).status, ApprovalStatus.EXPIRED);
      const sweep = await store.sweep();
      assert.equal(sweep.approvals, 1);
      const e = await store.getApproval(swept.approvalId);
      assert.equal(e.status, ApprovalStatus.EXPIRED);
      assert.equal(e.decidedBy, "timeout");
      assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);

      const yes = await store.createSession(
        sessionRequest(agent(), approvalPolicy({ approvalTtl: durationFromMs(60_000), approvalTimeoutOutcome: ApprovalTimeoutOutcome.APPROVE })),
        NO_HASH,
      );
      const r = await authorize(yes.sessionId, USD(130));
      clock.advance(59_999);
      assert.equal((await store.expireApproval(r.approvalId)).status, ApprovalStatus.PENDING, "not yet due");
      clock.advance(1);
      assert.equal((await store.sweep()).approvals, 1);
      const a = await store.getApproval(r.approvalId);
      assert.equal(a.status, ApprovalStatus.APPROVED);
      assert.equal(a.decidedBy, "timeout");
      assert.equal(a.approvedAmount!.amountMicros, USD(130));
      assert.equal((await capture(yes.sessionId, a.actionId)).status, ActionStatus.CAPTURED);
    });

    test("timeout: an approval that would be approved on timeout is denied while its session or a parent is paused", async () => {
      const approveOnTimeout = approvalPolicy({ approvalTtl: durationFromMs(60_000), approvalTimeoutOutcome: ApprovalTimeoutOutcome.APPROVE });
      const s = await store.createSession(sessionRequest(agent(), approveOnTimeout), NO_HASH);
      const parent = await store.createSession(sessionRequest(agent(), approveOnTimeout), NO_HASH);
      const fork = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", ...approveOnTimeout } }), NO_HASH);
      const own = await authorize(s.sessionId, USD(110));
      const forks = await authorize(fork.sessionId, USD(120));
      assert.equal(forks.decision!.outcome, Outcome.NEEDS_APPROVAL);
      // The circuit breaker, or a person, stops the agent while a person has not decided.
      await store.setPaused(s.sessionId, true, "stop");
      await store.setPaused(parent.sessionId, true, "stop the parent");
      clock.advance(60_000);
      assert.equal((await store.expireApproval(own.approvalId)).status, ApprovalStatus.EXPIRED);
      assert.equal((await store.sweep()).approvals, 1);
      const expired = await store.getApproval(forks.approvalId);
      assert.deepEqual([ApprovalStatus[expired.status], expired.decidedBy], ["EXPIRED", "timeout"]);
      assert.match(expired.comment, new RegExp(`session "${parent.sessionId}" was paused`));
      for (const id of [s.sessionId, fork.sessionId]) assert.equal((await usage(id)).valueHeldMicros, 0n, "the hold went back");
      // Resumed, the clock approves again, as the policy says.
      await store.setPaused(s.sessionId, false, "go on");
      const later = await authorize(s.sessionId, USD(130));
      clock.advance(60_000);
      assert.equal((await store.expireApproval(later.approvalId)).status, ApprovalStatus.APPROVED);
    });

    test("a session whose agent waits on a person does not idle before the approval's deadline; then its idle clock starts over", async () => {
      const idle = { idleTimeout: durationFromMs(60_000) };
      const status = async (id: string) => {
        const got = await store.getSession(id);
        return `${SessionStatus[got.status]} ${got.statusReason}`.trim();
      };
      // Approved after 5 minutes (the idle timeout is 1): the hold can be captured.
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy({ approvalTtl: durationFromMs(10 * 60_000) }), idle), NO_HASH);
      const r = await authorize(s.sessionId, USD(150));
      clock.advance(5 * 60_000);
      await store.sweep();
      assert.equal(await status(s.sessionId), "ACTIVE");
      const approved = await store.approveApproval(r.approvalId, "key_a", "");
      assert.equal(approved.status, ApprovalStatus.APPROVED);
      assert.equal((await capture(s.sessionId, approved.actionId)).status, ActionStatus.CAPTURED);

      // Never decided: live until the deadline passes and then one idle
      // timeout more (the agent is told at the deadline).
      const w = await store.createSession(sessionRequest(agent(), approvalPolicy({ approvalTtl: durationFromMs(10 * 60_000) }), idle), NO_HASH);
      await authorize(w.sessionId, USD(150));
      clock.advance(10 * 60_000 + 59_999);
      await store.sweep();
      assert.equal(await status(w.sessionId), "ACTIVE");
      clock.advance(1);
      await store.sweep();
      assert.equal(await status(w.sessionId), "EXPIRED idle timeout");

      // Without an approval the same session idles after its minute.
      const q = await store.createSession(sessionRequest(agent(), approvalPolicy(), idle), NO_HASH);
      assert.equal((await authorize(q.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      clock.advance(60_000);
      await store.sweep();
      assert.equal(await status(q.sessionId), "EXPIRED idle timeout");
    });

    test("a session that ends cancels its pending approvals and releases their holds", async () => {
      const s = await store.createSession(sessionRequest(agent(), approvalPolicy()), NO_HASH);
      const r = await authorize(s.sessionId, USD(150));
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "stop");
      const a = await store.getApproval(r.approvalId);
      assert.equal(a.status, ApprovalStatus.CANCELED);
      assert.equal(a.decidedBy, "session");
      assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);
      await rejects(store.approveApproval(r.approvalId, "key_a", ""), Code.FailedPrecondition, /already CANCELED by session/);
    });

    test("ListApprovals: pending first (oldest first), then decided (newest first); filters; pages", async () => {
      const id = agent();
      const s = await store.createSession(sessionRequest(id, approvalPolicy({ daily: { maxValueMicros: USD(10_000) } })), NO_HASH);
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        ids.push((await authorize(s.sessionId, USD(101 + i))).approvalId);
        clock.advance(1000);
      }
      await store.denyApproval(ids[0]!, "k", "");
      await store.denyApproval(ids[3]!, "k", "");
      const seen: string[] = [];
      let token = "";
      do {
        const page = await store.listApprovals({ sessionId: s.sessionId, agentId: "", status: 0, pageSize: 2, pageToken: token } as never);
        assert.ok(page.approvals.length <= 2);
        seen.push(...page.approvals.map((a) => a.approvalId));
        token = page.nextPageToken;
      } while (token !== "");
      assert.deepEqual(seen, [ids[1], ids[2], ids[4], ids[3], ids[0]]);
      const pending = await store.listApprovals({ sessionId: "", agentId: id, status: ApprovalStatus.PENDING, pageSize: 0, pageToken: "" } as never);
      assert.deepEqual(pending.approvals.map((a) => a.approvalId), [ids[1], ids[2], ids[4]]);
      await rejects(store.listApprovals({ sessionId: "", agentId: "", status: 0, pageSize: 0, pageToken: "%%%" } as never), Code.InvalidArgument, /page_token/);
      // A token continues only the filters it was made for; page_size may change.
      const first = await store.listApprovals({ sessionId: s.sessionId, agentId: "", status: 0, pageSize: 2, pageToken: "" } as never);
      for (const other of [{ sessionId: "" }, { agentId: id }, { status: ApprovalStatus.PENDING }]) {
        await rejects(
          store.listApprovals({ sessionId: s.sessionId, agentId: "", status: 0, ...other, pageSize: 2, pageToken: first.nextPageToken } as never),
          Code.InvalidArgument,
          /^page_token: was issued for a different query \(session_id, agent_id and status must be the same as on the first page/,
        );
      }
      const rest = await store.listApprovals({ sessionId: s.sessionId, agentId: "", status: 0, pageSize: 3, pageToken: first.nextPageToken } as never);
      assert.deepEqual([...first.approvals, ...rest.approvals].map((a) => a.approvalId), [ids[1], ids[2], ids[4], ids[3], ids[0]]);
    });

    test("concurrent approvals on one session never overspend", async () => {
      const s = await store.createSession(sessionRequest(agent(), { requireApprovalAboveMicros: USD(10), daily: { maxValueMicros: USD(1000) } }), NO_HASH);
      // 30 requests of 100 each race for a 1000 budget: at most 10 can be pending at once.
      const asks = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? authorize : check)(s.sessionId, USD(100))));
      const pending = asks.filter((r) => r.decision!.outcome === Outcome.NEEDS_APPROVAL);
      assert.equal(pending.length, 10);
      // Approve all at once, while small spends and more asks race them.
      const results = await Promise.all([
        ...pending.map((r) => store.approveApproval(r.approvalId, "k", "")),
        ...Array.from({ length: 10 }, () => check(s.sessionId, USD(5))),
        ...Array.from({ length: 5 }, () => authorize(s.sessionId, USD(100))),
      ]);
      assert.ok(results.slice(pending.length).every((r) => (r as CheckResponse).decision!.outcome === Outcome.DENY), "no room left for anything");
      await Promise.all(pending.map((r) => store.getApproval(r.approvalId).then((a) => capture(s.sessionId, a.actionId))));
      const u = await usage(s.sessionId);
      assert.equal(u.valueCommittedMicros, USD(1000));
      assert.equal(u.valueHeldMicros, 0n);
    });

    test("an approval counts as activity: a person who took longer than the idle timeout leaves the agent its whole hold to capture", async () => {
      const s = await store.createSession(sessionRequest(agent(), { requireApprovalAboveMicros: USD(10) }, { idleTimeout: durationFromMs(10 * 60_000) }), NO_HASH);
      const r = await authorize(s.sessionId, USD(50));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      // The agent waits on WatchApproval; a person approves after 9 minutes.
      clock.advance(9 * 60_000);
      const a = await store.approveApproval(r.approvalId, "key_alice", "ok");
      assert.equal(timestampMs(a.holdExpireTime!), clock.ms + 15 * 60_000);
      // 11 minutes after the ask, 2 after the approval: inside the hold promised.
      clock.advance(2 * 60_000);
      await store.sweep();
      assert.equal((await capture(s.sessionId, a.actionId)).status, ActionStatus.CAPTURED);
      // Idle again from the capture on: 10 minutes after it, the session lapses.
      clock.advance(10 * 60_000);
      await store.sweep();
      assert.equal(SessionStatus[(await store.getSession(s.sessionId)).status], "EXPIRED");
    });
  });
}
