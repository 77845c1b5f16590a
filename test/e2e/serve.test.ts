import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { AgentService } from "../../src/gen/warden/v1/agent_service_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { CheckRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import type { SessionPolicySchema } from "../../src/gen/warden/v1/policy_pb.js";
import { CreateSessionRequestSchema, SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { USD } from "../helpers/fixtures.js";
import { createStoreLocation, grpcClient, type ServerProcess, startServerProcess } from "../helpers/server-process.js";

function sessionInit(policy: MessageInitShape<typeof SessionPolicySchema>, extra: Record<string, unknown> = {}) {
  return create(CreateSessionRequestSchema, {
    agentId: "agent-e2e",
    policy: { currencyCode: "USD", ...policy },
    expiration: { case: "ttl", value: durationFromMs(3_600_000) },
    ...(extra as object),
  });
}

function checkReq(sessionId: string, amountMicros: bigint) {
  return create(CheckRequestSchema, { sessionId, action: { type: "payment", amount: { currencyCode: "USD", amountMicros }, merchant: "acme" } });
}

for (const driver of DRIVERS) {
  describe(`warden serve on ${driver}`, () => {
    let server: ServerProcess;
    let cleanup: () => Promise<void>;
    before(async () => {
      const store = await createStoreLocation(driver);
      cleanup = store.drop;
      server = await startServerProcess(store.location);
    });
    after(async () => {
      assert.equal(await server.stop(), 0, "graceful shutdown exits 0");
      await cleanup();
    });

    test("200 concurrent Checks over 4 gRPC connections: exactly K allowed, committed equals the sum", async () => {
      const sessions = createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
      const K = 37;
      const { session } = await sessions.createSession(sessionInit({ daily: { maxValueMicros: USD(3) * BigInt(K) } }));
      const clients = Array.from({ length: 4 }, (_, i) => grpcClient(PolicyService, server.grpcAddress, i));
      try {
        const results = await Promise.all(
          Array.from({ length: 200 }, (_, i) => clients[i % 4]!.check(checkReq(session!.sessionId, USD(3)))),
        );
        const allowed = results.filter((r) => r.decision.outcome === Outcome.ALLOW).length;
        assert.equal(allowed, K);
        for (const r of results.filter((r) => r.decision.outcome === Outcome.DENY)) {
          assert.deepEqual(r.decision.reasons, [Reason.LIMIT_DAILY_VALUE]);
        }
        const { session: after } = await sessions.getSession({ sessionId: session!.sessionId });
        assert.equal(after!.usage!.valueCommittedMicros, USD(3) * BigInt(allowed));
        assert.equal(after!.usage!.actionsCommitted, BigInt(allowed));
        assert.equal(after!.usage!.requestCount, 200n);
      } finally {
        for (const c of clients) c.close();
      }
    });

    test("the same implementation answers over gRPC, Connect and gRPC-Web", async () => {
      const transports = [
        createGrpcTransport({ baseUrl: server.httpUrl }),
        createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }),
        createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "2" }),
        createGrpcWebTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }),
      ];
      const sessions = createClient(SessionService, transports[1]!);
      const { session } = await sessions.createSession(sessionInit({ lifetime: { maxActions: 5n } }));
      for (const t of transports) {
        const policy = createClient(PolicyService, t);
        const r = await policy.check(checkReq(session!.sessionId, USD(1)));
        assert.equal(r.decision!.outcome, Outcome.ALLOW);
      }
      const grpcPolicy = grpcClient(PolicyService, server.grpcAddress);
      try {
        const r = await grpcPolicy.check(checkReq(session!.sessionId, USD(1)));
        assert.equal(r.decision.outcome, Outcome.ALLOW);
        // The fifth action used the lifetime limit up: the session is over.
        const { session: done } = await sessions.getSession({ sessionId: session!.sessionId });
        assert.equal(done!.status, SessionStatus.EXHAUSTED);
        assert.equal(done!.usage!.actionsCommitted, 5n);
        await assert.rejects(grpcPolicy.check(checkReq(session!.sessionId, USD(1))), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /EXHAUSTED/.test(e.details));
      } finally {
        grpcPolicy.close();
      }
    });

    test("Authorize, Capture and Void over gRPC; idempotent retries never double-charge", async () => {
      const sessions = createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
      const { session } = await sessions.createSession(sessionInit({ lifetime: { maxValueMicros: USD(100) } }));
      const id = session!.sessionId;
      const policy = grpcClient(PolicyService, server.grpcAddress);
      try {
        const auth = { sessionId: id, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: USD(40) }, merchant: "acme" }, idempotencyKey: "auth-1" };
        const a1 = await policy.authorize(auth);
        const a2 = await policy.authorize(auth);
        assert.equal(a1.authorizationId, a2.authorizationId);
        const cap = { sessionId: id, authorizationId: a1.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(30) }, idempotencyKey: "cap-1" };
        const c1 = await policy.capture(cap);
        const c2 = await policy.capture(cap);
        assert.equal(c1.authorization.capturedAmount.amountMicros, USD(30));
        assert.deepEqual(c2.authorization.updateTime, c1.authorization.updateTime);
        await assert.rejects(policy.capture({ ...cap, idempotencyKey: "cap-2" }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /already captured/.test(e.details));
        await assert.rejects(policy.void({ sessionId: id, authorizationId: a1.authorizationId }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION);
        const { session: s } = await sessions.getSession({ sessionId: id });
        assert.equal(s!.usage!.valueCommittedMicros, USD(30));
        assert.equal(s!.usage!.valueHeldMicros, 0n);
        const history = await policy.listActions({ sessionId: id, pageSize: 10 });
        assert.equal(history.actions.length, 1);
        // An extension retried after a lost answer extends once.
        const grpcSessions = grpcClient(SessionService, server.grpcAddress);
        try {
          const extend = { sessionId: id, extension: { case: "extendBy", value: { seconds: 3600n, nanos: 0 } }, idempotencyKey: "extend-1" };
          const e1 = await grpcSessions.extendSession(extend);
          const e2 = await grpcSessions.extendSession(extend);
          assert.equal(e2.session.expireTime.seconds, e1.session.expireTime.seconds);
          const { session: now } = await sessions.getSession({ sessionId: id });
          assert.equal(String(now!.expireTime!.seconds), String(e1.session.expireTime.seconds));
          await assert.rejects(
            grpcSessions.extendSession({ ...extend, extension: { case: "extendBy", value: { seconds: 60n, nanos: 0 } } }),
            (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /idempotency_key/.test(e.details),
          );
          // So do a pause and an end: the retry gets the first answer, not
          // FAILED_PRECONDITION for the state the first call left.
          const pause = { sessionId: id, reason: "lunch", idempotencyKey: "pause-1" };
          const p1 = await grpcSessions.pauseSession(pause);
          const p2 = await grpcSessions.pauseSession(pause);
          assert.equal(p1.session.status, SessionStatus.PAUSED);
          assert.deepEqual(p2.session.updateTime, p1.session.updateTime);
          await grpcSessions.resumeSession({ sessionId: id });
          const end = { sessionId: id, reason: "done", idempotencyKey: "end-1" };
          const d1 = await grpcSessions.endSession(end);
          const d2 = await grpcSessions.endSession(end);
          assert.equal(d1.session.status, SessionStatus.COMPLETED);
          assert.deepEqual(d2.session, d1.session);
          await assert.rejects(
            grpcSessions.endSession({ ...end, idempotencyKey: "end-2" }),
            (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /already ended/.test(e.details),
          );
          // And an import: the retry gets the session imported, not ALREADY_EXISTS.
          const { snapshot } = await grpcSessions.exportSession({ sessionId: id });
          // Under another id, without the history (action ids are the
          // store's own): this store has the original.
          snapshot.session.sessionId = `${id}-copy`;
          snapshot.actions = [];
          const import1 = await grpcSessions.importSession({ snapshot, idempotencyKey: "import-1" });
          const import2 = await grpcSessions.importSession({ snapshot, idempotencyKey: "import-1" });
          assert.equal(import1.session.sessionId, `${id}-copy`);
          assert.deepEqual(import2.session, import1.session);
          await assert.rejects(
            grpcSessions.importSession({ snapshot: { ...snapshot, exportTime: undefined }, idempotencyKey: "import-1" }),
            (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /idempotency_key/.test(e.details),
          );
          // And an agent's policy: one update, whose etag the retry does not find stale.
          const grpcAgents = grpcClient(AgentService, server.grpcAddress);
          try {
            const update = { agentId: `keyed-agent-${driver}`, policy: { currencyCode: "USD" }, idempotencyKey: "policy-1" };
            const u1 = await grpcAgents.updateAgentPolicy(update);
            const u2 = await grpcAgents.updateAgentPolicy(update);
            assert.equal(u2.agent.etag, u1.agent.etag, "applied once");
            await assert.rejects(
              grpcAgents.updateAgentPolicy({ ...update, policy: { currencyCode: "EUR" } }),
              (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /idempotency_key/.test(e.details),
            );
          } finally {
            grpcAgents.close();
          }
        } finally {
          grpcSessions.close();
        }
      } finally {
        policy.close();
      }
    });

    test("bad input gets INVALID_ARGUMENT naming the field, on both stacks, and writes nothing", async () => {
      const sessions = createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
      const { session } = await sessions.createSession(sessionInit({}));
      const id = session!.sessionId;
      const connectPolicy = createClient(PolicyService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
      const policy = grpcClient(PolicyService, server.grpcAddress);
      const cases: [MessageInitShape<typeof CheckRequestSchema>, RegExp, Code][] = [
        [{ sessionId: id, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: 0n } } }, /action\.amount/, Code.InvalidArgument],
        [{ sessionId: id, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: -5n } } }, /action\.amount/, Code.InvalidArgument],
        [{ sessionId: id, action: { type: "payment", amount: { currencyCode: "EUR", amountMicros: 5n } } }, /currency_code/, Code.InvalidArgument],
        [{ sessionId: "bad id!", action: { type: "payment" } }, /session_id/, Code.InvalidArgument],
        [{ sessionId: id, action: { type: "payment", merchant: "m".repeat(300) } }, /action\.merchant/, Code.InvalidArgument],
        [{ sessionId: id, action: { type: "payment", metadata: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, "v"])) } }, /action\.metadata/, Code.InvalidArgument],
        [{ sessionId: id }, /action/, Code.InvalidArgument],
        [{ sessionId: "no-such-session", action: { type: "payment" } }, /session_id/, Code.NotFound],
      ];
      try {
        for (const [req, field, code] of cases) {
          await assert.rejects(connectPolicy.check(create(CheckRequestSchema, req)), (e: unknown) => {
            const c = ConnectError.from(e);
            assert.equal(Code[c.code], Code[code], c.rawMessage);
            assert.match(c.rawMessage, field);
            return true;
          });
          await assert.rejects(policy.check(create(CheckRequestSchema, req)), (e: grpc.ServiceError) => {
            assert.equal(e.code, code as number, e.details);
            assert.match(e.details, field);
            return true;
          });
        }
        const history = await policy.listActions({ sessionId: id, pageSize: 10 });
        assert.equal(history.actions.length, 0);
      } finally {
        policy.close();
      }
    });

    test("health and reflection on both ports", async () => {
      const health = grpcClient(Health, server.grpcAddress);
      try {
        const r = await health.check({ service: "" });
        assert.equal(r.status, HealthCheckResponse_ServingStatus.SERVING);
        const p = await health.check({ service: "warden.v1.PolicyService" });
        assert.equal(p.status, HealthCheckResponse_ServingStatus.SERVING);
      } finally {
        health.close();
      }
      const connectHealth = createClient(Health, createGrpcTransport({ baseUrl: server.httpUrl }));
      assert.equal((await connectHealth.check({ service: "" })).status, HealthCheckResponse_ServingStatus.SERVING);
    });

    // Last: everything above ran. Logs are JSON lines on stdout; a driver's
    // or the runtime's warning on stderr would bypass them.
    test("all of the above wrote nothing on stderr", () => {
      assert.equal(server.stderr(), "");
    });
  });
}
