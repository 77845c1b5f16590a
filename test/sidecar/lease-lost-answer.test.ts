import assert from "node:assert/strict";
import { createServer } from "node:net";
import { describe, test } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { type AcquireLeaseRequest, type AcquireLeaseResponse, SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

describe("a sidecar whose lease grant's answer is lost", () => {
  const s = storeSuite("pglite", "lease-lost");

  /** A lease-mode sidecar whose `acquireLease` is `acquire`, and whose reports and exact decisions reach the store. */
  const engineWith = (acquire: (req: AcquireLeaseRequest) => Promise<Partial<AcquireLeaseResponse>>) => {
    const sc = inProcessSidecar(s.store, "h-lost", { acquireLease: acquire, now: s.clock.now });
    return { ...sc, check: (sessionId: string, amount: bigint) => sc.check(sessionId, payment(amount)) };
  };

  const leasesOf = async (sessionId: string) =>
    (
      await s.t.db.query<{ lease_id: string; status: number; held_value: string; written_off_value: string }>(
        "SELECT lease_id, status, held_value, written_off_value FROM leases WHERE session_id = $1 ORDER BY lease_id",
        [sessionId],
      )
    ).rows;

  for (const code of [Code.Unavailable, Code.DeadlineExceeded]) {
    test(`a grant the store committed whose answer was lost (${Code[code]}) is given back, not written off`, async () => {
      const ses = await s.store.createSession(sessionRequest(s.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
      const { engine, reports, asked, paths, check } = engineWith(async (req) => {
        const granted = await s.store.leases.acquire({ ...req, holder: "h-lost" });
        assert.ok(granted, "the store granted it");
        throw new ConnectError("lost", code);
      });
      const res = await check(ses.sessionId, USD(10));
      assert.equal(res.decision!.outcome, Outcome.ALLOW);
      assert.deepEqual(paths, ["exact"], "no lease in hand: decided by the control plane");
      assert.equal(asked.length, 1);
      assert.match(asked[0]!.leaseId, /^lse_[a-z0-9]{26}$/, "the sidecar names the lease");
      // The grant's reserve is held until the sidecar's word arrives.
      assert.ok((await s.store.getSession(ses.sessionId)).usage!.valueLeasedMicros > 0n);
      engine.stop();
      assert.ok(await reports.drain(Date.now() + 5_000));
      assert.deepEqual(await leasesOf(ses.sessionId), [{ lease_id: asked[0]!.leaseId, status: 2, held_value: "0", written_off_value: "0" }]);
      const usage = (await s.store.getSession(ses.sessionId)).usage!;
      assert.equal(usage.valueLeasedMicros, 0n, "nothing held for the lost lease");
      assert.equal(usage.valueCommittedMicros, USD(10), "only the decision");
      // Past its expiry and the grace there is nothing to write off.
      s.clock.advance(120_000);
      await s.store.sweep();
      assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueWrittenOffMicros, 0n);
      await assertLedgerConsistent(s.t.db);
    });
  }

  test("a release that reaches the store before the grant keeps it from being granted", async () => {
    const ses = await s.store.createSession(sessionRequest(s.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
    // The call times out on the sidecar while the control plane has not
    // got to it yet.
    const { engine, reports, asked, check } = engineWith(async () => {
      throw new ConnectError("deadline", Code.DeadlineExceeded);
    });
    await check(ses.sessionId, USD(10));
    engine.stop();
    assert.ok(await reports.drain(Date.now() + 5_000));
    // Now the grant arrives.
    assert.equal(await s.store.leases.acquire({ ...asked[0]!, holder: "h-lost" }), undefined);
    assert.deepEqual(await leasesOf(ses.sessionId), [{ lease_id: asked[0]!.leaseId, status: 2, held_value: "0", written_off_value: "0" }]);
    assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueLeasedMicros, 0n);
    await assertLedgerConsistent(s.t.db);
  });

  test("a call refused at connect (the control plane is down) never reached the store: nothing is released", async () => {
    const ses = await s.store.createSession(sessionRequest(s.agent(), { daily: { maxValueMicros: USD(100) } }), NO_HASH);
    // A port nobody listens on: connect-node's own refusal.
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address() as { port: number };
    await new Promise((r) => server.close(r));
    const down = createClient(SyncService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    let refused: ConnectError | undefined;
    const { engine, reports, sent, check } = engineWith(async (req) => {
      try {
        return await down.acquireLease(req);
      } catch (err) {
        refused = ConnectError.from(err);
        throw err;
      }
    });
    await check(ses.sessionId, USD(10));
    assert.equal(refused?.code, Code.Unavailable);
    assert.equal((refused?.cause as NodeJS.ErrnoException | undefined)?.code, "ECONNREFUSED");
    engine.stop();
    assert.ok(await reports.drain(Date.now() + 5_000));
    assert.equal(sent.length, 0, "no release queued");
    assert.deepEqual(await leasesOf(ses.sessionId), []);
  });
});
