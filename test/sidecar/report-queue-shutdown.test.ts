import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DecisionSchema, Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { LeaseRecordSchema, type ReportLeasesRequest, SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { MAX_SEND_ENTRIES, ReportQueue } from "../../src/sidecar/report-queue.js";
import { newId } from "../../src/store/ids.js";
import { createGrpcServer, type GrpcServer, mountService } from "../../src/transport/grpc-server.js";
import { payment, USD } from "../helpers/fixtures.js";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { CheckRequestSchema, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import type { AcquireLeaseRequest, AcquireLeaseResponse } from "../../src/gen/warden/v1/sync_service_pb.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { type ControlPlaneClients, SidecarEngine } from "../../src/sidecar/sidecar-engine.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase } from "../helpers/databases.js";
import { sessionRequest } from "../helpers/fixtures.js";

const record = (metadata?: Record<string, string>) =>
  create(LeaseRecordSchema, {
    actionId: newId("act", Date.now()),
    method: "check",
    action: metadata === undefined ? payment(USD(1)) : { ...payment(USD(1)), metadata },
    decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
    createTime: timestampFromMs(Date.now()),
    processingNanos: 1_000n,
  });

// drain() returns as soon as nothing is *queued*, ignoring a send in flight.
// start-sidecar's close() calls drain() to get every record to the store
// before the process ends; if the timer's send is in flight then (and
// engine.stop() queued nothing: no lease left, no hold), drain says "drained"
// at once. If that send then fails, its entries are put back into a queue
// that was stopped: nothing sends them again, and close() does not log the
// loss ("control plane unreachable at shutdown ...").
test("drain waits for a send in flight: what it carried reaches the store (or drain says it did not)", async () => {
  const stored: string[] = [];
  let calls = 0;
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    send: async (req: ReportLeasesRequest) => {
      calls++;
      // The first send fails after a moment (the control plane restarting);
      // every later one gets through.
      if (calls === 1) {
        await new Promise((r) => setTimeout(r, 100));
        throw new ConnectError("connection reset", Code.Unavailable);
      }
      for (const r of req.reports) for (const rec of r.records) stored.push(rec.actionId);
      return { rejected: [] };
    },
  });
  const r = record();
  q.record("ses_1", "", r);
  // The timer's flush: its send is in flight when the sidecar shuts down.
  const timerFlush = q.flush();
  // close(): engine.stop() (nothing to release), reports.stop(), drain.
  q.stop();
  const drained = await q.drain(Date.now() + 3_000);
  await timerFlush;
  assert.deepEqual(
    { drained, stored, backlog: q.backlog().entries },
    { drained: true, stored: [r.actionId], backlog: 0 },
    "drain reported success while the record it should have sent was still in flight (and then put back, for good)",
  );
});

// backlog().oldestAgeMs after one part of a big session was acknowledged:
// the entry left queued keeps the `since` of its first item, which the
// store already has.
test("the backlog's oldest age is that of what is still unacknowledged, after part of a big session went", async () => {
  let nowMs = 1_000_000;
  let calls = 0;
  const q = new ReportQueue({
    holder: "h",
    intervalMs: 1_000_000,
    now: () => nowMs,
    send: async () => {
      // The first part gets through; then the control plane goes away.
      if (++calls > 1) throw new ConnectError("unavailable", Code.Unavailable);
      return { rejected: [] };
    },
  });
  for (let i = 0; i < MAX_SEND_ENTRIES; i++) q.record("busy", "lse_1", record());
  nowMs += 60_000;
  q.record("busy", "lse_1", record()); // one decision a minute later
  await q.flush();
  assert.equal(calls, 2);
  assert.deepEqual(q.backlog(), { entries: 1, oldestAgeMs: 0 }, "only the last record is unacknowledged, and it was queued just now");
});

// A session the store refused once is, from then on, sent whole, "apart":
// takeChunk puts every entry of a refused session in the chunk, with no
// MAX_SEND_ENTRIES / MAX_SEND_BYTES cut. A refused session above 4 MiB (a
// backlog, or records with metadata: exactly what 6add555 cuts into parts)
// then goes as one message the transport refuses (RESOURCE_EXHAUSTED) on
// every retry, even once the store would take it: stuck for good.
let server: GrpcServer;
let refusing = true;
const received = new Set<string>();
before(async () => {
  server = await createGrpcServer("127.0.0.1:0", [
    mountService(SyncService, {
      async reportLeases(req) {
        // A refusal that passes (an ingress answering 403 during a rollout,
        // mapped to PERMISSION_DENIED; a credential being rotated): refused
        // for a while, taken afterwards.
        if (refusing) {
          throw new ConnectError('session "big" belongs to another agent', Code.PermissionDenied);
        }
        for (const r of req.reports) for (const rec of r.records) received.add(rec.actionId);
        return { rejected: [] };
      },
    }),
  ]);
});
after(async () => {
  await server.close(0);
});

test("a session refused once, above the transport's limit, is still sent in parts once the store takes it again", async () => {
  let nowMs = 1_000_000;
  const sync = createClient(SyncService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.port}`, defaultTimeoutMs: 5_000 }));
  const errors: string[] = [];
  const q = new ReportQueue({ holder: "h", intervalMs: 50, now: () => nowMs, send: (req) => sync.reportLeases(req), onError: (e) => errors.push(ConnectError.from(e).code === Code.ResourceExhausted ? "RESOURCE_EXHAUSTED" : String(e)) });
  // 400 decisions with 16 KB of metadata each: ~6.5 MB.
  const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`arg${i}`, "x".repeat(1000)]));
  const records = Array.from({ length: 400 }, () => record(metadata));
  for (const r of records) q.record("big", "lse_1", r);
  await q.flush(); // its first part is refused (together, then alone): the session is set apart
  assert.equal(q.size, 400);
  // The store takes the session's reports again; its retries come each second.
  refusing = false;
  for (let i = 0; i < 5; i++) {
    nowMs += 1_001;
    await q.flush();
  }
  assert.deepEqual(
    { received: received.size, left: q.size, lastError: errors.at(-1) },
    { received: 400, left: 0, lastError: errors.at(-1) },
    `the refused session went whole each time (errors: ${errors.slice(1).join(", ")})`,
  );
});

// A renewal in flight when the sidecar stops (SIGTERM: close() ->
// engine.stop()) is granted after stop() released the old lease: the new
// lease becomes `current`, nothing releases it (housekeeping stopped, stop()
// already ran), and the store reconciles it at expiry + grace, writing its
// whole reserve off as spent.

test("a lease renewal on its way when the sidecar stops is given back too, not left to be written off as spent", async () => {
  const t = await openTestDatabase("postgres");
  try {
    const store = createWardenStore({ db: t.db, now: Date.now });
    const NO_HASH = new Uint8Array(0);
    const held: (() => void)[] = [];
    let blocking = false;
    const sync = {
      getSessionState: ({ sessionId }: { sessionId: string }) => store.sessionState(sessionId),
      acquireLease: async (req: AcquireLeaseRequest): Promise<Partial<AcquireLeaseResponse>> => {
        const lease = await store.leases.acquire({ ...req, holder: "sc-1" } as AcquireLeaseRequest);
        // Granted and committed; the answer is on the wire.
        if (blocking) await new Promise<void>((r) => held.push(r));
        return { lease };
      },
      claimIdempotencyKeys: async () => ({ results: [] }),
    };
    const reports = new ReportQueue({ holder: "sc-1", intervalMs: 10, send: async (req) => ({ rejected: await store.leases.report(req) }) });
    let engine: SidecarEngine | undefined;
    const cache = new SessionCache({
      maxSessions: 1000,
      maxBytes: 1 << 24,
      fetch: (id) => store.sessionState(id),
      onChange: (b, a) => engine?.onSessionChange(b, a),
      onAgentChange: (id) => engine?.onAgentChange(id),
    });
    engine = new SidecarEngine({
      cache,
      controlPlane: { sync, policy: {} } as unknown as ControlPlaneClients,
      reports,
      holder: "sc-1",
      spans: new CalendarSpanCache(),
      leaseTtlMs: 30_000,
      fresh: () => true,
    });
    const s = await store.createSession(sessionRequest("stop-renew", { daily: { maxValueMicros: USD(1000) } }), NO_HASH);
    const check = () => engine!.check(create(CheckRequestSchema, { sessionId: s.sessionId, action: payment(USD(1)) }), NO_HASH) as Promise<CheckResponse>;
    // The first lease: 32 USD (32 of this action).
    assert.equal((await check()).decision?.outcome, Outcome.ALLOW);
    // Spend until it runs low: the renewal is asked for in the background.
    blocking = true;
    for (let i = 0; i < 30 && held.length === 0; i++) {
      assert.equal((await check()).decision?.outcome, Outcome.ALLOW);
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal(held.length, 1, "a renewal is on its way");
    // SIGTERM: close() stops the engine (leases go back) and drains the reports.
    engine.stop();
    for (const r of held) r();
    await new Promise((r) => setTimeout(r, 50));
    await reports.drain(Date.now() + 5_000);
    const { rows } = await t.db.query<{ lease_id: string; held_value: string }>("SELECT lease_id, held_value FROM leases WHERE session_id = $1 AND status = 1", [s.sessionId]);
    assert.deepEqual(
      { activeLeases: rows.length, leaseCount: engine.leaseCount },
      { activeLeases: 0, leaseCount: 0 },
      `after stop, a lease holding ${rows.map((r) => BigInt(r.held_value) / 1_000_000n).join(", ")} USD is still out; it will be written off as spent`,
    );
  } finally {
    await t.drop();
  }
});
