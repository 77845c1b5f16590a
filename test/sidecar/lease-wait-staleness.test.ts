import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import { CheckRequestSchema, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import type { AcquireLeaseRequest, ReportLeasesRequest } from "../../src/gen/warden/v1/sync_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { type ControlPlaneClients, SidecarEngine } from "../../src/sidecar/sidecar-engine.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);
let t: TestDatabase;
let store: WardenStore;
before(async () => {
  t = await openTestDatabase("pglite");
  store = createWardenStore({ db: t.db, now: Date.now });
});
after(async () => {
  await t.drop();
});

/**
 * design.md §6: past the staleness bound the sidecar denies spending with
 * CONTROL_PLANE_UNAVAILABLE. A decision may wait on a lease grant for
 * seconds (up to three AcquireLease calls of up to 5 s each); before, one
 * that waited while the bound passed was decided from the cache as it was
 * before the wait and spent the lease.
 */
test("a decision that waited on a lease grant while the staleness bound passed does not spend from the cached view", async () => {
  const agentId = "stale-during-grant";
  await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD" } }));
  const s = await store.createSession(sessionRequest(agentId, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
  let fresh = true;
  let openGate!: () => void;
  const gate = new Promise<void>((r) => (openGate = r));
  const sync = {
    getSessionState: ({ sessionId }: { sessionId: string }) => store.sessionState(sessionId),
    acquireLease: async (req: AcquireLeaseRequest) => {
      await gate; // a slow control plane: the grant's answer takes a while
      return { lease: await store.leases.acquire({ ...req, holder: "sc" } as AcquireLeaseRequest) };
    },
    reportLeases: async (req: ReportLeasesRequest) => ({ rejected: await store.leases.report(req) }),
    claimIdempotencyKeys: async () => ({ results: [] }),
  };
  const reports = new ReportQueue({ holder: "sc", intervalMs: 10, send: (req) => sync.reportLeases(req) });
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
    holder: "sc",
    spans: new CalendarSpanCache(),
    leaseTtlMs: 30_000,
    fresh: () => fresh,
  });
  const decision = engine.check(create(CheckRequestSchema, { sessionId: s.sessionId, action: payment(USD(5), "evil-corp") }), NO_HASH) as Promise<CheckResponse>;
  await new Promise((r) => setTimeout(r, 50));
  // Meanwhile the watch stream is down: a person blocks the merchant for the
  // agent, which this sidecar never hears of, and the staleness bound passes.
  await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", blockedMerchants: ["evil-corp"] } }));
  fresh = false;
  // A decision arriving now is refused, as it should be...
  const now = await engine.check(create(CheckRequestSchema, { sessionId: s.sessionId, action: payment(USD(5), "evil-corp") }), NO_HASH);
  assert.deepEqual(now.decision!.reasons, [Reason.CONTROL_PLANE_UNAVAILABLE]);
  // ...but the one that was waiting on its grant is answered from the stale cache.
  openGate();
  const r = await decision;
  engine.stop();
  await reports.drain(Date.now() + 5000);
  assert.notEqual(
    r.decision!.outcome,
    Outcome.ALLOW,
    `allowed a payment to a merchant the agent's policy now blocks, decided past the staleness bound (reasons ${r.decision!.reasons})`,
  );
});
