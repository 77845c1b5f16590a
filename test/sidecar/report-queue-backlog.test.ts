import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DecisionSchema, Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, LeaseSettlementSchema, SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { newId } from "../../src/store/ids.js";
import { createGrpcServer, type GrpcServer, mountService } from "../../src/transport/grpc-server.js";
import { payment, USD } from "../helpers/fixtures.js";

// The control plane's gRPC listener as `warden control-plane` binds it
// (createGrpcServer without serverOptions), with a SyncService that
// acknowledges every report and counts the records it received.
let server: GrpcServer;
let received = 0;
let settled = 0;
let released = 0;
before(async () => {
  server = await createGrpcServer("127.0.0.1:0", [
    mountService(SyncService, {
      async reportLeases(req) {
        for (const r of req.reports) {
          received += r.records.length;
          settled += r.settlements.length;
          if (r.release) released++;
        }
        return { rejected: [] };
      },
    }),
  ]);
});
const client = () => createClient(SyncService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}`, defaultTimeoutMs: 5_000 }));
after(async () => {
  await server.close(0);
});

test("a backlog built up while the control plane was away reaches it through a real gRPC listener once it is back", async () => {
  // The sidecar's client, as start-sidecar.ts creates it.
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}`, defaultTimeoutMs: 5_000 });
  const sync = createClient(SyncService, transport);
  const errors: string[] = [];
  const q = new ReportQueue({ holder: "h", intervalMs: 50, send: (req) => sync.reportLeases(req), onError: (e) => errors.push(String(e)) });
  // ~40 s offline with an agent retrying once a millisecond: every call is
  // answered DENY (CONTROL_PLANE_UNAVAILABLE) and recorded for the store.
  const now = Date.now();
  const n = 40_000;
  for (let i = 0; i < n; i++) {
    q.record(
      "ses_1",
      "",
      create(LeaseRecordSchema, {
        actionId: newId("act", now + i),
        method: "check",
        action: payment(USD(12)),
        decision: create(DecisionSchema, {
          outcome: Outcome.DENY,
          reasons: [Reason.CONTROL_PLANE_UNAVAILABLE],
          message: "deny: the control plane has been unreachable for too long",
        }),
        createTime: timestampFromMs(now + i),
        processingNanos: 12_345n,
      }),
    );
  }
  // The control plane is back: one flush sends it all, in sends the
  // transport takes (its limit is 4 MiB a message; this is ~6 MB).
  await q.flush();
  assert.equal(received, n, `every record reached the control plane (send errors: ${errors[0]})`);
  assert.equal(q.size, 0, "nothing left queued");
});

test("records with large metadata go in sends under the transport's limit, not in one refused for ever", async () => {
  received = settled = released = 0;
  const sync = client();
  const errors: string[] = [];
  const q = new ReportQueue({ holder: "h", intervalMs: 50, send: (req) => sync.reportLeases(req), onError: (e) => errors.push(String(e)) });
  // An agent that records its tool calls' arguments: 16 KB of metadata a
  // decision (the API allows 32 values of 1 KB), 400 decisions, ~6.5 MB.
  const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`arg${i}`, "x".repeat(1000)]));
  const now = Date.now();
  for (let i = 0; i < 400; i++) {
    q.record(
      "ses_big",
      "lease_1",
      create(LeaseRecordSchema, {
        actionId: newId("act", now + i),
        method: "check",
        action: { ...payment(USD(1)), metadata },
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
        createTime: timestampFromMs(now + i),
        processingNanos: 1_000n,
      }),
    );
  }
  q.release("ses_big", "lease_1");
  await q.flush();
  assert.deepEqual({ received, released, errors: errors.slice(0, 1) }, { received: 400, released: 1, errors: [] });
  assert.equal(q.size, 0);
});

test("one session's many keyed settlements go in parts under the transport's limit, after its records", async () => {
  received = settled = released = 0;
  const sync = client();
  const errors: string[] = [];
  const order: string[] = [];
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 50,
    send: async (req) => {
      for (const r of req.reports) if (r.records.length + r.settlements.length > 0) order.push(r.records.length > 0 ? "records" : "settlements");
      return sync.reportLeases(req);
    },
    onError: (e) => errors.push(String(e)),
  });
  const now = Date.now();
  const n = 12_000;
  for (let i = 0; i < n; i++) {
    q.record("ses_keys", "lease_1", create(LeaseRecordSchema, { actionId: newId("act", now + i), method: "authorize", action: payment(USD(1)), decision: create(DecisionSchema, { outcome: Outcome.ALLOW }), createTime: timestampFromMs(now + i) }));
  }
  // Each keyed Capture carries its key, request hash and answer (~420 bytes): ~5 MB.
  for (let i = 0; i < n; i++) {
    q.settle(
      "ses_keys",
      create(LeaseSettlementSchema, {
        authorizationId: newId("act", now + i),
        captureMicros: USD(1),
        time: timestampFromMs(now + i),
        idempotencyKey: `capture-${i}-${"k".repeat(100)}`,
        requestHash: new Uint8Array(32).fill(1),
        response: new Uint8Array(250).fill(2),
      }),
    );
  }
  await q.flush();
  assert.deepEqual({ received, settled, errors: errors.slice(0, 1) }, { received: n, settled: n, errors: [] });
  assert.equal(q.size, 0);
  assert.equal(order.lastIndexOf("records") < order.indexOf("settlements"), true, `every record before any settlement: ${order.join(",")}`);
});
