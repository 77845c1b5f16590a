import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { CheckRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { type ControlPlaneClients, SidecarEngine } from "../../src/sidecar/sidecar-engine.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

describe("a sidecar deciding through the control plane, when the answer is lost", () => {
  const s = storeSuite("pglite", "exact-lost", { ledgerCheck: false });

  /**
   * An exact-mode engine whose control plane decides (and commits) each
   * call, then fails it with `code`; or, `refused`, fails it as
   * connect-node fails a call whose connection was refused, deciding nothing.
   */
  const engineLosing = (code: Code, refused = false) => {
    const sent: unknown[] = [];
    const decideThenLose = async (method: "check" | "authorize", init: { sessionId: string; action: never }) => {
      if (refused) {
        const cause = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED", errno: -111, syscall: "connect" });
        throw new ConnectError("connect ECONNREFUSED 127.0.0.1:1", Code.Unavailable, undefined, undefined, cause);
      }
      await s.store.decide({ method, sessionId: init.sessionId, action: init.action, idempotencyKey: "", requestHash: NO_HASH });
      throw new ConnectError("lost", code);
    };
    const sync = {
      getSessionState: ({ sessionId }: { sessionId: string }) => s.store.sessionState(sessionId),
      acquireLease: () => Promise.reject(new Error("exact mode takes no lease")),
      reportLeases: async (req: unknown) => {
        sent.push(req);
        return { rejected: [] };
      },
      claimIdempotencyKeys: async () => ({ results: [] }),
    };
    const policy = { check: (i: never) => decideThenLose("check", i), authorize: (i: never) => decideThenLose("authorize", i) };
    const reports = new ReportQueue({ holder: "h-exact", intervalMs: 10, send: (req) => sync.reportLeases(req) });
    const engine = new SidecarEngine({
      cache: new SessionCache({ maxSessions: 100, maxBytes: 1 << 20, fetch: (id) => s.store.sessionState(id) }),
      controlPlane: { sync, policy } as unknown as ControlPlaneClients,
      reports,
      holder: "h-exact",
      spans: new CalendarSpanCache(),
      leaseTtlMs: 30_000,
      exactOnly: true,
      fresh: () => true,
    });
    return { engine, reports, sent };
  };

  // Unavailable: the connection dropped after the call was sent (a replica
  // killed mid-call), not refused.
  for (const code of [Code.DeadlineExceeded, Code.Canceled, Code.Unavailable]) {
    test(`a Check whose answer was lost (${Code[code]}) after the store charged it is an error, not a DENY: its outcome is unknown`, async () => {
      const ses = await s.store.createSession(sessionRequest(s.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const { engine, reports, sent } = engineLosing(code);
      await assert.rejects(engine.check(create(CheckRequestSchema, { sessionId: ses.sessionId, action: payment(USD(40)) }), NO_HASH), (e: unknown) => {
        const c = ConnectError.from(e);
        assert.equal(Code[c.code], Code[code]);
        assert.match(c.rawMessage, /may have been decided; retry it with the same idempotency_key/);
        return true;
      });
      assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros, USD(40), "the store did charge it");
      engine.stop();
      await reports.drain(Date.now() + 2_000);
      assert.equal(sent.length, 0, "no DENY record of a call the store decided");
    });
  }

  test("a Check refused at connect (the control plane is down) reached nobody: it fails closed, a DENY recorded for later", async () => {
    const ses = await s.store.createSession(sessionRequest(s.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    const { engine, reports } = engineLosing(Code.Unavailable, true);
    const res = await engine.check(create(CheckRequestSchema, { sessionId: ses.sessionId, action: payment(USD(40)) }), NO_HASH);
    assert.equal(Outcome[res.decision!.outcome], "DENY");
    assert.deepEqual(res.decision!.reasons.map((r) => Reason[r]), ["CONTROL_PLANE_UNAVAILABLE"]);
    assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros, 0n, "nothing charged");
    engine.stop();
    await reports.drain(Date.now() + 2_000);
  });
});
