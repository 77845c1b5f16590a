// Two replicas deciding for one agent (several sessions, forks) at once.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { AuthorizeResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
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

describe("two replicas deciding for one agent at once", () => {
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
    A = createWardenStore({ db: dbA, now: clock.now });
    B = createWardenStore({ db: dbB, now: clock.now });
    drop = () => pgdb.drop();
  });
  after(async () => {
    await dbA.close();
    await dbB.close();
    await drop();
  });

  test("an agent's limit holds across two replicas deciding, capturing and leasing at once", async () => {
    const agent = "counter-agent";
    const sessions: string[] = [];
    for (let i = 0; i < 4; i++) {
      const s = await (i % 2 ? A : B).createSession(sessionRequest(agent, { lifetime: { maxValueMicros: USD(500) } }), NO_HASH);
      sessions.push(s.sessionId);
      const f = await (i % 2 ? B : A).forkSession(create(ForkSessionRequestSchema, { parentSessionId: s.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(100) } } }), NO_HASH);
      sessions.push(f.sessionId);
    }
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      const store = i % 2 ? A : B;
      const sid = sessions[i % sessions.length]!;
      const method = i % 3 === 0 ? "authorize" : "check";
      ops.push(
        store.decide({ method, sessionId: sid, action: payment(USD(3)), idempotencyKey: i % 5 === 0 ? `k${i % 10}` : "", requestHash: NO_HASH }).then(async (r) => {
          if (r.decision?.outcome !== Outcome.ALLOW) return;
          if (method === "authorize") {
            const id = (r as AuthorizeResponse).authorizationId;
            if (id) await (i % 2 ? B : A).capture({ sessionId: sid, authorizationId: id, idempotencyKey: "" } as never, NO_HASH).catch(() => {});
          }
        }),
      );
      if (i % 20 === 0) ops.push(store.leases.acquire(create(AcquireLeaseRequestSchema, { sessionId: sid, holder: `sc${i % 2}`, desiredValueMicros: USD(10), desiredActions: 3n, ttl: durationFromMs(10_000) })));
      if (i === 100) ops.push(A.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId: agent, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(300) } } })));
    }
    const results = await Promise.allSettled(ops);
    const failed = results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason));
    assert.deepEqual(failed.filter((m) => !/has ended|EXHAUSTED|already used for a different/.test(m)), []);
    await assertLedgerConsistent(dbA);
    const v = await verifyStoredLog(dbA);
    assert.equal(v.ok, true, v.problem?.reason);
  });
});
