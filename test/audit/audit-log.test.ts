import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { chainRecord } from "../../src/audit/audit-body.js";
import { type AuditKey, loadOrCreateAuditKey } from "../../src/audit/audit-key.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { AuthorizeResponse, CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { type AuditCheckpointer, createAuditCheckpointer } from "../../src/store/audit-checkpointer.js";
import { newId } from "../../src/store/ids.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { readAuditLog, verifyStoredLog } from "../helpers/audit.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";

const NO_HASH = new Uint8Array(0);
const DAY = 24 * 60 * 60 * 1000;

for (const driver of DRIVERS) {
  describe(`audit log on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let key: AuditKey;
    let keyDir: string;
    let checkpointer: AuditCheckpointer;
    let n = 0;
    const agent = () => `audit-agent-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now, leaseReconcileGraceMs: 1000 });
      keyDir = mkdtempSync(join(tmpdir(), "warden-audit-key-"));
      key = await loadOrCreateAuditKey(join(keyDir, "sub", "audit.jwk"));
      checkpointer = createAuditCheckpointer({ db: t.db, key, now: clock.now, retentionMs: 30 * DAY });
    });
    after(async () => {
      await assertLedgerConsistent(t.db);
      await t.drop();
      rmSync(keyDir, { recursive: true, force: true });
    });

    const check = (sessionId: string, amount: bigint) =>
      store.decide({ method: "check", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<CheckResponse>;
    const authorize = (sessionId: string, amount: bigint) =>
      store.decide({ method: "authorize", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<AuthorizeResponse>;
    const chainOf = async (sessionId: string) => (await readAuditLog(t.db)).filter((r) => r.chainId === sessionId);
    const dataOf = (body: string) => (JSON.parse(body) as { data: Record<string, unknown> }).data;

    test("the key file is created once, mode 0600, and read back the same", async () => {
      const file = join(keyDir, "sub", "audit.jwk");
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.equal((await loadOrCreateAuditKey(file)).keyId, key.keyId);
    });

    test("decisions, captures, voids, expiries, approvals and lifecycle changes are chained per session", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(300) }, requireApprovalAboveMicros: USD(100) }), NO_HASH);
      await check(s.sessionId, USD(10));
      assert.equal((await check(s.sessionId, USD(1000))).decision!.outcome, Outcome.DENY);
      const held = await authorize(s.sessionId, USD(20));
      await store.capture({ sessionId: s.sessionId, authorizationId: held.authorizationId, idempotencyKey: "", amount: { currencyCode: "USD", amountMicros: USD(15) } } as never, NO_HASH);
      const voided = await authorize(s.sessionId, USD(5));
      await store.void({ sessionId: s.sessionId, authorizationId: voided.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      const pending = await check(s.sessionId, USD(150));
      await store.approveApproval(pending.approvalId, "key_alice", "ok");
      await store.setPaused(s.sessionId, true, "look");
      await store.setPaused(s.sessionId, false, "fine");
      await store.extendSession({ sessionId: s.sessionId, extension: { case: "extendBy", value: durationFromMs(60_000) } } as never);
      // The approved hold (15 min TTL) is left to expire.
      clock.advance(16 * 60_000);
      await store.sweep();
      await store.terminate(s.sessionId, SessionStatus.REVOKED, "done");

      const chain = await chainOf(s.sessionId);
      assert.deepEqual(
        chain.map((r) => r.type),
        [
          "session.created",
          "decision",
          "decision",
          // The 1000 USD check ran into the daily limit: told once, and audited like every event.
          "session.limit_reached",
          "decision",
          "authorization.captured",
          "decision",
          "authorization.voided",
          "decision",
          "approval.requested",
          "approval.approved",
          "session.paused",
          "session.resumed",
          "session.extended",
          "authorization.expired",
          "session.revoked",
        ],
      );
      assert.deepEqual(chain.map((r) => r.chainSeq), chain.map((_, i) => BigInt(i + 1)));
      const denied = dataOf(chain[2]!.body);
      assert.equal(denied.outcome, "DENY");
      assert.equal(denied.amount_micros, "1000000000", "amounts are strings of micros");
      assert.equal(dataOf(chain[3]!.body).reason, "LIMIT_DAILY_VALUE");
      assert.deepEqual(dataOf(chain[5]!.body), { action_id: held.authorizationId, captured_micros: "15000000", released_micros: "5000000", currency: "USD" });
      const v = await verifyStoredLog(t.db, [key.publicJwk]);
      assert.equal(v.ok, true, v.problem?.reason);
    });

    test("decisions a sidecar made from a lease are audited once, when first reported", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const lease = (await store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: s.sessionId, holder: "sidecar-1", desiredValueMicros: USD(50), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      ))!;
      const record = create(LeaseRecordSchema, {
        actionId: newId("act", clock.ms),
        method: "check",
        action: payment(USD(7)),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "x" }),
        createTime: timestampFromMs(clock.ms - 5),
        processingNanos: 1000n,
      });
      const report = create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId: s.sessionId, leaseId: lease.leaseId, records: [record] })] });
      await store.leases.report(report);
      // A retried report adds nothing.
      await store.leases.report(report);
      const decisions = (await chainOf(s.sessionId)).filter((r) => r.type === "decision");
      assert.equal(decisions.length, 1);
      const data = dataOf(decisions[0]!.body);
      assert.equal(data.source, "sidecar");
      assert.equal(data.lease_id, lease.leaseId);
      assert.equal(data.action_id, record.actionId);
    });

    test("an agent's policy changes are chained per agent; an import is a record binding the snapshot, then its event", async () => {
      const id = agent();
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(500) } } }));
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: id, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(400) } } }));
      const agentChain = await chainOf(`agent:${id}`);
      assert.deepEqual(agentChain.map((r) => [r.type, r.chainSeq, r.sessionId]), [["agent.policy_updated", 1n, ""], ["agent.policy_updated", 2n, ""]]);
      assert.equal((dataOf(agentChain[1]!.body).policy as { daily: { maxValueMicros: string } }).daily.maxValueMicros, "400000000");

      const s = await store.createSession(sessionRequest(id, {}), NO_HASH);
      await check(s.sessionId, USD(3));
      const snap = await store.exportSession(s.sessionId);
      snap.session!.sessionId = `${s.sessionId}-copy`;
      // A copy without history (its ids are taken here) nor usage.
      snap.actions = [];
      snap.counters = [];
      await store.importSession(snap);
      const imported = await chainOf(`${s.sessionId}-copy`);
      // The record binding the snapshot, then the event telling watchers of the session.
      assert.deepEqual(imported.map((r) => r.type), ["session.imported", "session.created"]);
      assert.match(dataOf(imported[0]!.body).snapshot_sha256 as string, /^[0-9a-f]{64}$/);
      // The filters: a session's records, an agent's (its sessions' and its own chain), a time range.
      const mine = await chainOf(s.sessionId);
      assert.equal(mine.length, 2);
      assert.deepEqual(await readAuditLog(t.db, { sessionId: s.sessionId }), mine);
      const agents = (await readAuditLog(t.db)).filter((r) => r.agentId === id);
      assert.equal(agents.length, 6);
      assert.deepEqual(await readAuditLog(t.db, { agentId: id }), agents);
      const at = timestampFromMs(clock.ms);
      assert.deepEqual(await readAuditLog(t.db, { agentId: id, startTime: at, endTime: timestampFromMs(clock.ms + 1) }), agents);
      assert.deepEqual(await readAuditLog(t.db, { agentId: id, endTime: at }), []);
    });

    test("concurrent decisions on one session still make one intact chain", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(70) } }), NO_HASH);
      await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? check(s.sessionId, USD(10)) : authorize(s.sessionId, USD(1)))));
      const chain = await chainOf(s.sessionId);
      assert.equal(chain.filter((r) => r.type === "decision").length, 40);
      assert.deepEqual(chain.map((r) => r.chainSeq), chain.map((_, i) => BigInt(i + 1)), "chain order is log order");
      const v = await verifyStoredLog(t.db, [key.publicJwk]);
      assert.equal(v.ok, true, v.problem?.reason);
    });

    test("a checkpoint signs the changed heads; nothing changed, no checkpoint; a wrong key fails", async () => {
      const first = await checkpointer.checkpoint();
      assert.ok(first !== undefined && first.heads > 0);
      assert.equal(await checkpointer.checkpoint(), undefined);
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await check(s.sessionId, USD(1));
      const second = await checkpointer.checkpoint();
      assert.deepEqual([second?.seq, second?.heads], [first.seq + 1n, 1]);
      const v = await verifyStoredLog(t.db, [key.publicJwk]);
      assert.equal(v.ok, true, v.problem?.reason);
      assert.equal(v.unsigned, 0);
      const stranger = await loadOrCreateAuditKey(join(keyDir, "stranger.jwk"));
      const bad = await verifyStoredLog(t.db, [stranger.publicJwk]);
      assert.equal(bad.problem?.kind, "modified");
      assert.match(bad.problem!.reason, /not a trusted key/);
      // The server's own list names the key.
      assert.equal((await verifyStoredLog(t.db)).ok, true);
    });

    test("a whole chain forged into a part of the log a checkpoint covered is caught as inserted, however well it chains", async () => {
      const s = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await check(s.sessionId, USD(1));
      await checkpointer.checkpoint();
      await check(s.sessionId, USD(2));
      await checkpointer.checkpoint();
      assert.equal((await verifyStoredLog(t.db, [key.publicJwk])).ok, true);
      // A one-record chain of its own, well hashed, dated and placed early in
      // the log: nothing links to it, so only the checkpoints can tell.
      const forged = chainRecord({ chain: "ses_forged", seq: 1, type: "approval.approved", time: new Date(clock.now() - DAY).toISOString(), session_id: "ses_forged", agent_id: "nobody", prev: "", data: { approval_id: "apr_x" } });
      await t.db.query(
        `INSERT INTO audit_records (seq, chain_id, chain_seq, type, create_time, session_id, agent_id, body, prev_hash, hash)
         VALUES (0, 'ses_forged', 1, 'approval.approved', $1::timestamptz, 'ses_forged', 'nobody', $2, ''::bytea, $3)`,
        [new Date(clock.now() - DAY).toISOString(), forged.text, forged.hash],
      );
      const v = await verifyStoredLog(t.db, [key.publicJwk]);
      assert.equal(v.problem?.kind, "inserted", v.problem?.reason ?? "reported intact");
      assert.match(v.problem!.reason, /^record 1 of chain ses_forged \(log seq 0\) was inserted: checkpoint \d+ covered the log up to seq \d+/);
      await t.db.query("DELETE FROM audit_records WHERE seq = 0");
    });

    test("retention removes the records of sessions ended long ago under a signed checkpoint; verification still passes", async () => {
      const old = await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      await check(old.sessionId, USD(2));
      await store.terminate(old.sessionId, SessionStatus.COMPLETED, "done");
      const live = await store.createSession(sessionRequest(agent(), {}, { expiration: { case: "ttl", value: durationFromMs(60 * DAY) } }), NO_HASH);
      await check(live.sessionId, USD(2));
      await checkpointer.checkpoint();
      assert.equal((await chainOf(old.sessionId)).length, 3);

      clock.advance(31 * DAY);
      const pruning = await checkpointer.checkpoint();
      assert.ok(pruning !== undefined && pruning.pruned >= 1);
      assert.deepEqual(await chainOf(old.sessionId), []);
      assert.equal((await chainOf(live.sessionId)).length, 2, "a live session keeps its records");
      // Only audit data goes: the session and its actions stay.
      assert.equal((await store.getSession(old.sessionId)).status, SessionStatus.COMPLETED);
      const v = await verifyStoredLog(t.db, [key.publicJwk]);
      assert.equal(v.ok, true, v.problem?.reason);
      assert.ok(v.prunedChains >= 1);
      // Pruned once: the next checkpoint has nothing to remove or sign.
      assert.equal(await checkpointer.checkpoint(), undefined);
    });
  });
}
