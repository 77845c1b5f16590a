import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { firstMalformed } from "../../src/transport/well-formed.js";
import { CheckRequestSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, ImportSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";

describe("firstMalformed", () => {
  test("a well-formed request has nothing to say", () => {
    const req = create(CheckRequestSchema, { sessionId: "s1", idempotencyKey: "k", action: { type: "payment", merchant: "acme", metadata: { order: "42" }, amount: { currencyCode: "USD", amountMicros: 1n } } });
    assert.equal(firstMalformed(CheckRequestSchema, req), undefined);
  });

  test("a NUL anywhere in a string is named by its path: fields, nested messages, map keys and values, lists", () => {
    const cases: [object, string][] = [
      [{ idempotencyKey: "k\0" }, "idempotency_key: must not contain a NUL character"],
      [{ action: { merchant: "ac\0me" } }, "action.merchant: must not contain a NUL character"],
      [{ action: { metadata: { order: "4\x002" } } }, 'action.metadata["order"]: must not contain a NUL character'],
      [{ action: { metadata: { "o\0": "42" } } }, "action.metadata: a key must not contain a NUL character"],
    ];
    for (const [init, want] of cases) assert.equal(firstMalformed(CheckRequestSchema, create(CheckRequestSchema, init)), want);
    const policy = { currencyCode: "USD", allowedMerchants: ["acme", "glo\0bex"] };
    assert.equal(firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { policy })), "policy.allowed_merchants[1]: must not contain a NUL character");
  });

  test("times outside protobuf's range, in a oneof or deep in a snapshot, are named too", () => {
    const far = { seconds: 253_402_300_800n, nanos: 0 };
    assert.equal(
      firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { expiration: { case: "expireTime", value: far } })),
      "expire_time: must be a time from 0001-01-01 to 9999-12-31",
    );
    assert.equal(
      firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { expiration: { case: "expireTime", value: { seconds: 253_402_300_799n, nanos: 0 } } })),
      undefined,
      "9999-12-31T23:59:59Z is the last one allowed",
    );
    assert.equal(
      firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { idleTimeout: { seconds: 315_576_000_001n, nanos: 0 } })),
      "idle_timeout: must be a duration of at most 10,000 years",
    );
    assert.equal(
      firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { idleTimeout: { seconds: 1n, nanos: -500_000_000 } })),
      "idle_timeout: seconds and nanos must have the same sign",
    );
    assert.equal(
      firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { idleTimeout: { seconds: -1n, nanos: 5 } })),
      "idle_timeout: seconds and nanos must have the same sign",
    );
    for (const d of [{ seconds: 0n, nanos: -5 }, { seconds: -1n, nanos: -5 }, { seconds: 1n, nanos: 5 }]) {
      assert.equal(firstMalformed(CreateSessionRequestSchema, create(CreateSessionRequestSchema, { idleTimeout: d })), undefined, `${d.seconds}s ${d.nanos}ns`);
    }
    const snapshot = { session: { sessionId: "s1", agentId: "a" }, actions: [{ actionId: "x" }, { actionId: "y", createTime: far }] };
    assert.equal(
      firstMalformed(ImportSessionRequestSchema, create(ImportSessionRequestSchema, { snapshot })),
      "snapshot.actions[1].create_time: must be a time from 0001-01-01 to 9999-12-31",
    );
  });
});
