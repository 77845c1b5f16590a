import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { type InProcessSidecarOptions, inProcessSidecar } from "../helpers/in-process-sidecar.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`a sidecar whose claim of a key landed but whose answer was lost (${driver})`, () => {
    const s = storeSuite(driver, "idem-lost-claim", { ledgerCheck: false });

    const sidecar = (holder: string, claim?: InProcessSidecarOptions["claimIdempotencyKeys"]) => {
      const sc = inProcessSidecar(s.store, holder, { now: s.clock.now, claimIdempotencyKeys: claim });
      sc.reports.start();
      return { ...sc, check: (sessionId: string, amount: bigint, key: string) => sc.check(sessionId, payment(amount), key) };
    };
    /** The control plane commits the claim, and its answer is lost on the way back (a deadline: the sidecar waits 1 s at most for a claim). */
    const answerLost: InProcessSidecarOptions["claimIdempotencyKeys"] = async (req) => {
      await s.store.claimKeys(req.claims);
      throw new ConnectError("claim answer lost", Code.DeadlineExceeded);
    };

    test("a retry on another sidecar, after the first call's record reached the store, gets the first answer and is charged once", async () => {
      const ses = await s.store.createSession(sessionRequest(s.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const a = sidecar("h-a", answerLost);
      const first = await a.check(ses.sessionId, USD(40), "k-1");
      assert.equal(first.decision!.outcome, Outcome.ALLOW);
      // The first call's record reaches the store.
      await a.reports.drain(Date.now() + 5_000);
      a.engine.stop();
      assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros, USD(40));

      // The agent retries the very same call; it lands on another sidecar.
      // ABORTED means "retry": the client does, a few seconds apart.
      const b = sidecar("h-b");
      let retry: CheckResponse | undefined;
      const aborted: number[] = [];
      for (let i = 0; i < 20 && retry === undefined; i++) {
        try {
          retry = await b.check(ses.sessionId, USD(40), "k-1");
        } catch (e) {
          const c = ConnectError.from(e);
          if (c.code !== Code.Aborted) throw e;
          aborted.push(i);
          s.clock.advance(5_000);
        }
      }
      await b.reports.drain(Date.now() + 5_000);
      b.engine.stop();
      const committed = (await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros;
      assert.equal(retry?.actionId, first.actionId, `the retry gets the first answer (ABORTED ${aborted.length} times, then decided again; committed ${committed})`);
      assert.equal((await s.store.getSession(ses.sessionId)).usage!.valueCommittedMicros, USD(40), "charged once");
    });

    test("a call whose lost claim sends it to the control plane is decided there, not refused ABORTED by its own claim", async () => {
      const ses = await s.store.createSession(sessionRequest(s.agent(), { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      const a = sidecar("h-a2", answerLost);
      // Above the lifetime limit: not a denial the sidecar is sure of, so
      // the control plane decides it (a DENY for REASON_LIMIT_LIFETIME...).
      let outcome: string;
      try {
        const res = await a.check(ses.sessionId, USD(150), "k-2");
        outcome = `decided ${res.decision!.outcome}`;
      } catch (e) {
        outcome = `${Code[ConnectError.from(e).code]}: ${ConnectError.from(e).rawMessage}`;
      }
      await a.reports.drain(Date.now() + 5_000);
      a.engine.stop();
      assert.equal(outcome, `decided ${Outcome.DENY}`, "the control plane's DENY");
    });
  });
}
