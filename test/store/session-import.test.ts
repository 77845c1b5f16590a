import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, type AuthorizeResponse, ListActionsRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AcquireLeaseRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`ImportSession of what the source store was holding, on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let store: WardenStore;
    let n = 0;
    const agent = () => `agent-import-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      store = createWardenStore({ db: t.db, now: clock.now });
    });
    after(async () => {
      await t.drop();
    });

    const authorize = (s: WardenStore, sessionId: string, amount: bigint) =>
      s.decide({ method: "authorize", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<AuthorizeResponse>;

    test("an imported session's pending approval comes back as history holding nothing, which nothing could release", async () => {
      const s = await store.createSession(
        sessionRequest(agent(), { requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(300) } }),
        NO_HASH,
      );
      const r = await authorize(store, s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      const snap = await store.exportSession(s.sessionId);
      const t2 = await openTestDatabase(driver);
      try {
        const other = createWardenStore({ db: t2.db, now: clock.now });
        assert.equal((await store.getSession(s.sessionId)).usage!.valueHeldMicros, USD(150), "the source holds it for its approval");
        const imported = await other.importSession(snap);
        assert.equal(imported.usage!.valueHeldMicros, 0n, "no approval was carried over to hold it for");
        const history = (await other.listActions(create(ListActionsRequestSchema, { sessionId: s.sessionId }))).actions;
        assert.deepEqual(
          history.map((a) => [ActionStatus[a.status], a.heldAmount?.amountMicros]),
          [["NEEDS_APPROVAL", 0n]],
          "the request is in the imported history, holding nothing",
        );
        await other.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
        assert.equal((await other.getSession(s.sessionId)).usage!.valueHeldMicros, 0n);
        await assertLedgerConsistent(t2.db);
      } finally {
        await t2.drop();
      }
    });

    test("an imported session's pending approval still expires and gives its amount back", async () => {
      const s = await store.createSession(
        sessionRequest(agent(), { requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(300) }, approvalTtl: durationFromMs(60_000) }),
        NO_HASH,
      );
      const r = await authorize(store, s.sessionId, USD(150));
      assert.equal(r.decision!.outcome, Outcome.NEEDS_APPROVAL);
      const snap = await store.exportSession(s.sessionId);
      const t2 = await openTestDatabase(driver);
      try {
        const other = createWardenStore({ db: t2.db, now: clock.now });
        await other.importSession(snap);
        clock.advance(61_000);
        await other.sweep();
        // In the source store the same sweep expires the approval and releases 150.
        await store.sweep();
        assert.equal((await store.getSession(s.sessionId)).usage!.valueHeldMicros, 0n);
        assert.equal((await other.getSession(s.sessionId)).usage!.valueHeldMicros, 0n, "the imported copy released it too");
      } finally {
        await t2.drop();
      }
    });

    test("an exported session's lease reservation does not come back as a hold nothing can release", async () => {
      const s = await store.createSession(sessionRequest(agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const lease = await store.leases.acquire(
        create(AcquireLeaseRequestSchema, {
          sessionId: s.sessionId,
          holder: "sidecar-1",
          desiredValueMicros: USD(40),
          desiredActions: 10n,
          minValueMicros: 1n,
          ttl: durationFromMs(30_000),
        }),
      );
      assert.ok(lease !== undefined);
      const snap = await store.exportSession(s.sessionId);
      const t2 = await openTestDatabase(driver);
      try {
        const other = createWardenStore({ db: t2.db, now: clock.now });
        const imported = await other.importSession(snap);
        // Nothing in the new store reserved this: no lease was carried over.
        assert.equal(imported.usage!.valueLeasedMicros, 0n);
        await other.terminate(s.sessionId, SessionStatus.COMPLETED, "done");
        assert.equal((await other.getSession(s.sessionId)).usage!.valueHeldMicros, 0n, "an ended imported session holds nothing");
        await assertLedgerConsistent(t2.db);
      } finally {
        await t2.drop();
      }
    });
  });
}
