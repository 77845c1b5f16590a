import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { type Action, ActionSchema, CheckRequestSchema, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import type { AcquireLeaseRequest, AcquireLeaseResponse } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { type ControlPlaneClients, type DecisionPath, SidecarEngine } from "../../src/sidecar/sidecar-engine.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";

const NO_HASH = new Uint8Array(0);
let t: TestDatabase;
let store: WardenStore;
before(async () => {
  t = await openTestDatabase("pglite");
  store = createWardenStore({ db: t.db, now: Date.now });
});
after(async () => {
  await assertLedgerConsistent(t.db);
  await t.drop();
});

/** A sidecar (engine, cache, report queue) talking to the store in process; `exact` counts calls the control plane decided. */
function sidecar(holder: string) {
  const sync = {
    getSessionState: ({ sessionId }: { sessionId: string }) => store.sessionState(sessionId),
    acquireLease: async (req: AcquireLeaseRequest): Promise<Partial<AcquireLeaseResponse>> => ({ lease: await store.leases.acquire(req) }),
    reportLeases: async (req: Parameters<WardenStore["leases"]["report"]>[0]) => ({ rejected: await store.leases.report(req) }),
    claimIdempotencyKeys: async () => ({ results: [] }),
  };
  const policy = {
    check: (init: { sessionId: string; action: never }) =>
      store.decide({ method: "check", sessionId: init.sessionId, action: init.action, idempotencyKey: "", requestHash: NO_HASH }),
  };
  const reports = new ReportQueue({ holder, intervalMs: 10, send: (req) => sync.reportLeases(req) });
  let engine: SidecarEngine | undefined;
  const cache = new SessionCache({
    maxSessions: 1000,
    maxBytes: 64 * 1024 * 1024,
    fetch: (id) => store.sessionState(id),
    onChange: (b, a) => engine?.onSessionChange(b, a),
    onAgentChange: (id) => engine?.onAgentChange(id),
  });
  engine = new SidecarEngine({
    cache,
    controlPlane: { sync, policy } as unknown as ControlPlaneClients,
    reports,
    holder,
    spans: new CalendarSpanCache(),
    leaseTtlMs: 30_000,
    fresh: () => true,
  });
  const paths: DecisionPath[] = [];
  const check = (sessionId: string, action: Action) =>
    engine.check(create(CheckRequestSchema, { sessionId, action }), NO_HASH, (p) => paths.push(p)) as Promise<CheckResponse>;
  return { engine, reports, paths, check };
}

const toolCall = () => create(ActionSchema, { type: "tool_call", merchant: "search" });

test("tool calls on a session with a value limit are decided from a lease of no value, not each through the control plane", async () => {
  const s = await store.createSession(sessionRequest("tools-agent-1", { daily: { maxValueMicros: USD(100) } }), NO_HASH);
  const sc = sidecar("sidecar-tools-1");
  for (let i = 0; i < 10; i++) assert.equal((await sc.check(s.sessionId, toolCall())).decision!.outcome, Outcome.ALLOW);
  assert.deepEqual(sc.paths, Array(10).fill("lease"), `paths: ${sc.paths.join(",")}`);
  // A payment needs a lease with value: the sidecar asks for one.
  assert.equal((await sc.check(s.sessionId, payment(USD(1)))).decision!.outcome, Outcome.ALLOW);
  assert.equal(sc.paths.at(-1), "lease");
  sc.engine.stop();
  assert.ok(await sc.reports.drain(Date.now() + 5_000), "every record reached the store");
  const u = (await store.getSession(s.sessionId)).usage!;
  assert.deepEqual([u.actionsCommitted, u.valueCommittedMicros, u.valueLeasedMicros, u.actionsLeased], [11n, USD(1), 0n, 0n]);
});

test("with an action limit, the lease of no value reserves the tool calls' action slots and no more are allowed than the limit", async () => {
  const s = await store.createSession(sessionRequest("tools-agent-2", { daily: { maxValueMicros: USD(100), maxActions: 6n } }), NO_HASH);
  const sc = sidecar("sidecar-tools-2");
  let allowed = 0;
  for (let i = 0; i < 8; i++) if ((await sc.check(s.sessionId, toolCall())).decision!.outcome === Outcome.ALLOW) allowed++;
  sc.engine.stop();
  assert.ok(await sc.reports.drain(Date.now() + 5_000));
  assert.equal(allowed, 6);
  assert.ok(sc.paths.filter((p) => p === "lease").length >= 3, `paths: ${sc.paths.join(",")}`);
  const u = (await store.getSession(s.sessionId)).usage!;
  assert.deepEqual([u.actionsCommitted, u.actionsLeased], [6n, 0n]);
});
