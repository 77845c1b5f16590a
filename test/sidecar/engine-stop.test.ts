import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";

const NO_HASH = new Uint8Array(0);
let t: TestDatabase;
let store: WardenStore;
// The store's clock: moved forward to reach a lease's reconciliation.
let skewMs = 0;
before(async () => {
  t = await openTestDatabase("pglite");
  store = createWardenStore({ db: t.db, now: () => Date.now() + skewMs });
});
after(async () => {
  await t.drop();
});

/**
 * start-sidecar.ts close(): servers close (forced after the grace), then
 * engine.stop() gives every lease back, engine.settled() waits for grants on
 * their way, and the report queue drains. A decision still in flight at
 * stop (waiting on its session's fetch, or its key's claim) went on, before,
 * to acquire a brand-new lease: nothing released it, so the store wrote its
 * unspent rest off as spent when it expired. After stop it is decided
 * through the control plane.
 */
test("a lease acquired by a decision that was in flight when the engine stopped is given back", async () => {
  const s = await store.createSession(sessionRequest("shutdown-agent", { daily: { maxValueMicros: USD(100) } }), NO_HASH);
  // The session's fetch (a cache miss) is slow: it is on the wire at stop.
  let releaseFetch!: () => void;
  const fetchGate = new Promise<void>((r) => (releaseFetch = r));
  const slow = Object.create(store) as WardenStore;
  slow.sessionState = async (id: string) => {
    await fetchGate;
    return store.sessionState(id);
  };
  const sc = inProcessSidecar(slow, "sc-shutdown");
  sc.engine.start();
  sc.reports.start();
  const decision = sc.check(s.sessionId, payment(USD(1)));
  await new Promise((r) => setTimeout(r, 20));
  // Clean shutdown, as close() does it.
  sc.engine.stop();
  sc.reports.stop();
  await sc.engine.settled();
  releaseFetch();
  const r = await decision;
  await sc.engine.settled();
  assert.ok(await sc.reports.drain(Date.now() + 5_000));
  const got = await store.getSession(s.sessionId);
  assert.equal(r.decision!.outcome, Outcome.ALLOW);
  // Past the lease's expiry and grace the store reconciles it: the rest the
  // stopped sidecar never gave back is written off as spent.
  skewMs = 120_000;
  await store.leases.reconcile();
  const later = await store.getSession(s.sessionId);
  assert.deepEqual([later.usage!.valueCommittedMicros, later.usage!.valueWrittenOffMicros], [USD(1), 0n], "what was allowed is committed, nothing written off");
  assert.equal(
    got.usage!.valueLeasedMicros,
    0n,
    `after a clean shutdown the store still holds ${got.usage!.valueLeasedMicros} micros leased to the stopped sidecar (paths: ${sc.paths}); at expiry its unspent rest is written off as spent`,
  );
});
