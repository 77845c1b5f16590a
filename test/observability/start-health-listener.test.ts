import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import { ListActionsRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createMetrics } from "../../src/observability/metrics.js";
import { createObservabilityRoutes, type ReadyzBody } from "../../src/observability/observability-routes.js";
import { createReadiness, type Readiness } from "../../src/observability/readiness.js";
import { startHealthListener } from "../../src/observability/start-health-listener.js";
import type { ListeningServer } from "../../src/transport/connect-server.js";
import { HealthStatus } from "../../src/transport/health-service.js";
import { grpcJsClient, grpcJsUnary } from "../transport/harness.js";
import { http1Request, http2Request, parseSamples, valueOf } from "./scrape.js";

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

describe("startHealthListener", { timeout: 30_000 }, () => {
  let listener: ListeningServer;
  let readiness: Readiness;
  let health: HealthStatus;
  let address: string;
  const metrics = createMetrics({ processMetrics: false });

  before(async () => {
    health = new HealthStatus();
    readiness = createReadiness({ health, services: ["warden.v1.PolicyService"] });
    readiness.set("store", false, "migrating");
    readiness.set("control-plane", true);
    listener = await startHealthListener("127.0.0.1:0", { health, routes: createObservabilityRoutes({ registry: metrics.registry, readiness }) });
    address = `127.0.0.1:${listener.port}`;
  });
  after(() => listener.close(0));

  test("/readyz and gRPC health go from 503 / NOT_SERVING to 200 / SERVING together", async () => {
    for (const request of [http1Request, http2Request]) {
      const res = await request(`${listener.url}/readyz`);
      assert.equal(res.status, 503);
      assert.equal(res.headers["content-type"], "application/json");
      assert.deepEqual(JSON.parse(res.body) as ReadyzBody, {
        ready: false,
        conditions: [
          { name: "store", ready: false, detail: "migrating" },
          { name: "control-plane", ready: true },
        ],
      });
    }
    assert.equal(await grpcCheck(address), Status.NOT_SERVING);
    assert.equal(await grpcCheck(address, "warden.v1.PolicyService"), Status.NOT_SERVING);
    // Liveness does not follow readiness: a dependency being down is no reason to restart.
    assert.equal((await http1Request(`${listener.url}/healthz`)).status, 200);

    readiness.set("store", true);
    const res = await http1Request(`${listener.url}/readyz`);
    assert.equal(res.status, 200);
    assert.equal((JSON.parse(res.body) as ReadyzBody).ready, true);
    assert.equal(await grpcCheck(address), Status.SERVING);
    assert.equal(await grpcCheck(address, "warden.v1.PolicyService"), Status.SERVING);

    readiness.set("control-plane", false, "unreachable since 2030-01-01T00:00:00Z");
    const down = await http2Request(`${listener.url}/readyz`);
    assert.equal(down.status, 503);
    assert.deepEqual((JSON.parse(down.body) as ReadyzBody).conditions[1], { name: "control-plane", ready: false, detail: "unreachable since 2030-01-01T00:00:00Z" });
    assert.equal(await grpcCheck(address), Status.NOT_SERVING);
    readiness.set("control-plane", true);
    assert.equal(await grpcCheck(address), Status.SERVING);
  });

  test("/metrics serves the Prometheus text format over HTTP/1.1 and h2c; HEAD has no body; other methods get 405", async () => {
    metrics.recordDecisionError("check", "UNAVAILABLE");
    for (const request of [http1Request, http2Request]) {
      const res = await request(`${listener.url}/metrics`);
      assert.equal(res.status, 200);
      assert.equal(res.headers["content-type"], metrics.registry.contentType);
      assert.equal(res.headers["cache-control"], "no-store");
      assert.equal(valueOf(parseSamples(res.body), "warden_decision_errors_total", { method: "check", code: "UNAVAILABLE" }), 1);
      const head = await request(`${listener.url}/metrics`, "HEAD");
      assert.equal(head.status, 200);
      assert.equal(head.body, "");
      const post = await request(`${listener.url}/metrics?x=1`, "POST");
      assert.equal(post.status, 405);
      assert.equal(post.headers.allow, "GET, HEAD");
    }
  });

  test("serves only Health: other services are UNIMPLEMENTED, other paths 404", async () => {
    const client = grpcJsClient(PolicyService, address);
    try {
      await assert.rejects(grpcJsUnary(client, "listActions", create(ListActionsRequestSchema, { sessionId: "s1" })), (e: grpc.ServiceError) => e.code === grpc.status.UNIMPLEMENTED);
    } finally {
      client.close();
    }
    assert.equal((await http1Request(`${listener.url}/metricsz`)).status, 404);
    // Connect clients reach Health on the same port as the probes.
    const connect = createClient(Health, createConnectTransport({ baseUrl: listener.url, httpVersion: "1.1" }));
    assert.equal((await connect.check({ service: "" })).status, Status.SERVING);
  });

  test("shutdown makes /healthz and /readyz 503 and gRPC health NOT_SERVING, for good", async () => {
    readiness.shutdown();
    readiness.set("store", true); // too late: shutting down wins
    for (const request of [http1Request, http2Request]) {
      const live = await request(`${listener.url}/healthz`);
      assert.equal(live.status, 503);
      assert.equal(live.body, "shutting down\n");
      const ready = await request(`${listener.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal((JSON.parse(ready.body) as ReadyzBody).shuttingDown, true);
    }
    assert.equal(await grpcCheck(address), Status.NOT_SERVING);
    assert.equal(health.get(""), Status.NOT_SERVING);
  });
});

describe("createReadiness", () => {
  test("with no conditions it is ready, and it sets the health registry at once", () => {
    const health = new HealthStatus();
    health.set("", "NOT_SERVING");
    const r = createReadiness({ health });
    assert.equal(r.ready, true);
    assert.equal(r.live, true);
    assert.equal(health.get(""), Status.SERVING);
    assert.deepEqual(r.conditions(), []);
  });
});
