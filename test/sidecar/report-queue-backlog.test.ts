import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DecisionSchema, Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { newId } from "../../src/store/ids.js";
import { createGrpcServer, type GrpcServer, mountService } from "../../src/transport/grpc-server.js";
import { payment, USD } from "../helpers/fixtures.js";

// The control plane's gRPC listener as `warden control-plane` binds it
// (createGrpcServer without serverOptions), with a SyncService that
// acknowledges every report and counts the records it received.
let server: GrpcServer;
let received = 0;
before(async () => {
  server = await createGrpcServer("127.0.0.1:0", [
    mountService(SyncService, {
      async reportLeases(req) {
        for (const r of req.reports) received += r.records.length;
        return { rejected: [] };
      },
    }),
  ]);
});
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
