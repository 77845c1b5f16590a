// What the store takes from a sidecar's lease reports (design.md §4): a
// record never spends past its lease, a malformed one is refused whole, a
// lease written off while its sidecar was only cut off comes back on its
// word, and actions without an amount are leased too.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { DecisionSchema, Outcome, Reason, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionSchema, ActionStatus } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import {
  AcquireLeaseRequestSchema,
  type Lease,
  type LeaseRecord,
  LeaseRecordSchema,
  LeaseReportSchema,
  ReportLeasesRequestSchema,
} from "../../src/gen/warden/v1/sync_service_pb.js";
import { newId } from "../../src/store/ids.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
/** The store's default reconcile grace (LeaseLedger), which storeSuite's store uses. */
const RECONCILE_GRACE_MS = 10_000;

/** Asserts an INVALID_ARGUMENT whose message starts with the field path `field`. */
const invalidArgument = (field: RegExp) => (e: unknown) => {
  const err = ConnectError.from(e);
  assert.equal(Code[err.code], Code[Code.InvalidArgument], err.rawMessage);
  assert.match(err.rawMessage, field);
  return true;
};

for (const driver of DRIVERS) {
  describe(`lease reports on ${driver}`, () => {
    const suite = storeSuite(driver, "lrep");
    const acquire = (sessionId: string, desiredValue: bigint, init: { desiredActions?: bigint; minValue?: bigint; ttlMs?: number } = {}) =>
      suite.store.leases.acquire(
        create(AcquireLeaseRequestSchema, {
          sessionId,
          holder: "sidecar-1",
          desiredValueMicros: desiredValue,
          desiredActions: init.desiredActions ?? 100n,
          minValueMicros: init.minValue ?? 1n,
          ttl: durationFromMs(init.ttlMs ?? 30_000),
        }),
      );
    const record = (method: "check" | "authorize", amount: bigint | undefined, extra: Partial<Omit<LeaseRecord, "$typeName">> = {}) =>
      create(LeaseRecordSchema, {
        actionId: newId("act", suite.clock.ms),
        method,
        action: amount === undefined ? create(ActionSchema, { type: "tool_call", merchant: "search" }) : payment(amount),
        decision: create(DecisionSchema, { outcome: Outcome.ALLOW, message: "allowed" }),
        createTime: timestampFromMs(suite.clock.ms),
        holdExpireTime: method === "authorize" ? timestampFromMs(suite.clock.ms + 60_000) : undefined,
        processingNanos: 1000n,
        ...extra,
      });
    const rep = (sessionId: string, lease: Lease | undefined, init: { records?: LeaseRecord[]; release?: boolean }) =>
      create(LeaseReportSchema, { sessionId, leaseId: lease?.leaseId ?? "", ...init });
    const report = (...reports: ReturnType<typeof rep>[]) => suite.store.leases.report(create(ReportLeasesRequestSchema, { holder: "sidecar-1", reports }));
    const usage = async (sessionId: string) => (await suite.store.getSession(sessionId)).usage!;
    const day = async (sessionId: string) => (await usage(sessionId)).windows.find((w) => w.window === Window.DAY)!;
    const leaseStatus = async (l: Lease) =>
      (await suite.t.db.query<{ status: number }>("SELECT status FROM leases WHERE lease_id = $1", [l.leaseId])).rows[0]!.status;
    /** Lets a lease pass its expiry and the grace, and has the sweeper write it off. */
    const writeOff = async (ttlMs: number) => {
      suite.clock.advance(ttlMs + RECONCILE_GRACE_MS);
      return (await suite.store.sweep()).leases;
    };

    // ---- a record never spends past its lease ------------------------------

    test("a record above what its lease has left is refused, naming it, and nothing of the report is written", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const a = (await acquire(s.sessionId, USD(80)))!;
      const b = (await acquire(s.sessionId, USD(80)))!;
      assert.deepEqual([a.valueMicros, b.valueMicros], [USD(50), USD(25)]);
      const fits = record("check", USD(1));
      await assert.rejects(
        report(rep(s.sessionId, b, { records: [record("check", USD(1))] }), rep(s.sessionId, a, { records: [fits, record("check", USD(100))], release: true })),
        invalidArgument(/^reports\[1\]\.records\[1\]\.action\.amount: 100\.00 USD is more than lease "lse_\w+" has left \(49\.00 USD\)/),
      );
      const u = await usage(s.sessionId);
      assert.equal((await day(s.sessionId)).valueUsedMicros, USD(75), "both leases still reserved, nothing committed");
      assert.deepEqual([u.valueCommittedMicros, u.valueLeasedMicros, u.requestCount], [0n, USD(75), 0n]);
      assert.equal((await suite.store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions.length, 0);
      assert.equal(await leaseStatus(a), 1, "the release that came with it was not applied either");
    });

    test("records that fit one by one but not together are refused at the first that does not fit", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(40)))!;
      await assert.rejects(
        report(rep(s.sessionId, l, { records: [record("check", USD(25)), record("authorize", USD(10)), record("check", USD(10))] })),
        invalidArgument(/^reports\[0\]\.records\[2\]\.action\.amount: 10\.00 USD is more than lease "lse_\w+" has left \(5\.00 USD\)/),
      );
      // Exactly the whole lease is what a sidecar may spend.
      await report(rep(s.sessionId, l, { records: [record("check", USD(25)), record("authorize", USD(10)), record("check", USD(5))], release: true }));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.valueHeldMicros, u.valueLeasedMicros], [USD(30), USD(10), 0n]);
    });

    test("a record past its lease's action slots is refused", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100), maxActions: 10n } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(10)))!;
      assert.equal(l.actions, 5n);
      const six = Array.from({ length: 6 }, () => record("check", USD(1)));
      await assert.rejects(report(rep(s.sessionId, l, { records: six })), invalidArgument(/^reports\[0\]\.records\[5\]: lease "lse_\w+" has no action left for it/));
      await report(rep(s.sessionId, l, { records: six.slice(0, 5), release: true }));
      assert.equal((await usage(s.sessionId)).actionsCommitted, 5n);
    });

    test("a new record on a lease already released is refused; a retried report of it, records and release, changes nothing", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(40)))!;
      const first = rep(s.sessionId, l, { records: [record("check", USD(30)), record("check", USD(10))], release: true });
      await report(first);
      // A sidecar whose send timed out after the store committed sends it again.
      assert.deepEqual(await report(first), []);
      await assert.rejects(report(rep(s.sessionId, l, { records: [record("check", USD(1))] })), invalidArgument(/^reports\[0\]\.records\[0\]: lease "lse_\w+" was already released/));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.valueLeasedMicros, u.requestCount], [USD(40), 0n, 2n]);
    });

    test("a retried report is taken again with the records that came after it, though counted whole they would not fit", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(50)))!;
      const r1 = record("check", USD(40));
      await report(rep(s.sessionId, l, { records: [r1] }));
      // The retry of r1 (already stored: it takes nothing now), then the next 10.
      assert.deepEqual(await report(rep(s.sessionId, l, { records: [r1, record("check", USD(10))], release: true })), []);
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.valueLeasedMicros, u.requestCount], [USD(50), 0n, 2n]);
    });

    test("records that reach a written-off lease take from its write-off, up to what it wrote off", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100), maxActions: 10n } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(30), { ttlMs: 5_000 }))!;
      assert.deepEqual([l.valueMicros, l.actions], [USD(30), 5n]);
      await report(rep(s.sessionId, l, { records: [record("check", USD(10))] }));
      assert.deepEqual(await writeOff(5_000), { leases: 1, writtenOffValue: USD(20), writtenOffActions: 4n });
      await assert.rejects(
        report(rep(s.sessionId, l, { records: [record("check", USD(21))] })),
        invalidArgument(/^reports\[0\]\.records\[0\]\.action\.amount: 21\.00 USD is more than the unreported rest lease "lse_\w+" was written off with \(20\.00 USD\)/),
      );
      await assert.rejects(
        report(rep(s.sessionId, l, { records: Array.from({ length: 5 }, () => record("check", USD(1))) })),
        invalidArgument(/^reports\[0\]\.records\[4\]: lease "lse_\w+" was written off with no action left for it/),
      );
      // The sidecar, cut off, spent all of it: nothing is charged twice.
      await report(rep(s.sessionId, l, { records: [record("check", USD(12)), record("check", USD(5)), record("check", USD(2)), record("check", USD(1))] }));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.actionsCommitted, u.valueWrittenOffMicros, u.actionsWrittenOff], [USD(30), 5n, 0n, 0n]);
    });

    // ---- malformed records ---------------------------------------------------

    test("an allowed authorization without hold_expire_time is refused, naming the field; a denied one needs none", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(80)))!;
      const denied = record("authorize", USD(10), { decision: create(DecisionSchema, { outcome: Outcome.DENY, message: "no" }), holdExpireTime: undefined });
      await assert.rejects(
        report(rep(s.sessionId, l, { records: [denied, record("authorize", USD(10), { holdExpireTime: undefined })], release: true })),
        invalidArgument(/^reports\[0\]\.records\[1\]\.hold_expire_time: /),
      );
      assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(50), "only the lease is held; no hold that never lapses");
      await report(rep(s.sessionId, l, { records: [denied], release: true }));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueHeldMicros, u.denialCount], [0n, 1n]);
    });

    test("an allowed record in another currency than its session's is refused, naming the field; a denial in one is kept as made", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(80)))!;
      const yen = (extra: Partial<Omit<LeaseRecord, "$typeName">> = {}) => record("check", undefined, { action: payment(10_000_000n, "acme", "JPY"), ...extra });
      await assert.rejects(report(rep(s.sessionId, l, { records: [yen()], release: true })), invalidArgument(/^reports\[0\]\.records\[0\]\.action\.amount\.currency_code: JPY differs from the session's currency USD/));
      assert.equal((await usage(s.sessionId)).valueCommittedMicros, 0n, "10 JPY not counted as 10 USD");
      // A sidecar that could not reach the control plane records its denial of whatever it was asked.
      const unavailable = yen({ decision: create(DecisionSchema, { outcome: Outcome.DENY, reasons: [Reason.CONTROL_PLANE_UNAVAILABLE], message: "deny" }) });
      await report(rep(s.sessionId, undefined, { records: [unavailable] }), rep(s.sessionId, l, { release: true }));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.denialCount], [0n, 1n]);
      const [a] = (await suite.store.listActions({ sessionId: s.sessionId, pageSize: 10, pageToken: "" } as never)).actions;
      assert.deepEqual([ActionStatus[a!.status], a!.capturedAmount?.currencyCode], ["DENIED", "JPY"]);
    });

    // ---- a lease written off while its sidecar was only cut off ----------------

    test("a written-off lease comes back when its sidecar reports its records and releases it: only what it spent stays spent", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100), maxActions: 20n } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(80), { ttlMs: 5_000 }))!;
      assert.deepEqual([l.valueMicros, l.actions], [USD(50), 10n]);
      // The sidecar allowed 10 and 5, then lost the control plane past the lease's TTL and the grace.
      const spent = [record("check", USD(10)), record("authorize", USD(5))];
      assert.deepEqual(await writeOff(5_000), { leases: 1, writtenOffValue: USD(50), writtenOffActions: 10n });
      let u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.valueWrittenOffMicros, u.actionsWrittenOff], [USD(50), USD(50), 10n]);
      // It comes back: its records, then the release of the rest.
      const back = rep(s.sessionId, l, { records: spent, release: true });
      assert.deepEqual(await report(back), []);
      u = await usage(s.sessionId);
      assert.deepEqual(
        [u.valueCommittedMicros, u.actionsCommitted, u.valueHeldMicros, u.actionsHeld, u.valueWrittenOffMicros, u.actionsWrittenOff, u.valueLeasedMicros],
        [USD(10), 1n, USD(5), 1n, 0n, 0n, 0n],
      );
      assert.equal((await day(s.sessionId)).valueUsedMicros, USD(15));
      assert.equal(await leaseStatus(l), 2, "released: it holds and wrote off nothing");
      // A retry of that report changes nothing.
      assert.deepEqual(await report(back), []);
      assert.equal((await usage(s.sessionId)).valueCommittedMicros, USD(10));
      await assertLedgerConsistent(suite.t.db);
    });

    test("a written-off lease's records and its release may come in separate reports; a fork's comes back in its parent too", async () => {
      const parent = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const fork = await suite.store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const l = (await acquire(fork.sessionId, USD(40), { ttlMs: 5_000 }))!;
      assert.equal(l.valueMicros, USD(40));
      await writeOff(5_000);
      assert.equal((await usage(parent.sessionId)).valueCommittedMicros, USD(40));
      await report(rep(fork.sessionId, l, { records: [record("check", USD(7))] }));
      assert.equal((await usage(fork.sessionId)).valueWrittenOffMicros, USD(33), "the record took its 7 from the write-off");
      await report(rep(fork.sessionId, l, { release: true }));
      for (const id of [fork.sessionId, parent.sessionId]) {
        const u = await usage(id);
        assert.deepEqual([u.valueCommittedMicros, u.valueWrittenOffMicros], [USD(7), 0n], id);
      }
      await assertLedgerConsistent(suite.t.db);
    });

    test("a release names only its own session's written-off lease", async () => {
      const agentId = suite.agent();
      const s = await suite.store.createSession(sessionRequest(agentId, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const other = await suite.store.createSession(sessionRequest(agentId, { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(20), { ttlMs: 5_000 }))!;
      await writeOff(5_000);
      await report(rep(other.sessionId, l, { release: true }));
      assert.equal((await usage(s.sessionId)).valueWrittenOffMicros, USD(20));
      assert.equal(await leaseStatus(l), 3);
    });

    // ---- a write-off alone ends no session ------------------------------------

    test("a lease write-off does not end its session EXHAUSTED: the sidecar, only cut off, gives the lease back", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(80), { ttlMs: 5_000 }))!;
      assert.equal(l.valueMicros, USD(50));
      // 50 spent through the store; the sidecar's 50, unused.
      assert.equal((await suite.check(s.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      await writeOff(5_000);
      let got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE", `the write-off ended the session (${got.statusReason})`);
      assert.equal(got.usage!.valueCommittedMicros, USD(100), "the write-off counts, until the sidecar says otherwise");
      await report(rep(s.sessionId, l, { records: [], release: true }));
      got = await suite.store.getSession(s.sessionId);
      assert.equal(SessionStatus[got.status], "ACTIVE");
      assert.equal(got.usage!.valueCommittedMicros, USD(50));
    });

    test("a written-off lease whose sidecar reports it spent all of it ends its session EXHAUSTED as any spend would", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const l = (await acquire(s.sessionId, USD(80), { ttlMs: 5_000 }))!;
      assert.equal((await suite.check(s.sessionId, USD(50))).decision!.outcome, Outcome.ALLOW);
      await writeOff(5_000);
      await report(rep(s.sessionId, l, { records: [record("check", USD(50))], release: true }));
      const got = await suite.store.getSession(s.sessionId);
      assert.deepEqual([SessionStatus[got.status], got.statusReason, got.usage!.valueCommittedMicros], ["EXHAUSTED", "lifetime limit used up", USD(100)]);
    });

    // ---- actions without an amount ----------------------------------------------

    test("a lease for actions without an amount (min_value_micros 0) is granted with no value on a session with a value limit", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100), maxActions: 100n } }), NO_HASH);
      const l = (await acquire(s.sessionId, 0n, { desiredActions: 32n, minValue: 0n }))!;
      assert.ok(l !== undefined, "50 actions and 100 USD are left, but no lease is granted for amountless actions");
      assert.deepEqual([l.valueMicros, l.actions], [0n, 32n]);
      assert.equal((await day(s.sessionId)).actionsUsed, 32n, "its action slots are reserved");
      // It covers tool calls, never an amount.
      await assert.rejects(report(rep(s.sessionId, l, { records: [record("check", USD(1))] })), invalidArgument(/^reports\[0\]\.records\[0\]\.action\.amount: /));
      await report(rep(s.sessionId, l, { records: [record("check", undefined), record("check", undefined)], release: true }));
      const u = await usage(s.sessionId);
      assert.deepEqual([u.valueCommittedMicros, u.actionsCommitted, u.actionsHeld], [0n, 2n, 0n]);
      // A session without an action limit: the lease reserves nothing and limits no count.
      const free = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const f = (await acquire(free.sessionId, 0n, { minValue: 0n }))!;
      assert.deepEqual([f.valueMicros, f.actions], [0n, undefined]);
      await report(rep(free.sessionId, f, { release: true }));
    });

    test("no lease for actions without an amount once no action slot can be leased, nor for an amount once no value can", async () => {
      const s = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: USD(100), maxActions: 1n } }), NO_HASH);
      assert.equal(await acquire(s.sessionId, 0n, { minValue: 0n }), undefined, "half of one action rounds down to none");
      const v = await suite.store.createSession(sessionRequest(suite.agent(), { daily: { maxValueMicros: 1n } }), NO_HASH);
      assert.equal(await acquire(v.sessionId, 1n), undefined, "half of a micro is nothing useful for an amount");
    });
  });
}
