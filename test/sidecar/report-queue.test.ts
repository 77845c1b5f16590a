import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, LeaseSettlementSchema, type ReportLeasesRequest } from "../../src/gen/warden/v1/sync_service_pb.js";
import { MAX_SEND_ENTRIES, ReportQueue } from "../../src/sidecar/report-queue.js";
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
/** A queue whose control plane is away until `link.up` is set; what got through is in `sent`. */
function offlineQueue() {
  const sent: ReportLeasesRequest[] = [];
  const link = { up: false };
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async (req) => {
      if (!link.up) throw new ConnectError("unavailable", Code.Unavailable);
      sent.push(req);
      return { rejected: [] };
    },
  });
  return { q, sent, link };
}

test("a failed report stays queued, in order, ahead of what came meanwhile; nothing is dropped or sent twice", async () => {
  const { q, sent, link } = offlineQueue();
  const first = [record(), record()];
  for (const r of first) q.record("s1", "lse_1", r);
  q.settle("s1", create(LeaseSettlementSchema, { authorizationId: first[0]!.actionId, captureMicros: USD(1), time: timestampFromMs(Date.now()) }));
  q.releaseClaim("s1", "key-1", "act_1");
  await q.flush();
  assert.equal(sent.length, 0);
  assert.equal(q.size, 4, "kept after the failure");
  const later = record();
  q.record("s1", "lse_1", later);
  q.release("s1", "lse_1");
  q.releaseClaim("s1", "key-2", "act_2");
  link.up = true;
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
  // Settlements and released claims travel after the records of their
  // session's leases (a claim is filled by a record, never released first).
  assert.equal(reports.at(-1)!.leaseId, "");
  assert.equal(reports.at(-1)!.settlements.length, 1);
  assert.deepEqual(
    reports.at(-1)!.releasedClaims.map((c) => [c.idempotencyKey, c.actionId]),
    [
      ["key-1", "act_1"],
      ["key-2", "act_2"],
    ],
  );
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("once started, what is queued goes out within the interval unasked; failed sends are retried with a backoff", async () => {
  const sends: number[] = [];
  let up = true;
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 20,
    send: async () => {
      sends.push(Date.now());
      if (!up) throw new Error("unavailable");
      return { rejected: [] };
    },
  });
  q.start();
  try {
    q.record("s1", "lse_1", record());
    for (let i = 0; i < 100 && q.size > 0; i++) await sleep(10);
    assert.equal(q.size, 0, "sent by the queue's own timer");
    assert.equal(sends.length, 1);
    await sleep(200);
    assert.equal(sends.length, 1, "nothing queued, nothing sent");

    up = false;
    q.record("s1", "lse_1", record());
    await sleep(1000);
    // At a steady 20 ms that would be ~50 tries; doubling from 20 ms, 5.
    const tries = sends.length - 1;
    assert.ok(tries >= 2 && tries <= 8, `${tries} tries in 1 s while the control plane was away`);
    assert.equal(q.size, 1, "still queued");
    up = true;
    for (let i = 0; i < 300 && q.size > 0; i++) await sleep(10);
    assert.equal(q.size, 0, "sent once the control plane is back");
  } finally {
    q.stop();
  }
});

test("a session whose reports the store refuses outright is set apart: the others still reach it, and it stays queued", async () => {
  const stored: string[] = [];
  let accept = false;
  const refusedSessions: string[] = [];
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async (req) => {
      if (!accept && req.reports.some((r) => r.sessionId === "foreign")) {
        throw new ConnectError('session "foreign" belongs to another agent', Code.PermissionDenied);
      }
      for (const r of req.reports) for (const rec of r.records) stored.push(`${r.sessionId}:${rec.actionId}`);
      return { rejected: [] };
    },
    onRefused: (sessionId) => refusedSessions.push(sessionId),
  });
  const [a, b, c, d] = [record(), record(), record(), record()];
  q.record("s1", "lse_1", a);
  q.record("foreign", "", b);
  q.record("s2", "lse_2", c);
  await q.flush();
  assert.deepEqual(stored.sort(), [`s1:${a.actionId}`, `s2:${c.actionId}`].sort(), "the others were sent again without it");
  assert.deepEqual(refusedSessions, ["foreign"]);
  assert.equal(q.size, 1, "kept, not dropped");
  // Later records go on without it, and it is not retried before its time.
  q.record("s1", "lse_1", d);
  await q.flush();
  assert.ok(stored.includes(`s1:${d.actionId}`));
  assert.equal(q.size, 1);
  // Once the store takes it, it goes (after the retry delay of a second).
  accept = true;
  await sleep(1100);
  await q.flush();
  assert.equal(q.size, 0);
  assert.ok(stored.includes(`foreign:${b.actionId}`));
  assert.deepEqual(refusedSessions, ["foreign"], "told once");
});

test("the backlog counts what the store has not acknowledged, queued or in flight, and how long the oldest has waited", async () => {
  let nowMs = 1_000_000;
  let release: ((v: { rejected: string[] }) => void) | undefined;
  let fail = true;
  const results: string[] = [];
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    now: () => nowMs,
    send: () => (fail ? Promise.reject(new Error("unavailable")) : new Promise((r) => (release = r))),
    onSend: (result) => results.push(result),
  });
  assert.deepEqual(q.backlog(), { entries: 0, oldestAgeMs: 0 });
  q.record("s1", "lse_1", record());
  nowMs += 300;
  q.record("s2", "lse_2", record());
  q.release("s2", "lse_2");
  assert.deepEqual(q.backlog(), { entries: 3, oldestAgeMs: 300 });
  // A failed send puts everything back, with its age.
  await q.flush();
  nowMs += 200;
  assert.deepEqual(q.backlog(), { entries: 3, oldestAgeMs: 500 });
  // Sent but not acknowledged yet: still backlog, counted once; what
  // comes meanwhile adds to it.
  fail = false;
  const sending = q.flush();
  q.record("s1", "lse_1", record());
  nowMs += 100;
  assert.deepEqual(q.backlog(), { entries: 4, oldestAgeMs: 600 });
  release!({ rejected: [] });
  await sending;
  assert.deepEqual(q.backlog(), { entries: 1, oldestAgeMs: 100 }, "only what came during the send");
  const last = q.flush();
  release!({ rejected: [] });
  await last;
  assert.deepEqual(q.backlog(), { entries: 0, oldestAgeMs: 0 });
  assert.deepEqual(results, ["failed", "sent", "sent"]);
});

test("a send the store refuses is told as refused, apart from failures", async () => {
  const results: string[] = [];
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async () => {
      throw new ConnectError("no", Code.PermissionDenied);
    },
    onSend: (result) => results.push(result),
  });
  q.record("s1", "lse_1", record());
  q.record("s2", "lse_2", record());
  await q.flush();
  // Together, then each session alone.
  assert.deepEqual(results, ["refused", "refused", "refused"]);
  assert.equal(q.backlog().entries, 2, "kept");
});

test("a backlog goes in sends of at most MAX_SEND_ENTRIES, whole sessions in order, a session above it in parts with its settlements last", async () => {
  const { q, sent, link } = offlineQueue();
  // Offline: one busy session (2.5 sends' worth), then many small ones.
  const big = Array.from({ length: MAX_SEND_ENTRIES * 2 + 500 }, record);
  for (const r of big) q.record("busy", "lse_1", r);
  q.settle("busy", create(LeaseSettlementSchema, { authorizationId: big[0]!.actionId, time: timestampFromMs(Date.now()) }));
  q.release("busy", "lse_1");
  for (let i = 0; i < 3000; i++) q.record(`small-${i}`, `lse_s${i}`, record());
  await q.flush();
  assert.equal(sent.length, 0);
  link.up = true;
  assert.equal(await q.drain(Date.now() + 10_000), true, "everything is sent");
  const entries = (r: ReportLeasesRequest) => r.reports.reduce((n, p) => n + p.records.length + p.settlements.length + (p.release ? 1 : 0), 0);
  for (const r of sent) assert.ok(entries(r) <= MAX_SEND_ENTRIES + 2, `a send of ${entries(r)} entries`);
  const busy = sent.flatMap((r) => r.reports.filter((p) => p.sessionId === "busy"));
  assert.deepEqual(
    busy.flatMap((p) => p.records.map((x) => x.actionId)),
    big.map((x) => x.actionId),
    "the busy session's records, each once, in order",
  );
  // Two parts of 2,000 records, then the rest whole: 500 records with the
  // release, and the settlement after them.
  assert.deepEqual(
    busy.map((p) => [p.records.length, p.settlements.length, p.release]),
    [
      [MAX_SEND_ENTRIES, 0, false],
      [MAX_SEND_ENTRIES, 0, false],
      [500, 0, true],
      [0, 1, false],
    ],
  );
  assert.equal(sent.flatMap((r) => r.reports).filter((p) => p.sessionId.startsWith("small-")).length, 3000);
  assert.equal(q.size, 0);
});

test("a refused session big enough to fill a send never holds up the sessions queued behind it", async () => {
  const stored: string[] = [];
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    now: () => 0,
    send: async (req) => {
      if (req.reports.some((r) => r.sessionId === "foreign")) throw new ConnectError('session "foreign" belongs to another agent', Code.PermissionDenied);
      for (const r of req.reports) for (const rec of r.records) stored.push(`${r.sessionId}:${rec.actionId}`);
      return { rejected: [] };
    },
  });
  // A busy session backed up while offline, which the store then refuses for good.
  for (let i = 0; i < MAX_SEND_ENTRIES - 5; i++) q.record("foreign", "lse_f", record());
  const mine = Array.from({ length: 6 }, record);
  for (const r of mine) q.record("s1", "lse_1", r);
  await q.flush(); // The busy session fills the send, and is refused.
  await q.flush(); // Its retry is not due: the rest goes.
  assert.deepEqual(stored, mine.map((r) => `s1:${r.actionId}`));
  assert.equal(q.size, MAX_SEND_ENTRIES - 5, "the refused session's records stay queued, apart");
});
