// Control-plane replicas (WardenStore instances, each with its own pool) on
// one PostgreSQL database at once. PostgreSQL only: replicas share a server.
//
// Interleavings are forced with barriers, not sleeps: a separate connection
// holds a lock that one replica's transaction needs, the test waits
// (polling pg_stat_activity) until that transaction is parked on it, lets
// the other replica act, then releases the barrier.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { create } from "@bufbuild/protobuf";
import { loadOrCreateAuditKey } from "../../src/audit/audit-key.js";
import { createChangeFeed } from "../../src/control-plane/change-feed.js";
import { createSyncService } from "../../src/control-plane/sync-service.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { AuthorizeResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { type WatchSessionsResponse, WatchSessionsRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { createAuditCheckpointer } from "../../src/store/audit-checkpointer.js";
import type { Database } from "../../src/store/database.js";
import { migrate } from "../../src/store/migrate.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { verifyStoredLog } from "../helpers/audit.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

/** Waits until `n` backends of this database wait on a heavyweight lock. */
async function waitForLockWaiters(c: pg.Client, n: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    // Activity stats are a snapshot per transaction, and the barrier's connection is in one.
    await c.query("SELECT pg_stat_clear_snapshot()");
    const { rows } = await c.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'");
    if (Number(rows[0]!.n) >= n) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`never saw ${n} transactions waiting on a lock`);
}

describe("replicas on one PostgreSQL database", () => {
  let drop: () => Promise<void>;
  let dbA: Database;
  let dbB: Database;
  let A: WardenStore;
  let B: WardenStore;
  let barrier: pg.Client;
  let n = 0;
  const agentId = () => `replica-agent-${++n}`;
  before(async () => {
    const pgdb = await createPostgresDatabase();
    dbA = createPgDatabase({ connectionString: pgdb.url });
    dbB = createPgDatabase({ connectionString: pgdb.url });
    await migrate(dbA);
    const clock = new ManualClock(Date.now());
    A = createWardenStore({ db: dbA, now: clock.now });
    B = createWardenStore({ db: dbB, now: clock.now });
    barrier = new pg.Client({ connectionString: pgdb.url });
    await barrier.connect();
    drop = () => pgdb.drop();
  });
  after(async () => {
    await barrier.end().catch(() => {});
    await dbA.close();
    await dbB.close();
    await drop();
  });

  test("a fork created on replica B while replica A revokes its parent ends with the parent", async () => {
    const parent = await A.createSession(sessionRequest(agentId(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    // B's fork locks the parent and inserts, then waits here (the revision
    // lock, which any committing writer holds for a moment).
    await barrier.query("BEGIN");
    await barrier.query("SELECT pg_advisory_xact_lock(7734001)");
    const fork = B.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(10) } } }), NO_HASH);
    await waitForLockWaiters(barrier, 1);
    // A's revoke reads the parent's forks (not the new one, uncommitted),
    // then waits for the parent's row lock, which B's fork holds.
    const revoke = A.terminate(parent.sessionId, SessionStatus.REVOKED, "revoked by a person");
    await waitForLockWaiters(barrier, 2);
    await barrier.query("COMMIT");
    const child = await fork;
    assert.equal(SessionStatus[(await revoke).status], "REVOKED");
    const now = await A.getSession(child.sessionId);
    assert.equal(SessionStatus[now.status], "REVOKED", `the fork of a revoked session is ${SessionStatus[now.status]}`);
    const { rows } = await dbA.query<{ data: Record<string, unknown> }>("SELECT data FROM events WHERE session_id = $1 AND type = 'session.revoked'", [child.sessionId]);
    assert.deepEqual(rows.map((r) => r.data.ended_with), [parent.sessionId], "its event says it ended with its parent");
  });

  test("two replicas deciding and capturing on one session at once chain its audit records in turn: one unbroken chain", async () => {
    // Each replica reads the session's audit head without a lock of its
    // own: the session's row lock, taken first, is what orders appenders.
    // Were a head read before that lock (or the lock skipped), the later
    // writer would chain onto a stale head: two records with one seq.
    const s = await A.createSession(sessionRequest(agentId(), { daily: { maxValueMicros: USD(1000) } }), NO_HASH);
    const decided = await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        (i % 2 === 0 ? A : B).decide({ method: i % 3 === 0 ? "authorize" : "check", sessionId: s.sessionId, action: payment(USD(1)), idempotencyKey: "", requestHash: NO_HASH }),
      ),
    );
    const holds = decided.filter((r): r is AuthorizeResponse => "authorizationId" in r && r.authorizationId !== "");
    assert.equal(holds.length, 20);
    await Promise.all(holds.map((h, i) => (i % 2 === 0 ? B : A).capture({ sessionId: s.sessionId, authorizationId: h.authorizationId, idempotencyKey: "" } as never, NO_HASH)));
    const { rows } = await dbA.query<{ chain_seq: string }>("SELECT chain_seq FROM audit_records WHERE chain_id = $1 ORDER BY seq", [s.sessionId]);
    // The session's creation, 60 decisions, 20 captures: seq 1…81, in log order.
    assert.deepEqual(
      rows.map((r) => Number(r.chain_seq)),
      Array.from({ length: 81 }, (_, i) => i + 1),
    );
    const v = await verifyStoredLog(dbA);
    assert.equal(v.ok, true, v.problem?.reason);
  });

  test("two replicas' checkpoints close together, with a capture in flight, leave a log that verifies", async () => {
    const dir = await mkdtemp(join(tmpdir(), "warden-replicas-"));
    try {
      const ckA = createAuditCheckpointer({ db: dbA, key: await loadOrCreateAuditKey(join(dir, "a.jwk")) });
      const ckB = createAuditCheckpointer({ db: dbB, key: await loadOrCreateAuditKey(join(dir, "b.jwk")) });
      const s = await A.createSession(sessionRequest(agentId(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const other = await A.createSession(sessionRequest(agentId(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const hold = (await A.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(10)), idempotencyKey: "", requestHash: NO_HASH })) as AuthorizeResponse;
      assert.equal(hold.decision!.outcome, Outcome.ALLOW);
      await ckA.checkpoint();
      // A capture on replica A: its audit record is inserted (its log seq
      // taken), then it waits to record its event (the revision lock, which
      // any committing writer holds for a moment: here, the barrier).
      await barrier.query("BEGIN");
      await barrier.query("SELECT pg_advisory_xact_lock(7734001)");
      const capture = A.capture({ sessionId: s.sessionId, authorizationId: hold.authorizationId, idempotencyKey: "" } as never, NO_HASH);
      await waitForLockWaiters(barrier, 1);
      // Meanwhile another session's decision commits, and both replicas'
      // checkpoint timers fire: the first to run waits for the capture to
      // commit, the other for it (one checkpoint at a time).
      await B.decide({ method: "check", sessionId: other.sessionId, action: payment(USD(1)), idempotencyKey: "", requestHash: NO_HASH });
      const both = Promise.all([ckA.checkpoint(), ckB.checkpoint()]);
      // The capture, and the second checkpoint: without the wait both would
      // be signed by now, without the capture's record.
      await waitForLockWaiters(barrier, 2);
      await barrier.query("COMMIT");
      await capture;
      await both;
      const v = await verifyStoredLog(dbA);
      assert.equal(v.ok, true, `an untampered log fails verification: ${JSON.stringify(v.problem, (_k, x) => (typeof x === "bigint" ? x.toString() : x))}`);
    } finally {
      await barrier.query("ROLLBACK").catch(() => {});
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a watch started on replica B while replica A's revoke is in flight starts once it committed, and a sidecar then hears of it", async () => {
    const feed = await createChangeFeed({ store: B, pollIntervalMs: 3_600_000 });
    const svc = createSyncService({ store: B, feed, heartbeatMs: 20 });
    const agent = agentId();
    const s = await A.createSession(sessionRequest(agent, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    await feed.wake();
    // A's revoke takes its revision, then waits here (the session's audit chain head).
    await barrier.query("BEGIN");
    await barrier.query("SELECT 1 FROM audit_chains WHERE chain_id = $1 FOR UPDATE", [s.sessionId]);
    const revoke = A.terminate(s.sessionId, SessionStatus.REVOKED, "revoked by a person");
    await waitForLockWaiters(barrier, 1);
    // A new sidecar watches from revision 0. Its start waits for the revoke:
    // counted as sent while uncommitted, the revocation would never be sent,
    // and a session fetched meanwhile would stay ACTIVE in that sidecar.
    const ac = new AbortController();
    const stream = svc.watchSessions!(create(WatchSessionsRequestSchema, { agentId: agent, fromRevision: 0n }), { signal: ac.signal } as never) as AsyncGenerator<WatchSessionsResponse>;
    try {
      const first = stream.next();
      await waitForLockWaiters(barrier, 2);
      await barrier.query("ROLLBACK");
      await revoke;
      const start = (await first).value as WatchSessionsResponse;
      const state = await B.sessionState(s.sessionId);
      assert.equal(SessionStatus[state.sessions[0]!.status], "REVOKED", "what the sidecar fetches after the watch began");
      assert.ok(start.revision >= BigInt(state.sessions[0]!.revision), "the watch starts at or after the revocation's revision");
    } finally {
      barrier.query("ROLLBACK").catch(() => {});
      ac.abort();
      await stream.return(undefined);
      await feed.stop();
    }
  });
});
