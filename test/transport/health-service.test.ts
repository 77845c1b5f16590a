import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { Health, HealthCheckRequestSchema, HealthCheckResponse_ServingStatus as Status } from "../../src/gen/grpc/health/v1/health_pb.js";
import { type MountedService, mountService } from "../../src/transport/grpc-server.js";
import { createHealthService, HealthStatus } from "../../src/transport/health-service.js";
import { withValidation } from "../../src/transport/validation.js";
import { connectTransports, grpcJsClient, grpcJsUnary, type Stacks, stackUrls, startStacks } from "./harness.js";

describe("HealthStatus", { timeout: 20_000 }, () => {
  test('starts with the server ("") SERVING and nothing else', () => {
    const h = new HealthStatus();
    assert.equal(h.get(""), Status.SERVING);
    assert.equal(h.get("warden.v1.PolicyService"), undefined);
  });

  test("set accepts names and values, tells subscribers once per change, and delete reports SERVICE_UNKNOWN", () => {
    const h = new HealthStatus();
    const seen: Status[] = [];
    const unsubscribe = h.subscribe("svc", (s) => seen.push(s));
    assert.equal(h.listenerCount("svc"), 1);
    h.set("svc", "SERVING");
    h.set("svc", Status.SERVING); // no change, no call
    h.set("svc", "NOT_SERVING");
    h.delete("svc");
    unsubscribe();
    assert.equal(h.listenerCount("svc"), 0);
    h.set("svc", "SERVING");
    assert.deepEqual(seen, [Status.SERVING, Status.NOT_SERVING, Status.SERVICE_UNKNOWN]);
  });
});

describe("createHealthService on both stacks", { timeout: 20_000 }, () => {
  let stacks: Stacks;
  const health = new HealthStatus();

  before(async () => {
    health.set("warden.v1.PolicyService", "SERVING");
    // Wrapped in withValidation as the server mounts it: Health has no
    // rules, and Watch checks that the wrapper keeps a stream a stream.
    const mounted: MountedService[] = [mountService(Health, withValidation(Health, createHealthService(health)))];
    stacks = await startStacks(mounted);
  });
  after(() => stacks.close());

  test("Check answers the registered status, and NOT_FOUND for an unknown service, over every transport", async () => {
    for (const { name, transport } of connectTransports(stacks)) {
      const client = createClient(Health, transport);
      assert.equal((await client.check({ service: "" })).status, Status.SERVING, name);
      assert.equal((await client.check({ service: "warden.v1.PolicyService" })).status, Status.SERVING, name);
      await assert.rejects(client.check({ service: "no.such.Service" }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
    }
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = grpcJsClient(Health, grpcAddress);
      try {
        const { response } = await grpcJsUnary<{ status: Status }>(client, "check", create(HealthCheckRequestSchema, { service: "" }));
        assert.equal(response.status, Status.SERVING, name);
      } finally {
        client.close();
      }
    }
  });

  test("Watch streams the current status and then every change, over every connect-es transport", async () => {
    const service = "watch.connect";
    for (const { name, transport } of connectTransports(stacks)) {
      health.delete(service);
      const abort = new AbortController();
      const seen: Status[] = [];
      const stream = createClient(Health, transport).watch({ service }, { signal: abort.signal });
      try {
        for await (const res of stream) {
          seen.push(res.status);
          // Each change is made only after the previous status arrived, so
          // none are coalesced and the sequence is exact.
          if (seen.length === 1) health.set(service, "SERVING");
          else if (seen.length === 2) health.set(service, "NOT_SERVING");
          else break;
        }
      } finally {
        abort.abort();
      }
      assert.deepEqual(seen, [Status.SERVICE_UNKNOWN, Status.SERVING, Status.NOT_SERVING], name);
      // The abort reached the handler, which unsubscribed.
      await waitUntil(() => health.listenerCount(service) === 0);
    }
  });

  test("Watch over a grpc-js server-streaming call on both stacks; cancelling it unsubscribes", async () => {
    const service = "watch.grpcjs";
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      health.set(service, "NOT_SERVING");
      const client = grpcJsClient(Health, grpcAddress);
      const seen: Status[] = [];
      try {
        const call = (client.watch as (req: unknown) => grpc.ClientReadableStream<{ status: Status }>)(create(HealthCheckRequestSchema, { service }));
        const ended = new Promise<grpc.StatusObject>((resolve) => call.on("status", resolve));
        call.on("error", () => {}); // the cancellation below surfaces here
        await new Promise<void>((resolve) => {
          call.on("data", (res: { status: Status }) => {
            seen.push(res.status);
            if (seen.length === 1) health.set(service, "SERVING");
            else resolve();
          });
        });
        call.cancel();
        assert.equal((await ended).code, grpc.status.CANCELLED, name);
      } finally {
        client.close();
      }
      assert.deepEqual(seen, [Status.NOT_SERVING, Status.SERVING], name);
    }
    // Both watchers are gone once their calls end.
    await waitUntil(() => health.listenerCount(service) === 0);
  });

  test("a Watch that outlives the grace period ends with UNAVAILABLE when the server closes", async () => {
    const own = await startStacks([mountService(Health, createHealthService(health))]);
    const clients = [
      { name: "grpc-js server", transport: connectTransports(own)[0]!.transport },
      { name: "connect server", transport: connectTransports(own)[1]!.transport },
    ];
    const results = clients.map(async ({ name, transport }) => {
      const seen: Status[] = [];
      try {
        for await (const res of createClient(Health, transport).watch({ service: "" })) seen.push(res.status);
        return { name, seen, code: undefined as Code | undefined };
      } catch (e) {
        return { name, seen, code: ConnectError.from(e).code };
      }
    });
    await waitUntil(() => health.listenerCount("") === 2);
    await own.close(50);
    for (const r of await Promise.all(results)) {
      assert.deepEqual(r.seen, [Status.SERVING], r.name);
      assert.equal(r.code, Code.Unavailable, r.name);
    }
  });
});

async function waitUntil(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
