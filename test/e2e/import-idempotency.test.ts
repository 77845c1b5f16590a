// A session moved with ExportSession/ImportSession keeps the first answers
// of its idempotency keys: a call whose answer was lost before the move,
// retried at the new store, gets that answer there and is charged nothing
// again (design.md §4: retries never double-charge).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { clone } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService, SessionSnapshotSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { startTestServer } from "../helpers/server-process.js";

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    const c = ConnectError.from(e);
    return `${Code[c.code]}: ${c.rawMessage}`;
  }
}

describe("ExportSession and ImportSession carry the session's idempotency keys", () => {
  let a: RunningServer;
  let b: RunningServer;
  before(async () => {
    a = await startTestServer();
    b = await startTestServer();
  });
  after(async () => {
    await a?.close(0);
    await b?.close(0);
  });

  test("a Check and a Capture retried at the new store get their first answers and charge nothing again; the key with another request is refused", async () => {
    // One store over Connect, the other over gRPC: the answers are the same bytes.
    const ta = createConnectTransport({ baseUrl: `http://127.0.0.1:${a.httpPort}`, httpVersion: "1.1" });
    const tb = createGrpcTransport({ baseUrl: `http://127.0.0.1:${b.grpcPort}` });
    const A = { sessions: createClient(SessionService, ta), policy: createClient(PolicyService, ta) };
    const B = { sessions: createClient(SessionService, tb), policy: createClient(PolicyService, tb) };
    const sid = (await A.sessions.createSession(sessionRequest("mover", { lifetime: { maxValueMicros: USD(100) } }))).session!.sessionId;
    const check = await A.policy.check({ sessionId: sid, action: payment(USD(10)), idempotencyKey: "order-1" });
    const auth = await A.policy.authorize({ sessionId: sid, action: payment(USD(20)) });
    const capture = await A.policy.capture({ sessionId: sid, authorizationId: auth.authorizationId, amount: payment(USD(15)).amount, idempotencyKey: "capture-1" });
    const { snapshot } = await A.sessions.exportSession({ sessionId: sid });
    assert.deepEqual(
      snapshot!.idempotencyKeys.map((k) => [k.idempotencyKey, k.method]),
      [
        ["order-1", "check"],
        ["capture-1", "capture"],
      ],
    );
    await B.sessions.importSession({ snapshot });
    const retried = await B.policy.check({ sessionId: sid, action: payment(USD(10)), idempotencyKey: "order-1" });
    assert.equal(retried.actionId, check.actionId, "the first answer, not a new decision");
    const recaptured = await B.policy.capture({ sessionId: sid, authorizationId: auth.authorizationId, amount: payment(USD(15)).amount, idempotencyKey: "capture-1" });
    assert.equal(recaptured.authorization?.actionId, capture.authorization?.actionId);
    assert.equal((await B.sessions.getSession({ sessionId: sid })).session!.usage!.valueCommittedMicros, USD(25), "10 checked + 15 captured, once each");
    assert.match(await codeOf(B.policy.check({ sessionId: sid, action: payment(USD(11)), idempotencyKey: "order-1" })), /^InvalidArgument: idempotency_key: "order-1" was already used for a different request/);
  });

  test("a snapshot's key answer that is not one, a key twice, or the import's own key among them: INVALID_ARGUMENT naming the field, nothing imported", async () => {
    const A = createClient(SessionService, createConnectTransport({ baseUrl: `http://127.0.0.1:${a.httpPort}`, httpVersion: "1.1" }));
    const P = createClient(PolicyService, createConnectTransport({ baseUrl: `http://127.0.0.1:${a.httpPort}`, httpVersion: "1.1" }));
    const B = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${b.grpcPort}` }));
    const sid = (await A.createSession(sessionRequest("mover-2", {}))).session!.sessionId;
    await P.check({ sessionId: sid, action: payment(USD(1)), idempotencyKey: "k1" });
    const { snapshot } = await A.exportSession({ sessionId: sid });
    const variant = (change: (s: typeof snapshot & object) => void) => {
      const s = clone(SessionSnapshotSchema, snapshot!);
      change(s);
      return s;
    };
    const wrong: string[] = [];
    for (const [field, s, key] of [
      ["snapshot.idempotency_keys[0].method", variant((s) => (s.idempotencyKeys[0]!.method = "create_session")), ""],
      // Its approval is not carried: a retried verdict could never reach the answer.
      ["snapshot.idempotency_keys[0].method", variant((s) => (s.idempotencyKeys[0]!.method = "approve_approval")), ""],
      ["snapshot.idempotency_keys[0].response", variant((s) => (s.idempotencyKeys[0]!.response = new Uint8Array([0x0a, 0xff]))), ""],
      ["snapshot.idempotency_keys[1].idempotency_key", variant((s) => s.idempotencyKeys.push(clone(SessionSnapshotSchema, s).idempotencyKeys[0]!)), ""],
      ["idempotency_key", snapshot!, "k1"],
    ] as const) {
      const got = await codeOf(B.importSession({ snapshot: s, idempotencyKey: key }));
      if (!got.startsWith(`InvalidArgument: ${field}`) && !got.startsWith(`InvalidArgument: invalid request: ${field}`)) wrong.push(`${field}: ${got}`);
    }
    assert.deepEqual(wrong, []);
    assert.match(await codeOf(B.getSession({ sessionId: sid })), /^NotFound/);
  });
});
