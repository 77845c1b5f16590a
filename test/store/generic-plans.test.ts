// The transactions that cache their plans (TransactionOptions.genericPlans:
// decision batches, lease grants, lease reports) let PostgreSQL plan each
// statement once per connection, for no values in particular, and keep
// that plan as the store grows. Every statement they run must therefore be planned through
// an index even when planned on a nearly empty store, as on a fresh
// install's first calls: a sequential scan planned then would read a whole
// table on every later call.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { AcquireLeaseRequestSchema, LeaseRecordSchema, LeaseReportSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import type { Database, Queryable } from "../../src/store/database.js";
import { newId } from "../../src/store/ids.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

/**
 * Tables a statement reads whole on purpose: every active webhook
 * endpoint is matched against a batch's events (a deployment has tens).
 */
const WHOLE_TABLE_READS = new Set(["webhook_endpoints"]);

/** `db`, recording the text of every statement run inside a transaction that caches its plans. */
function recordingGenericStatements(db: Database, texts: Set<string>): Database {
  return {
    ...db,
    transaction(fn, options) {
      if (options?.genericPlans !== true) return db.transaction(fn, options);
      return db.transaction(
        (tx) =>
          fn({
            query(sql, params) {
              texts.add(sql);
              return tx.query(sql, params);
            },
          } as Queryable),
        options,
      );
    },
  };
}

for (const driver of DRIVERS) {
  describe(`cached plans (${driver})`, () => {
    let t: TestDatabase;
    const texts = new Set<string>();

    before(async () => {
      t = await openTestDatabase(driver);
      const clock = new ManualClock();
      const store = createWardenStore({ db: recordingGenericStatements(t.db, texts), now: clock.now });
      // Everything those transactions do, on a store of a handful of rows:
      // an agent with a policy of its own, a session and its fork, decisions
      // with and without idempotency keys (a retry among them), a denial
      // (its limit notice) that trips a circuit breaker, an approval asked
      // for, a session used up by a decision and one by a lease report, a
      // lease granted, reported on and given back, and holds a sidecar
      // placed, then captured and voided in its next report.
      const agentId = "agent-plans";
      await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", monthly: { maxValueMicros: USD(10_000) } } }));
      const session = (policy: Parameters<typeof sessionRequest>[1]) => store.createSession(sessionRequest(agentId, policy), NO_HASH);
      const parent = await session({ daily: { maxValueMicros: USD(100) }, requireApprovalAboveMicros: USD(40) });
      const fork = await store.forkSession(
        create(ForkSessionRequestSchema, {
          parentSessionId: parent.sessionId,
          policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(20) }, circuitBreaker: { pauseAfterDenialsInARow: 1 } },
        }),
        NO_HASH,
      );
      const usedUpByDecision = await session({ lifetime: { maxValueMicros: USD(5) } });
      const usedUpByReport = await session({ lifetime: { maxValueMicros: USD(3) } });
      const decide = (sessionId: string, method: "check" | "authorize", amount: bigint, idempotencyKey = "") =>
        store.decide({ method, sessionId, action: payment(amount), idempotencyKey, requestHash: NO_HASH });
      await Promise.all([decide(parent.sessionId, "check", USD(1)), decide(fork.sessionId, "authorize", USD(2), "k1"), decide(parent.sessionId, "check", USD(3), "k2")]);
      await decide(fork.sessionId, "authorize", USD(2), "k1");
      assert.equal(Outcome[(await decide(parent.sessionId, "check", USD(45))).decision!.outcome], "NEEDS_APPROVAL");
      assert.equal(Outcome[(await decide(fork.sessionId, "check", USD(50))).decision!.outcome], "DENY");
      await decide(usedUpByDecision.sessionId, "check", USD(5));
      // A lease of half what is left, reported spent whole, with the other half
      // spent meanwhile by a decision when `meanwhile`.
      const report = async (sessionId: string, meanwhile = false) => {
        const lease = await store.leases.acquire(
          create(AcquireLeaseRequestSchema, { sessionId, holder: "sidecar-1", desiredValueMicros: USD(100), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
        );
        assert.ok(lease, "a lease is granted");
        const value = lease.valueMicros ?? assert.fail("the lease has a value");
        if (meanwhile) await decide(sessionId, "check", value);
        const record = create(LeaseRecordSchema, {
          actionId: newId("act", clock.ms),
          method: "check",
          action: payment(value),
          decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
          createTime: timestampFromMs(clock.ms),
          processingNanos: 1000n,
        });
        await store.leases.report(
          create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId, leaseId: lease.leaseId, records: [record], release: true })] }),
        );
      };
      await report(parent.sessionId);
      await report(usedUpByReport.sessionId, true);
      // Holds a sidecar placed, settled in its next report: one captured,
      // one voided.
      const holder = await session({ daily: { maxValueMicros: USD(100) } });
      const lease = await store.leases.acquire(
        create(AcquireLeaseRequestSchema, { sessionId: holder.sessionId, holder: "sidecar-1", desiredValueMicros: USD(10), desiredActions: 10n, minValueMicros: 1n, ttl: durationFromMs(30_000) }),
      );
      assert.ok(lease, "a lease is granted");
      const hold = () =>
        create(LeaseRecordSchema, {
          actionId: newId("act", clock.ms),
          method: "authorize",
          action: payment(USD(2)),
          decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
          createTime: timestampFromMs(clock.ms),
          holdExpireTime: timestampFromMs(clock.ms + 60_000),
          processingNanos: 1000n,
        });
      const holds = [hold(), hold()];
      const sidecarReport = (init: MessageInitShape<typeof LeaseReportSchema>) =>
        store.leases.report(
          create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports: [create(LeaseReportSchema, { sessionId: holder.sessionId, leaseId: lease.leaseId, ...init })] }),
        );
      await sidecarReport({ records: holds });
      const refused = await sidecarReport({
        settlements: [
          { authorizationId: holds[0]!.actionId, captureMicros: USD(1), time: timestampFromMs(clock.ms) },
          { authorizationId: holds[1]!.actionId, time: timestampFromMs(clock.ms) },
        ],
        release: true,
      });
      assert.deepEqual(refused, []);
      const ended = await Promise.all([fork, usedUpByDecision, usedUpByReport].map(async (s) => SessionStatus[(await store.getSession(s.sessionId)).status]));
      assert.deepEqual(ended, ["PAUSED", "EXHAUSTED", "EXHAUSTED"]);
    });
    after(() => t.drop());

    test("every statement of a transaction that caches its plans is planned through an index, even on a nearly empty store", async () => {
      // Locks, counters, audit heads, keys, writes, lease rows, endings: 25 or so.
      assert.ok(texts.size >= 20, `only ${texts.size} statements recorded`);
      const scans: string[] = [];
      for (const sql of texts) {
        const params = Math.max(0, ...[...sql.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
        const plan = await t.db.transaction(async (tx) => {
          await tx.query("SET LOCAL plan_cache_mode = force_generic_plan");
          await tx.query(`PREPARE generic_probe AS ${sql}`);
          const { rows } = await tx.query<{ "QUERY PLAN": string }>(`EXPLAIN EXECUTE generic_probe(${Array(params).fill("NULL").join(", ")})`);
          await tx.query("DEALLOCATE generic_probe");
          return rows.map((r) => r["QUERY PLAN"]).join("\n");
        });
        for (const [scan, table] of plan.matchAll(/Seq Scan on (\w+)/g)) {
          if (!WHOLE_TABLE_READS.has(table!)) scans.push(`${scan} in:\n${sql}\n${plan}`);
        }
      }
      assert.deepEqual(scans, []);
    });
  });
}
