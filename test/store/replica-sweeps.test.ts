// The sweepers of two replicas on one PostgreSQL database, at once.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { AuthorizeResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { AcquireLeaseRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import type { Database } from "../../src/store/database.js";
import { migrate } from "../../src/store/migrate.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { verifyStoredLog } from "../helpers/audit.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

describe("two replicas sweeping one PostgreSQL database", () => {
  let drop: () => Promise<void>;
  let dbA: Database;
  let dbB: Database;
  let A: WardenStore;
  let B: WardenStore;
  const clock = new ManualClock(Date.now());
  before(async () => {
    const pgdb = await createPostgresDatabase();
    dbA = createPgDatabase({ connectionString: pgdb.url });
    dbB = createPgDatabase({ connectionString: pgdb.url });
    await migrate(dbA);
    A = createWardenStore({ db: dbA, now: clock.now, leaseReconcileGraceMs: 0 });
    B = createWardenStore({ db: dbB, now: clock.now, leaseReconcileGraceMs: 0 });
    drop = () => pgdb.drop();
  });
  after(async () => {
    await dbA.close();
    await dbB.close();
    await drop();
  });

  test("two replicas sweeping at once end each session, hold, approval and lease once", async () => {
    const ids: string[] = [];
    const holds: string[] = [];
    for (let i = 0; i < 12; i++) {
      const agent = `sweep-agent-${i % 3}`;
      const s = await A.createSession(
        sessionRequest(agent, { daily: { maxValueMicros: USD(1000) }, requireApprovalAboveMicros: USD(50), approvalTtl: durationFromMs(30_000) }, { expiration: { case: "ttl", value: durationFromMs(60_000) } }),
        NO_HASH,
      );
      ids.push(s.sessionId);
      const f = await B.forkSession(create(ForkSessionRequestSchema, { parentSessionId: s.sessionId, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } } }), NO_HASH);
      ids.push(f.sessionId);
      for (const sid of [s.sessionId, f.sessionId]) {
        const h = (await (i % 2 ? A : B).decide({ method: "authorize", sessionId: sid, action: payment(USD(5)), idempotencyKey: "", requestHash: NO_HASH })) as AuthorizeResponse;
        if (h.authorizationId) holds.push(h.authorizationId);
      }
      await A.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(60)), idempotencyKey: "", requestHash: NO_HASH });
      await A.leases.acquire(create(AcquireLeaseRequestSchema, { sessionId: f.sessionId, holder: "sc", desiredValueMicros: USD(20), desiredActions: 5n, ttl: durationFromMs(10_000) }));
    }
    clock.advance(61_000);
    const [ra, rb] = await Promise.all([A.sweep(), B.sweep()]);
    assert.deepEqual([...ra.failures, ...rb.failures], []);
    const { rows } = await dbA.query<{ session_id: string; type: string; n: string }>(
      "SELECT session_id, type, count(*) AS n FROM events WHERE type <> 'session.created' GROUP BY 1, 2 HAVING count(*) > 1",
    );
    assert.deepEqual(rows, [], "an event recorded twice");
    const ended = await dbA.query<{ n: string }>("SELECT count(*) AS n FROM sessions WHERE status IN (1, 2)");
    assert.equal(ended.rows[0]!.n, "0");
    await assertLedgerConsistent(dbA);
    const v = await verifyStoredLog(dbA);
    assert.equal(v.ok, true, v.problem?.reason);
  });
});
