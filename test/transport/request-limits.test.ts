import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { ActionSchema, CheckRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { payment, sessionRequest } from "../helpers/fixtures.js";
import { startTestServer } from "../helpers/server-process.js";

const MB = 1024 * 1024;

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/** `bytes` as a length-delimited field `n` (wire type 2). */
const field = (n: number, bytes: Buffer) => Buffer.concat([varint((n << 3) | 2), varint(bytes.length), bytes]);

/** A raw gRPC Check with a hand-made body; resolves to the status name. */
function grpcCheck(address: string, body: Buffer): Promise<string> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": -1 });
  return new Promise((resolve) => {
    client.makeUnaryRequest("/warden.v1.PolicyService/Check", (b: Buffer) => b, (b: Buffer) => b, body, new grpc.Metadata(), {}, (err) => {
      client.close();
      resolve(err ? grpc.status[err.code!]! : "OK");
    });
  });
}

// Both listeners read requests the same way: a request one refuses, the
// other does not decide, and nothing the schema does not know is kept.
describe("request limits on both listeners", () => {
  let server: RunningServer;
  let sessions: ReturnType<typeof createClient<typeof SessionService>>;
  let policy: ReturnType<typeof createClient<typeof PolicyService>>;
  before(async () => {
    server = await startTestServer();
    const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.grpcPort}` });
    sessions = createClient(SessionService, transport);
    policy = createClient(PolicyService, transport);
  });
  after(async () => server?.close(0));
  const newSession = async (agent: string) => (await sessions.createSession(sessionRequest(agent, {}))).session!.sessionId;

  test("a request past 4 MiB is RESOURCE_EXHAUSTED on both ports, and nothing is decided", async () => {
    const sid = await newSession("big-bodies");
    const check = Buffer.from(toBinary(CheckRequestSchema, create(CheckRequestSchema, { sessionId: sid, action: payment(5n) })));
    // A well-formed Check with a 5 MiB field the schema does not know.
    const padded = Buffer.concat([check, field(111, Buffer.alloc(5 * MB, 0x61))]);
    assert.equal(await grpcCheck(`127.0.0.1:${server.grpcPort}`, padded), "RESOURCE_EXHAUSTED");
    assert.equal(await grpcCheck(`127.0.0.1:${server.httpPort}`, padded), "RESOURCE_EXHAUSTED", "gRPC on the Connect port");
    const r = await fetch(`http://127.0.0.1:${server.httpPort}/warden.v1.PolicyService/Check`, { method: "POST", headers: { "content-type": "application/proto" }, body: padded });
    assert.equal(((await r.json()) as { code: string }).code, "resource_exhausted", "Connect binary");
    assert.equal((await policy.listActions({ sessionId: sid })).actions.length, 0);
  });

  test("a 20 KiB gzip body that inflates to 20 MiB of JSON is refused, not inflated and decided", async () => {
    const sid = await newSession("gzip-bomb");
    const json = Buffer.concat([
      Buffer.from(`{"sessionId":"${sid}",`),
      Buffer.alloc(20 * MB, 0x20),
      Buffer.from(`"action":{"type":"payment","amount":{"currencyCode":"USD","amountMicros":"5"}}}`),
    ]);
    const body = gzipSync(json);
    assert.ok(body.length < 64 * 1024);
    const r = await fetch(`http://127.0.0.1:${server.httpPort}/warden.v1.PolicyService/Check`, {
      method: "POST",
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
      body,
    });
    const text = await r.text();
    assert.equal((JSON.parse(text) as { code: string }).code, "resource_exhausted", text.slice(0, 120));
    assert.equal((await policy.listActions({ sessionId: sid })).actions.length, 0);
  });

  test("fields of an Action the server does not know are dropped, on every port and protocol: not stored, listed or exported", async () => {
    const sid = await newSession("unknown-fields");
    // A payment Action plus field 99 holding 256 KiB, where the whole of
    // metadata is capped at 32 pairs of 1 KiB and description at 1 KiB.
    const action = Buffer.concat([Buffer.from(toBinary(ActionSchema, payment(5n))), field(99, Buffer.alloc(256 * 1024, 0x61))]);
    const body = Buffer.concat([Buffer.from(toBinary(CheckRequestSchema, create(CheckRequestSchema, { sessionId: sid }))), field(2, action)]);
    assert.equal(await grpcCheck(`127.0.0.1:${server.grpcPort}`, body), "OK");
    assert.equal(await grpcCheck(`127.0.0.1:${server.httpPort}`, body), "OK");
    const r = await fetch(`http://127.0.0.1:${server.httpPort}/warden.v1.PolicyService/Check`, { method: "POST", headers: { "content-type": "application/proto" }, body });
    assert.equal(r.status, 200);
    const listed = await policy.listActions({ sessionId: sid });
    assert.equal(listed.actions.length, 3);
    for (const a of listed.actions) assert.equal(a.action!.$unknown, undefined, "stored with fields nothing validated");
    for (const a of (await sessions.exportSession({ sessionId: sid })).snapshot!.actions) assert.equal(a.action!.$unknown, undefined);
  });
});
