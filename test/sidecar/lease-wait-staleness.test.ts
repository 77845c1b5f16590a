import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
import type { AcquireLeaseRequest } from "../../src/gen/warden/v1/sync_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";

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
  const sc = inProcessSidecar(store, "sc", {
    fresh: () => fresh,
    // A slow control plane: the grant's answer takes a while.
    acquireLease: async (req: AcquireLeaseRequest) => {
      await gate;
      return { lease: await store.leases.acquire({ ...req, holder: "sc" } as AcquireLeaseRequest) };
    },
  });
  const decision = sc.check(s.sessionId, payment(USD(5), "evil-corp"));
  await new Promise((r) => setTimeout(r, 50));
  // Meanwhile the watch stream is down: a person blocks the merchant for the
  // agent, which this sidecar never hears of, and the staleness bound passes.
  await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", blockedMerchants: ["evil-corp"] } }));
  fresh = false;
  // A decision arriving now is refused...
  const now = await sc.check(s.sessionId, payment(USD(5), "evil-corp"));
  assert.deepEqual(now.decision!.reasons, [Reason.CONTROL_PLANE_UNAVAILABLE]);
  // ...and so is the one that was waiting on its grant.
  openGate();
  const r = await decision;
  sc.engine.stop();
  await sc.reports.drain(Date.now() + 5000);
  assert.notEqual(r.decision!.outcome, Outcome.ALLOW, `allowed a payment to a merchant the agent's policy now blocks, decided past the staleness bound`);
  assert.deepEqual(r.decision!.reasons, [Reason.CONTROL_PLANE_UNAVAILABLE]);
});
