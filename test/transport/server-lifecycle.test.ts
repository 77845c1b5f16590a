import assert from "node:assert/strict";
import http2 from "node:http2";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type HandlerContext, type ServiceImpl, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { type CheckRequest, CheckRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createConnectServer } from "../../src/transport/connect-server.js";
import { createGrpcServer, mountService } from "../../src/transport/grpc-server.js";
import { deferred, grpcJsClient, grpcJsUnary, startStacks } from "./harness.js";

/** A PolicyService whose Check either waits for the test ("gate") or for its signal ("hang"). */
function createGatedPolicyService() {
  let gate = deferred();
  let started = deferred();
  const reasons: unknown[] = [];
  const counter = { entered: 0 };
  const impl: Partial<ServiceImpl<typeof PolicyService>> = {
    async check(req: CheckRequest, ctx: HandlerContext) {
      counter.entered++;
      started.resolve();
      if (req.sessionId === "gate") await gate.promise;
      if (req.sessionId === "hang") {
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
        reasons.push(ctx.signal.reason);
        throw ctx.signal.reason;
      }
      return { actionId: `done-${req.sessionId}` };
    },
  };
  return {
    impl,
    reasons,
    /** How many calls have reached the handler. */
    entered: () => counter.entered,
    /** Resolves once a call has reached the handler; re-armed by reset(). */
    started: () => started.promise,
    open: () => gate.resolve(),
    reset() {
      gate = deferred();
      started = deferred();
    },
  };
}

const req = (sessionId: string) => create(CheckRequestSchema, { sessionId, action: { type: "payment" } });

describe("one port for HTTP/1.1 and h2c", { timeout: 20_000 }, () => {
  test("curl-style HTTP/1.1 JSON, h2c, gRPC and gRPC-Web all reach the same handler", async () => {
    const fake = createGatedPolicyService();
    const server = await createConnectServer("127.0.0.1:0", (r) => r.service(PolicyService, fake.impl));
    try {
      // What `curl -d` sends: HTTP/1.1, Connect unary JSON.
      const res = await fetch(`${server.url}/warden.v1.PolicyService/Check`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ sessionId: "curl", action: { type: "payment" } }),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { actionId: "done-curl" });

      // A bare HTTP/2 client with prior knowledge, as `curl --http2-prior-knowledge`.
      const session = http2.connect(server.url);
      try {
        const stream = session.request({ ":method": "POST", ":path": "/warden.v1.PolicyService/Check", "content-type": "application/json" });
        stream.end(JSON.stringify({ sessionId: "h2c", action: { type: "payment" } }));
        let body = "";
        stream.setEncoding("utf8").on("data", (d: string) => (body += d));
        const headers = await new Promise<http2.IncomingHttpHeaders>((resolve) => stream.once("response", resolve));
        await new Promise((resolve) => stream.once("end", resolve));
        assert.equal(headers[":status"], 200);
        assert.deepEqual(JSON.parse(body), { actionId: "done-h2c" });
      } finally {
        session.close();
      }

      const transports: Transport[] = [
        createGrpcTransport({ baseUrl: server.url }),
        createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }),
        createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2" }),
      ];
      for (const t of transports) assert.equal((await createClient(PolicyService, t).check(req("t"))).actionId, "done-t");
    } finally {
      await server.close(0);
    }
  });

  test("a bad listen address is rejected", async () => {
    await assert.rejects(createConnectServer("127.0.0.1", () => {}), /invalid listen address/);
    await assert.rejects(createConnectServer("127.0.0.1:99999", () => {}), /invalid listen address/);
  });

  test("the bound address is reported, IPv6 in brackets", async () => {
    const server = await createConnectServer("[::1]:0", () => {});
    try {
      assert.equal(server.host, "::1");
      assert.ok(server.port > 0);
      assert.equal(server.url, `http://[::1]:${server.port}`);
    } finally {
      await server.close(0);
    }
  });
});

describe("graceful close", { timeout: 20_000 }, () => {
  test("grpc-js server: an in-flight call finishes, new connections are refused, close waits for it", async () => {
    const fake = createGatedPolicyService();
    const server = await createGrpcServer("127.0.0.1:0", [mountService(PolicyService, fake.impl)]);
    const address = `127.0.0.1:${server.port}`;
    const client = grpcJsClient(PolicyService, address);
    try {
      const events: string[] = [];
      const inFlight = grpcJsUnary<{ actionId: string }>(client, "check", req("gate")).then((r) => events.push(`call ${r.response.actionId}`));
      await fake.started();
      const closed = server.close(10_000).then(() => events.push("closed"));
      // A new client on a new connection is turned away.
      const late = grpcJsClient(PolicyService, address);
      try {
        await assert.rejects(grpcJsUnary(late, "check", req("late"), { deadline: Date.now() + 1000 }), (e: grpc.ServiceError) =>
          [grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED].includes(e.code),
        );
      } finally {
        late.close();
      }
      assert.deepEqual(events, [], "nothing finished while the gate is shut");
      fake.open();
      await Promise.all([inFlight, closed]);
      assert.deepEqual(events, ["call done-gate", "closed"]);
    } finally {
      client.close();
    }
  });

  for (const httpVersion of ["1.1", "2"] as const) {
    test(`connect server, HTTP/${httpVersion}: an in-flight call finishes, new connections are refused, close waits for it and no longer`, async () => {
      const fake = createGatedPolicyService();
      const server = await createConnectServer("127.0.0.1:0", (r) => r.service(PolicyService, fake.impl));
      const client = createClient(PolicyService, createConnectTransport({ baseUrl: server.url, httpVersion }));
      const events: string[] = [];
      // Over HTTP/1.1, fetch keeps the connection alive after the response;
      // the server must close it rather than wait for the client.
      const call =
        httpVersion === "1.1"
          ? fetch(`${server.url}/warden.v1.PolicyService/Check`, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ sessionId: "gate", action: { type: "payment" } }),
            }).then(async (res) => ((await res.json()) as { actionId: string }).actionId)
          : client.check(req("gate")).then((r) => r.actionId);
      const inFlight = call.then((id) => events.push(`call ${id}`));
      await fake.started();
      const closed = server.close(10_000).then(() => events.push("closed"));
      await assert.rejects(fetch(`${server.url}/warden.v1.PolicyService/Check`, { method: "POST" }), /fetch failed/);
      assert.deepEqual(events, []);
      const opened = Date.now();
      fake.open();
      await Promise.all([inFlight, closed]);
      assert.deepEqual(events, ["call done-gate", "closed"]);
      assert.ok(Date.now() - opened < 1_000, `closed ${Date.now() - opened} ms after the call finished`);
    });
  }

  test("idle keep-alive connections (HTTP/1.1 and HTTP/2) do not hold close up", async () => {
    const fake = createGatedPolicyService();
    const stacks = await startStacks([mountService(PolicyService, fake.impl)]);
    // Leave one idle connection of each kind open on each server.
    await createClient(PolicyService, createConnectTransport({ baseUrl: stacks.connect.url, httpVersion: "1.1" })).check(req("a"));
    await createClient(PolicyService, createConnectTransport({ baseUrl: stacks.connect.url, httpVersion: "2" })).check(req("b"));
    const client = grpcJsClient(PolicyService, stacks.grpcAddress);
    await grpcJsUnary(client, "check", req("c"));
    const start = Date.now();
    await stacks.close(10_000);
    client.close();
    assert.ok(Date.now() - start < 2_000, `closed in ${Date.now() - start} ms`);
  });

  test("when the grace period runs out, handlers' signals abort with UNAVAILABLE and clients are told so", async () => {
    const fake = createGatedPolicyService();
    const stacks = await startStacks([mountService(PolicyService, fake.impl)]);
    const grpcClient = grpcJsClient(PolicyService, stacks.grpcAddress);
    try {
      const calls = [
        grpcJsUnary(grpcClient, "check", req("hang")).then(
          () => undefined,
          (e: grpc.ServiceError) => e.code as number,
        ),
        createClient(PolicyService, createConnectTransport({ baseUrl: stacks.connect.url, httpVersion: "2" }))
          .check(req("hang"))
          .then(
            () => undefined,
            (e: unknown) => ConnectError.from(e).code as number,
          ),
      ];
      // Both calls must be in their handlers before the close starts.
      await waitFor(() => fake.entered() === 2);
      const start = Date.now();
      await stacks.close(100);
      const elapsed = Date.now() - start;
      assert.deepEqual(await Promise.all(calls), [Code.Unavailable, Code.Unavailable]);
      assert.equal(fake.reasons.length, 2);
      for (const r of fake.reasons) assert.equal(ConnectError.from(r).code, Code.Unavailable);
      assert.ok(elapsed >= 100 && elapsed < 1_000, `closed in ${elapsed} ms`);
    } finally {
      grpcClient.close();
    }
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setImmediate(resolve));
  }
}
