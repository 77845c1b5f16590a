import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { DecisionSchema, Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { createMetrics, DECISION_DURATION_BUCKETS, grpcCodeName } from "../../src/observability/metrics.js";
import { withQueryMetrics } from "../../src/observability/with-query-metrics.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPgliteDatabase } from "../../src/store/pglite-database.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { parseSamples, valueOf } from "./scrape.js";

async function samples(metrics: ReturnType<typeof createMetrics>) {
  return parseSamples(await metrics.registry.metrics());
}

describe("createMetrics", () => {
  test("a decision counts once per reason, NONE when it lists none, with enum names as labels", async () => {
    const m = createMetrics({ processMetrics: false });
    m.recordDecision("check", create(DecisionSchema, { outcome: Outcome.ALLOW }), 0.00002, "local");
    m.recordDecision("check", create(DecisionSchema, { outcome: Outcome.ALLOW }), 0.00002, "local");
    m.recordDecision("authorize", create(DecisionSchema, { outcome: Outcome.DENY, reasons: [Reason.LIMIT_DAILY_VALUE, Reason.MERCHANT_BLOCKED] }), 0.003, "store");
    m.recordDecision("check", { outcome: Outcome.NEEDS_APPROVAL, reasons: [Reason.APPROVAL_REQUIRED] }, 0.003, "store");
    const s = await samples(m);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "ALLOW", reason: "NONE" }), 2);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "authorize", outcome: "DENY", reason: "LIMIT_DAILY_VALUE" }), 1);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "authorize", outcome: "DENY", reason: "MERCHANT_BLOCKED" }), 1);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "NEEDS_APPROVAL", reason: "APPROVAL_REQUIRED" }), 1);
    // Three decisions over four reasons plus two plain ALLOWs: the sum is per reason.
    assert.equal(valueOf(s, "warden_decisions_total"), 5);
  });

  test("counts keep accumulating across scrapes", async () => {
    const m = createMetrics({ processMetrics: false });
    const allow = create(DecisionSchema, { outcome: Outcome.ALLOW });
    m.recordDecision("check", allow, 0.001, "store");
    m.recordCacheLookup(true);
    assert.equal(valueOf(await samples(m), "warden_decisions_total"), 1);
    m.recordDecision("check", allow, 0.001, "store");
    m.recordCacheLookup(true);
    m.recordCacheLookup(false);
    const s = await samples(m);
    assert.equal(valueOf(s, "warden_decisions_total"), 2);
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count"), 2);
    assert.equal(valueOf(s, "warden_cache_requests_total", { result: "hit" }), 2);
    assert.equal(valueOf(s, "warden_cache_requests_total", { result: "miss" }), 1);
  });

  test("the duration histogram has cumulative buckets from 10 µs to 1 s, by method and path", async () => {
    const m = createMetrics({ processMetrics: false });
    const allow = create(DecisionSchema, { outcome: Outcome.ALLOW });
    m.recordDecision("check", allow, 0.000005, "local"); // below the first bound
    m.recordDecision("check", allow, 0.00001, "local"); // on a bound: le is inclusive
    m.recordDecision("check", allow, 0.0004, "local");
    m.recordDecision("check", allow, 2, "local"); // above the last bound: only +Inf
    m.recordDecision("check", allow, 0.01, "exact");
    const s = await samples(m);
    const bucket = (le: string, path = "local") => valueOf(s, "warden_decision_duration_seconds_bucket", { method: "check", path, le });
    assert.deepEqual(
      s.filter((x) => x.name === "warden_decision_duration_seconds_bucket" && x.labels.path === "local").map((x) => x.labels.le),
      [...DECISION_DURATION_BUCKETS.map(String), "+Inf"],
    );
    assert.equal(DECISION_DURATION_BUCKETS[0], 0.00001);
    assert.equal(DECISION_DURATION_BUCKETS.at(-1), 1);
    assert.equal(bucket("0.00001"), 2);
    assert.equal(bucket("0.00025"), 2);
    assert.equal(bucket("0.0005"), 3);
    assert.equal(bucket("1"), 3);
    assert.equal(bucket("+Inf"), 4);
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "check", path: "local" }), 4);
    assert.ok(Math.abs(valueOf(s, "warden_decision_duration_seconds_sum", { method: "check", path: "local" })! - 2.000415) < 1e-9);
    assert.equal(bucket("0.005", "exact"), 0);
    assert.equal(bucket("0.01", "exact"), 1);
  });

  test("errors are counted apart from decisions, by gRPC code name", async () => {
    const m = createMetrics({ processMetrics: false });
    m.recordDecisionError("check", grpcCodeName(Code.InvalidArgument));
    m.recordDecisionError("check", grpcCodeName(Code.InvalidArgument));
    m.recordDecisionError("authorize", grpcCodeName(Code.Unavailable));
    const s = await samples(m);
    assert.equal(valueOf(s, "warden_decision_errors_total", { method: "check", code: "INVALID_ARGUMENT" }), 2);
    assert.equal(valueOf(s, "warden_decision_errors_total", { method: "authorize", code: "UNAVAILABLE" }), 1);
    assert.equal(valueOf(s, "warden_decisions_total"), undefined);
    assert.equal(grpcCodeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
    assert.equal(grpcCodeName(Code.Canceled), "CANCELED");
  });

  test("cache, lease and store families", async () => {
    const m = createMetrics({ processMetrics: false });
    let s = await samples(m);
    // Series that exist before anything happens, so rates start at zero.
    assert.equal(valueOf(s, "warden_cache_requests_total", { result: "hit" }), 0);
    assert.equal(valueOf(s, "warden_cache_requests_total", { result: "miss" }), 0);
    for (const op of ["grant", "renew", "return", "expire", "reconcile"]) assert.equal(valueOf(s, "warden_lease_operations_total", { op }), 0);
    for (const result of ["claimed", "answered", "in_progress", "unclaimed"]) assert.equal(valueOf(s, "warden_idempotency_claims_total", { result }), 0);
    assert.equal(valueOf(s, "warden_store_query_duration_seconds_count", { op: "query" }), 0);
    assert.equal(valueOf(s, "warden_store_query_duration_seconds_count", { op: "transaction" }), 0);

    let cached = { sessions: 42, bytes: 123_456 };
    m.watchCacheSize(() => cached);
    m.recordLeaseOperation("grant");
    m.recordLeaseOperation("return", 3);
    m.recordClaim("in_progress");
    m.recordClaim("claimed");
    m.recordClaim("claimed");
    m.recordReconciledMicros(12_500_000n);
    m.recordReconciledMicros(-5); // ignored: a counter never goes down
    m.recordHoldWrittenOffMicros(3_000_000n);
    m.recordHoldWrittenOffMicros(0);
    m.observeStoreQuery("transaction", 0.004);
    s = await samples(m);
    assert.equal(valueOf(s, "warden_cache_sessions"), 42);
    assert.equal(valueOf(s, "warden_cache_bytes"), 123_456);
    // Read at scrape time: the next scrape sees the cache as it is then.
    cached = { sessions: 7, bytes: 900 };
    s = await samples(m);
    assert.equal(valueOf(s, "warden_cache_sessions"), 7);
    assert.equal(valueOf(s, "warden_cache_bytes"), 900);
    assert.equal(valueOf(s, "warden_lease_operations_total", { op: "grant" }), 1);
    assert.equal(valueOf(s, "warden_lease_operations_total", { op: "return" }), 3);
    assert.equal(valueOf(s, "warden_idempotency_claims_total", { result: "claimed" }), 2);
    assert.equal(valueOf(s, "warden_idempotency_claims_total", { result: "in_progress" }), 1);
    assert.equal(valueOf(s, "warden_lease_reconciled_micros_total"), 12_500_000);
    assert.equal(valueOf(s, "warden_hold_written_off_micros_total"), 3_000_000);
    assert.equal(valueOf(s, "warden_store_query_duration_seconds_count", { op: "transaction" }), 1);
    assert.equal(valueOf(s, "warden_store_query_duration_seconds_bucket", { op: "transaction", le: "0.0025" }), 0);
    assert.equal(valueOf(s, "warden_store_query_duration_seconds_bucket", { op: "transaction", le: "0.005" }), 1);
  });

  test("sync gauges only on request; staleness is the time since the last contact, at scrape time", async () => {
    assert.equal(valueOf(await samples(createMetrics({ processMetrics: false })), "warden_control_plane_connected"), undefined);

    let now = 1_000_000;
    const m = createMetrics({ processMetrics: false, sync: true, now: () => now });
    let s = await samples(m);
    assert.equal(valueOf(s, "warden_control_plane_connected"), 0);
    assert.equal(valueOf(s, "warden_sync_staleness_seconds"), 0);
    now += 2_500;
    assert.equal(valueOf(await samples(m), "warden_sync_staleness_seconds"), 2.5);
    m.setControlPlaneConnected(true);
    now += 100;
    m.recordSyncApplied(77n, 0.03);
    now += 400;
    s = await samples(m);
    assert.equal(valueOf(s, "warden_control_plane_connected"), 1);
    assert.equal(valueOf(s, "warden_sync_revision"), 77);
    assert.equal(valueOf(s, "warden_sync_lag_seconds"), 0.03);
    assert.equal(valueOf(s, "warden_sync_staleness_seconds"), 0.4);
    m.setControlPlaneConnected(false);
    now += 10_000;
    s = await samples(m);
    assert.equal(valueOf(s, "warden_control_plane_connected"), 0);
    assert.equal(valueOf(s, "warden_sync_staleness_seconds"), 10.4);
    m.markSyncContact();
    assert.equal(valueOf(await samples(m), "warden_sync_staleness_seconds"), 0);
  });

  test("a sidecar's report families, only on request: backlog read at scrape time, sends by result, records and refused settlements", async () => {
    const plain = await samples(createMetrics({ processMetrics: false }));
    for (const name of ["warden_report_backlog", "warden_reports_total", "warden_sync_staleness_bound_seconds"]) assert.equal(valueOf(plain, name), undefined, name);

    const m = createMetrics({ processMetrics: false, sync: true });
    let s = await samples(m);
    assert.equal(valueOf(s, "warden_report_backlog"), 0);
    assert.equal(valueOf(s, "warden_report_backlog_age_seconds"), 0);
    for (const result of ["sent", "failed", "refused"]) assert.equal(valueOf(s, "warden_reports_total", { result }), 0, result);
    let backlog = { entries: 12, oldestAgeMs: 2_500 };
    m.watchReportBacklog(() => backlog);
    m.setStalenessBound(10);
    m.recordReportSend("sent");
    m.recordReportSend("failed");
    m.recordReportSend("failed");
    m.recordReportedRecords(40);
    m.recordReportedRecords(2);
    m.recordRejectedSettlements(1);
    s = await samples(m);
    assert.equal(valueOf(s, "warden_report_backlog"), 12);
    assert.equal(valueOf(s, "warden_report_backlog_age_seconds"), 2.5);
    assert.equal(valueOf(s, "warden_sync_staleness_bound_seconds"), 10);
    assert.equal(valueOf(s, "warden_reports_total", { result: "sent" }), 1);
    assert.equal(valueOf(s, "warden_reports_total", { result: "failed" }), 2);
    assert.equal(valueOf(s, "warden_reports_total", { result: "refused" }), 0);
    assert.equal(valueOf(s, "warden_reported_records_total"), 42);
    assert.equal(valueOf(s, "warden_report_settlements_rejected_total"), 1);
    backlog = { entries: 0, oldestAgeMs: 0 };
    assert.equal(valueOf(await samples(m), "warden_report_backlog"), 0);
  });

  test("each instance has its own registry; process metrics are on by default", async () => {
    const a = createMetrics();
    const b = createMetrics();
    a.recordDecisionError("check", "INTERNAL");
    const sa = await samples(a);
    const sb = await samples(b);
    assert.equal(valueOf(sa, "warden_decision_errors_total"), 1);
    assert.equal(valueOf(sb, "warden_decision_errors_total"), undefined);
    for (const name of ["process_cpu_user_seconds_total", "process_resident_memory_bytes", "nodejs_eventloop_lag_seconds", "nodejs_heap_size_used_bytes"]) {
      assert.notEqual(valueOf(sa, name), undefined, name);
    }
    assert.equal(valueOf(await samples(createMetrics({ processMetrics: false })), "process_cpu_user_seconds_total"), undefined);
  });
});

describe("withQueryMetrics on PGlite", () => {
  test("times every statement and transaction, failed ones too, and passes the rest through", async () => {
    const m = createMetrics({ processMetrics: false });
    const raw = await createPgliteDatabase(undefined);
    const db = withQueryMetrics(raw, m);
    try {
      assert.equal(db.kind, "pglite");
      assert.equal(db.parallelism, raw.parallelism);
      assert.deepEqual((await db.query<{ n: number }>("SELECT 1 AS n")).rows, [{ n: 1 }]);
      const sum = await db.transaction(async (tx) => {
        const a = await tx.query<{ n: number }>("SELECT 2 AS n");
        const b = await tx.query<{ n: number }>("SELECT $1::int AS n", [3]);
        return a.rows[0]!.n + b.rows[0]!.n;
      });
      assert.equal(sum, 5);
      await assert.rejects(db.query("SELECT * FROM no_such_table"));
      await assert.rejects(db.transaction((tx) => tx.query("SELECT * FROM no_such_table")));
      const s = await samples(m);
      // 1 + 2 inside + 1 failed + 1 failed inside.
      assert.equal(valueOf(s, "warden_store_query_duration_seconds_count", { op: "query" }), 5);
      assert.equal(valueOf(s, "warden_store_query_duration_seconds_count", { op: "transaction" }), 2);
      assert.ok(valueOf(s, "warden_store_query_duration_seconds_sum", { op: "transaction" })! > 0);
    } finally {
      await db.close();
    }
  });
});

describe("withQueryMetrics on PostgreSQL", () => {
  test("passes a transaction's options through: its plan caching reaches the connection", async () => {
    const pgdb = await createPostgresDatabase();
    const db = withQueryMetrics(createPgDatabase({ connectionString: pgdb.url }), createMetrics({ processMetrics: false }));
    try {
      const mode = (genericPlans: boolean) =>
        db.transaction(async (tx) => (await tx.query<{ m: string }>("SELECT current_setting('plan_cache_mode') AS m")).rows[0]!.m, { genericPlans });
      assert.deepEqual([await mode(true), await mode(false)], ["auto", "force_custom_plan"]);
    } finally {
      await db.close();
      await pgdb.drop();
    }
  });
});
