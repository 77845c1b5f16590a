import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, type ReportLeasesRequest } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { newId } from "../../src/store/ids.js";
import { payment, USD } from "../helpers/fixtures.js";

const record = () =>
  create(LeaseRecordSchema, {
    actionId: newId("act", Date.now()),
    method: "check",
    action: payment(USD(1)),
    decision: create(DecisionSchema, { outcome: Outcome.ALLOW }),
    createTime: timestampFromMs(Date.now()),
  });

// The send is the network: it fails while the control plane is away.
test("a failed report stays queued, in order, ahead of what came meanwhile; nothing is dropped or sent twice", async () => {
  const sent: ReportLeasesRequest[] = [];
  let up = false;
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async (req) => {
      if (!up) throw new Error("unavailable");
      sent.push(req);
      return { rejected: [] };
    },
  });
  const first = [record(), record()];
  for (const r of first) q.record("s1", "lse_1", r);
  q.settle("s1", { $typeName: "warden.v1.LeaseSettlement", authorizationId: first[0]!.actionId, captureMicros: USD(1), time: timestampFromMs(Date.now()) });
  await q.flush();
  assert.equal(sent.length, 0);
  assert.equal(q.size, 3, "kept after the failure");
  const later = record();
  q.record("s1", "lse_1", later);
  q.release("s1", "lse_1");
  up = true;
  await q.flush();
  assert.equal(q.size, 0);
  assert.equal(sent.length, 1);
  const reports = sent[0]!.reports;
  const lease = reports.find((r) => r.leaseId === "lse_1")!;
  assert.deepEqual(
    lease.records.map((r) => r.actionId),
    [...first, later].map((r) => r.actionId),
    "first the failed batch, then what came meanwhile",
  );
  assert.equal(lease.release, true);
  // Settlements travel after the records of their session's leases.
  assert.equal(reports.at(-1)!.leaseId, "");
  assert.equal(reports.at(-1)!.settlements.length, 1);
  await q.flush();
  assert.equal(sent.length, 1, "nothing left to send twice");
});

test("drain keeps trying until everything is sent or the deadline passes", async () => {
  let failures = 2;
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async () => {
      if (failures-- > 0) throw new Error("unavailable");
      return { rejected: [] };
    },
  });
  q.record("s1", "lse_1", record());
  assert.equal(await q.drain(Date.now() + 5_000), true);
  assert.equal(q.size, 0);
  const stuck = new ReportQueue({ holder: "h", intervalMs: 1_000_000, send: () => Promise.reject(new Error("down")) });
  stuck.record("s1", "lse_1", record());
  assert.equal(await stuck.drain(Date.now() + 300), false);
  assert.equal(stuck.size, 1, "still held, never dropped");
});
