import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import type { ReadyzBody } from "../../src/observability/observability-routes.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { createStoreLocation, grpcClient, startServerProcess, tempDataDir } from "../helpers/server-process.js";
import { grpcJsClient, grpcJsUnary } from "../transport/harness.js";
import { http1Request, http2Request, parseSamples, scrape, valueOf } from "./scrape.js";

/** Health/Check as a Kubernetes gRPC probe sends it: @grpc/grpc-js over h2c, service "". */
async function grpcCheck(address: string, service = ""): Promise<Status> {
  const client = grpcJsClient(Health, address);
  try {
    const { response } = await grpcJsUnary<{ status: Status }>(client, "check", create(HealthCheckRequestSchema, { service }));
    return response.status;
  } finally {
    client.close();
  }
}

describe("warden serve: metrics, health and readiness", { timeout: 60_000 }, () => {
  let server: RunningServer;
  let dataDir: string;
  let httpUrl: string;
  let grpcAddress: string;
  let healthUrl: string;
  let closed: Promise<void> | undefined;

  before(async () => {
    dataDir = tempDataDir();
    server = await startServer({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      healthAddress: "127.0.0.1:0",
      dataDir,
      sweepIntervalMs: 60_000,
      logger: createLogger("silent"),
    });
    httpUrl = `http://127.0.0.1:${server.httpPort}`;
    grpcAddress = `127.0.0.1:${server.grpcPort}`;
    healthUrl = `http://127.0.0.1:${server.healthPort}`;
  });
  after(async () => {
    await (closed ??= server.close(0));
    rmSync(dataDir, { recursive: true, force: true });
  });

  test("decisions over gRPC move warden_decisions_total, the latency histogram and the store timings, on HTTP/1.1 and h2c", async () => {
    const sessions = createClient(SessionService, createConnectTransport({ baseUrl: httpUrl, httpVersion: "1.1" }));
    const { session } = await sessions.createSession(sessionRequest("agent-metrics", { daily: { maxValueMicros: USD(10) }, allowedMerchants: ["acme"] }));
    const sessionId = session!.sessionId;
    const before = await scrape(httpUrl);
    assert.equal(valueOf(before, "warden_decisions_total"), undefined);

    const policy = grpcClient(PolicyService, grpcAddress);
    try {
      for (let i = 0; i < 2; i++) {
        const r = await policy.check({ sessionId, action: payment(USD(4)) });
        assert.equal(r.decision.outcome, Outcome.ALLOW);
      }
      const over = await policy.check({ sessionId, action: payment(USD(4)) });
      assert.deepEqual(over.decision.reasons, [Reason.LIMIT_DAILY_VALUE]);
      const elsewhere = await policy.authorize({ sessionId, action: payment(USD(5), "globex") });
      assert.deepEqual(elsewhere.decision.reasons, [Reason.LIMIT_DAILY_VALUE, Reason.MERCHANT_NOT_ALLOWED]);
      await assert.rejects(policy.check({ sessionId, action: payment(0n) }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
      await assert.rejects(policy.authorize({ sessionId: "no-such-session", action: payment(USD(1)) }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
    } finally {
      policy.close();
    }

    for (const request of [http1Request, http2Request]) {
      const res = await request(`${httpUrl}/metrics`);
      assert.equal(res.status, 200);
      assert.match(String(res.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
      const s = parseSamples(res.body);
      assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "ALLOW", reason: "NONE" }), 2);
      assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "DENY", reason: "LIMIT_DAILY_VALUE" }), 1);
      assert.equal(valueOf(s, "warden_decisions_total", { method: "authorize", outcome: "DENY", reason: "LIMIT_DAILY_VALUE" }), 1);
      assert.equal(valueOf(s, "warden_decisions_total", { method: "authorize", outcome: "DENY", reason: "MERCHANT_NOT_ALLOWED" }), 1);
      assert.equal(valueOf(s, "warden_decisions_total"), 5);
      // Errors are not decisions: they have their own counter, by gRPC code.
      assert.equal(valueOf(s, "warden_decision_errors_total", { method: "check", code: "INVALID_ARGUMENT" }), 1);
      assert.equal(valueOf(s, "warden_decision_errors_total", { method: "authorize", code: "NOT_FOUND" }), 1);
      // One latency per decision, on the store path (serve decides every call in the store).
      assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "check", path: "store" }), 3);
      assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "authorize", path: "store" }), 1);
      assert.equal(valueOf(s, "warden_decision_duration_seconds_bucket", { method: "check", path: "store", le: "+Inf" }), 3);
      // Each decision ran at least one transaction, with statements in it.
      const txBefore = valueOf(before, "warden_store_query_duration_seconds_count", { op: "transaction" })!;
      assert.ok(valueOf(s, "warden_store_query_duration_seconds_count", { op: "transaction" })! >= txBefore + 4);
      assert.ok(valueOf(s, "warden_store_query_duration_seconds_count", { op: "query" })! > 0);
      assert.notEqual(valueOf(s, "process_cpu_user_seconds_total"), undefined);
    }
  });

  test("/healthz and /readyz on the main HTTP port, over HTTP/1.1 and h2c, agree with gRPC health on every port", async () => {
    for (const request of [http1Request, http2Request]) {
      const live = await request(`${httpUrl}/healthz`);
      assert.equal(live.status, 200);
      assert.equal(live.body, "ok\n");
      const ready = await request(`${httpUrl}/readyz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(JSON.parse(ready.body) as ReadyzBody, {
        ready: true,
        conditions: [
          { name: "store", ready: true },
          { name: "listeners", ready: true },
        ],
      });
    }
    for (const address of [grpcAddress, `127.0.0.1:${server.httpPort}`, `127.0.0.1:${server.healthPort}`]) {
      assert.equal(await grpcCheck(address), Status.SERVING, address);
      assert.equal(await grpcCheck(address, "warden.v1.ApprovalService"), Status.SERVING, address);
    }
    // The RPCs still answer on the port that serves the routes.
    const health = createClient(Health, createConnectTransport({ baseUrl: httpUrl, httpVersion: "2" }));
    assert.equal((await health.check({ service: "warden.v1.PolicyService" })).status, Status.SERVING);
  });

  test("the health listener serves the same /metrics", async () => {
    const s = await scrape(healthUrl);
    assert.equal(valueOf(s, "warden_decisions_total"), 5);
  });

  test("on shutdown, readiness turns 503 / NOT_SERVING while calls drain, and the health listener answers until they have", async () => {
    // A Watch on the main gRPC port is a call in flight that ends only when
    // the client lets it go: it holds the drain open while we look.
    const client = grpcJsClient(Health, grpcAddress);
    const call = (client.watch as (req: unknown) => grpc.ClientReadableStream<{ status: Status }>)(create(HealthCheckRequestSchema, { service: "" }));
    call.on("error", () => {}); // the cancellation below surfaces here
    const seen: Status[] = [];
    const sawNotServing = new Promise<void>((resolve) =>
      call.on("data", (res: { status: Status }) => {
        seen.push(res.status);
        if (res.status === Status.NOT_SERVING) resolve();
      }),
    );
    await new Promise<void>((resolve) => call.once("data", () => resolve()));

    closed = server.close(30_000);
    await sawNotServing;
    assert.deepEqual(seen, [Status.SERVING, Status.NOT_SERVING]);
    for (const request of [http1Request, http2Request]) {
      const ready = await request(`${healthUrl}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal((JSON.parse(ready.body) as ReadyzBody).shuttingDown, true);
      assert.equal((await request(`${healthUrl}/healthz`)).status, 503);
    }
    assert.equal(await grpcCheck(`127.0.0.1:${server.healthPort}`), Status.NOT_SERVING);
    // So does every service by name: a client or proxy that health-checks
    // the service it calls (Envoy, gRPC client-side health checking) stops too.
    for (const service of ["warden.v1.PolicyService", "warden.v1.SessionService", "warden.v1.SyncService"]) {
      assert.equal(await grpcCheck(`127.0.0.1:${server.healthPort}`, service), Status.NOT_SERVING, service);
    }
    assert.equal(await grpcCheck(`127.0.0.1:${server.healthPort}`, "grpc.health.v1.Health"), Status.SERVING, "health itself answers to the end");
    assert.notEqual(valueOf(await scrape(healthUrl), "warden_decisions_total"), undefined);

    call.cancel();
    client.close();
    await closed;
    await assert.rejects(http1Request(`${healthUrl}/healthz`), (e: NodeJS.ErrnoException) => e.code === "ECONNREFUSED");
  });
});

describe("warden serve --health-listen", { timeout: 60_000 }, () => {
  test("logs the health port with the others; probes and scrapes reach it", async () => {
    const store = await createStoreLocation("pglite");
    const proc = await startServerProcess(store.location, ["--health-listen", "127.0.0.1:0"]);
    try {
      const listening = proc.logs.find((l) => l.msg === "listening")!;
      assert.equal(typeof listening.healthPort, "number");
      const healthUrl = `http://127.0.0.1:${listening.healthPort as number}`;
      assert.equal(await grpcCheck(`127.0.0.1:${listening.healthPort as number}`), Status.SERVING);
      assert.equal((await http2Request(`${healthUrl}/readyz`)).status, 200);
      const s = await scrape(healthUrl);
      assert.equal(valueOf(s, "warden_cache_requests_total", { result: "hit" }), 0);
      assert.ok(valueOf(s, "warden_store_query_duration_seconds_count", { op: "transaction" })! > 0, "migrations ran through the timed database");
    } finally {
      assert.equal(await proc.stop(), 0, "graceful shutdown exits 0");
      await store.drop();
    }
  });
});
