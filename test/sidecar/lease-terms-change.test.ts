import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Outcome, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { UpdateAgentPolicyRequestSchema } from "../../src/gen/warden/v1/agent_service_pb.js";
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
 * A sidecar (engine, cache, report queue) talking to the store in process.
 * Its AcquireLease answers are handed over only when `deliver` is called:
 * the grant is made (and committed) at once, the answer is on the wire.
 */
function sidecar(holder: string) {
  let held: (() => void)[] = [];
  let blocking = true;
  const sc = inProcessSidecar(store, holder, {
    beforeGrantAnswer: async () => {
      if (blocking) await new Promise<void>((r) => held.push(r));
    },
  });
  return {
    ...sc,
    deliver() {
      blocking = false;
      for (const r of held) r();
      held = [];
    },
    pendingGrants: () => held.length,
    check: (sessionId: string, amount: bigint) => sc.check(sessionId, payment(amount)),
  };
}

test("an agent limit set while a lease grant is on its way binds the sessions from the next decision", async () => {
  const agentId = "review-race-agent";
  // No limits anywhere yet: the sessions' leases are unlimited.
  const s1 = await store.createSession(sessionRequest(agentId, {}), NO_HASH);
  const s2 = await store.createSession(sessionRequest(agentId, {}), NO_HASH);
  const a = sidecar("sidecar-a");
  const b = sidecar("sidecar-b");
  // Each sidecar's first decision asks for a lease; the store grants it.
  const firstA = a.check(s1.sessionId, USD(1));
  const firstB = b.check(s2.sessionId, USD(1));
  while (a.pendingGrants() === 0 || b.pendingGrants() === 0) await new Promise((r) => setTimeout(r, 5));
  // A person sets a limit on the agent: 3 USD a day across its sessions.
  await store.updateAgentPolicy(create(UpdateAgentPolicyRequestSchema, { agentId, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(3) } } }));
  // The watch stream brings the change to both sidecars before the grants' answers.
  for (const sc of [a, b]) for (const id of [s1.sessionId, s2.sessionId]) sc.cache.applyState(await store.sessionState(id));
  a.deliver();
  b.deliver();
  await Promise.all([firstA, firstB]);
  // From now on the agent may spend what is left of its 3 USD, no more.
  let allowed = 0;
  for (let i = 0; i < 5; i++) {
    for (const [sc, s] of [[a, s1], [b, s2]] as const) {
      const r = await sc.check(s.sessionId, USD(1));
      if (r.decision!.outcome === Outcome.ALLOW) allowed++;
    }
  }
  for (const sc of [a, b]) {
    sc.engine.stop();
    await sc.reports.drain(Date.now() + 5_000);
  }
  const agent = await store.getAgent(agentId);
  const day = agent.budgets.find((w) => w.window === Window.DAY)!;
  assert.ok(day.valueUsedMicros <= USD(3), `the agent's day holds ${day.valueUsedMicros} micros against a 3 USD limit (${allowed} more allowed after the change)`);
});
