import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

describe("a sidecar deciding through the control plane, when the answer is lost", () => {
  const s = storeSuite("pglite", "exact-lost", { ledgerCheck: false });

  /**
   * An exact-mode sidecar whose control plane decides (and commits) each
   * call, then fails it with `code`; or, `refused`, fails it as
   * connect-node fails a call whose connection was refused, deciding nothing.
   */
  const engineLosing = (code: Code, refused = false) =>
    inProcessSidecar(s.store, "h-exact", {
      exactOnly: true,
      acquireLease: () => Promise.reject(new Error("exact mode takes no lease")),
      decide: async (method, init) => {
        if (refused) {
          const cause = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED", errno: -111, syscall: "connect" });
          throw new ConnectError("connect ECONNREFUSED 127.0.0.1:1", Code.Unavailable, undefined, undefined, cause);
        }
        await s.store.decide({ method, sessionId: init.sessionId, action: init.action, idempotencyKey: "", requestHash: NO_HASH });
        throw new ConnectError("lost", code);
      },
    });

  // Unavailable: the connection dropped after the call was sent (a replica
  // killed mid-call), not refused.
  for (const code of [Code.DeadlineExceeded, Code.Canceled, Code.Unavailable]) {
    test(`a Check whose answer was lost (${Code[code]}) after the store charged it is an error, not a DENY: its outcome is unknown`, async () => {
      const ses = await s.store.createSession(sessionRequest(s.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const { engine, reports, sent, check } = engineLosing(code);
      await assert.rejects(check(ses.sessionId, payment(USD(40))), (e: unknown) => {
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
    const { engine, reports, sent, check } = engineLosing(Code.Unavailable, true);
    const res = await check(ses.sessionId, payment(USD(40)));
    assert.equal(Outcome[res.decision!.outcome], "DENY");
    assert.deepEqual(res.decision!.reasons.map((r) => Reason[r]), ["CONTROL_PLANE_UNAVAILABLE"]);
    assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros, 0n, "nothing charged");
    engine.stop();
    await reports.drain(Date.now() + 2_000);
    assert.deepEqual(
      sent.flatMap((r) => r.reports.flatMap((rep) => rep.records.map((rec) => Outcome[rec.decision!.outcome]))),
      ["DENY"],
      "the DENY reaches the store's history",
    );
  });
});
