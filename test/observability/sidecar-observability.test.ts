import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import { ApprovalService } from "../../src/gen/warden/v1/approval_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { DECISION_PATHS } from "../../src/sidecar/sidecar-engine.js";
import type { RunningSidecar } from "../../src/sidecar/start-sidecar.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { startTestServer, startTestSidecar } from "../helpers/server-process.js";
import { parseSamples, valueOf } from "../observability/scrape.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("sidecar metrics and health", { timeout: 60_000 }, () => {
  let cp: RunningServer;
  let sc: RunningSidecar;
  let admin: Client<typeof SessionService>;

  before(async () => {
    cp = await startTestServer();
    admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    // Leases of 1 s: the test of their expiry waits that long.
    sc = await startTestSidecar(`http://127.0.0.1:${cp.grpcPort}`, "replay-agent", { stalenessBoundMs: 10_000, leaseTtlMs: 1_000 });
  });
  after(async () => {
    await sc?.close(200);
    await cp?.close(0);
  });

  test("a retried keyed Check is labelled with one of the sidecar's decision paths, never \"store\"", async () => {
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin.createSession(sessionRequest("replay-agent", { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const req = { sessionId, action: payment(USD(1)), idempotencyKey: "retry-me" };
    const first = await policy.check(req);
    const again = await policy.check(req);
    assert.equal(first.decision?.outcome, Outcome.ALLOW);
    assert.equal(again.actionId, first.actionId, "precondition: the retry got the first answer");
    assert.notEqual(first.actionId, "");

    const samples = parseSamples(await sc.metrics.registry.metrics()).filter((s) => s.name === "warden_decision_duration_seconds_count");
    const paths = Object.fromEntries(samples.map((s) => [s.labels.path, s.value]));
    const allowed: readonly string[] = DECISION_PATHS;
    assert.deepEqual(
      Object.keys(paths).filter((p) => !allowed.includes(p)),
      [],
      `sidecar decision latencies by path: ${JSON.stringify(paths)}; "store" is the all-in-one server's path, which a sidecar never takes`,
    );
    assert.equal(paths.replay, 1, "the retry, answered again");
  });

  test("a lease that runs out its TTL in the sidecar counts as op=\"expire\" (documented), not as a return", async () => {
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin.createSession(sessionRequest("replay-agent", { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const before = parseSamples(await sc.metrics.registry.metrics());
    assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.ok(sc.engine.leaseCount > 0, "precondition: a lease is held");
    // The lease's TTL is 1 s; housekeeping (every 500 ms) lets it go once it has run out.
    const end = Date.now() + 5_000;
    while (sc.engine.leaseCount > 0 && Date.now() < end) await sleep(50);
    assert.equal(sc.engine.leaseCount, 0, "precondition: the lease ran out");
    const s = parseSamples(await sc.metrics.registry.metrics());
    const delta = (op: string) => valueOf(s, "warden_lease_operations_total", { op })! - valueOf(before, "warden_lease_operations_total", { op })!;
    // (The first test's lease, also 1 s, runs out meanwhile too: count at least this one.)
    assert.equal(delta("grant"), 1);
    assert.deepEqual(
      { expireCounted: delta("expire") >= 1, returnCounted: delta("return") },
      { expireCounted: true, returnCounted: 0 },
      `op=expire never moves: the leases that ran out were counted as ${delta("return")} return(s)`,
    );
  });

  test("gRPC health knows every Warden service the sidecar serves (ApprovalService too), as the control plane's does", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    assert.equal((await health.check({ service: PolicyService.typeName })).status, Status.SERVING, "precondition");
    const served = await health.check({ service: ApprovalService.typeName }).then(
      (r) => Status[r.status],
      (e: unknown) => String(e),
    );
    assert.equal(served, "SERVING");
  });
});
