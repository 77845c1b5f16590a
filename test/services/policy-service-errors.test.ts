import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { CaptureRequestSchema, CheckRequestSchema, VoidRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { createPolicyService } from "../../src/services/policy-service.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { withQueryHook } from "../helpers/query-hook.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`errors counted against a session's circuit breaker, on ${driver}`, () => {
    const suite = storeSuite(driver, "errors");

    test("the agent's mistakes count toward fail_after_errors; the store's trouble does not end its sessions FAILED", async () => {
      // The store's database, failing the statements that read holds while `down` (a connection lost mid-call).
      let down = false;
      const flaky = withQueryHook(suite.t.db, (sql) => {
        if (down && sql.includes("FROM actions")) throw new Error("Connection terminated unexpectedly");
      });
      const store = createWardenStore({ db: flaky, now: suite.clock.now });
      const policy = createPolicyService(store);
      const s = await store.createSession(sessionRequest(suite.agent(), { circuitBreaker: { failAfterErrors: 2 } }), NO_HASH);
      const held = await store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(5)), idempotencyKey: "", requestHash: NO_HASH });
      const authorizationId = (held as { authorizationId: string }).authorizationId;
      const codeOf = (p: unknown) => Promise.resolve(p).then(() => "ok", (e: unknown) => Code[ConnectError.from(e).code]);
      const capture = (amountMicros: bigint) =>
        policy.capture(create(CaptureRequestSchema, { sessionId: s.sessionId, authorizationId, amount: { currencyCode: "USD", amountMicros } }), {} as never);
      const counts = async () => {
        const got = await store.getSession(s.sessionId);
        return [SessionStatus[got.status], got.usage!.errorCount] as const;
      };
      /** Errors are counted after the answer: waits (polling) until `n` are. */
      const counted = async (n: bigint) => {
        for (let i = 0; i < 200 && (await counts())[1] < n; i++) await new Promise((r) => setTimeout(r, 10));
        return counts();
      };
      // The agent's mistake: a capture above the hold.
      assert.equal(await codeOf(capture(USD(6))), "FailedPrecondition");
      assert.deepEqual(await counted(1n), ["ACTIVE", 1n]);
      // The store's trouble: three calls fail while its database is away.
      down = true;
      for (let i = 0; i < 3; i++) assert.notEqual(await codeOf(capture(USD(5))), "ok");
      down = false;
      // An unknown session counts nowhere; the agent's second mistake trips the breaker, and is the second error counted.
      assert.equal(await codeOf(policy.void(create(VoidRequestSchema, { sessionId: "no-such-session", authorizationId }), {} as never)), "NotFound");
      assert.equal(await codeOf(policy.check(create(CheckRequestSchema, { sessionId: s.sessionId, action: payment(USD(1), "acme", "EUR") }), {} as never)), "InvalidArgument");
      assert.deepEqual(await counted(2n), ["FAILED", 2n]);
    });
  });
}
