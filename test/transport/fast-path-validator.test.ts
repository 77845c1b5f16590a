import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, type DescMessage, type Message } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { createValidator, type Validator } from "@bufbuild/protovalidate";
import { file_warden_v1_agent_service } from "../../src/gen/warden/v1/agent_service_pb.js";
import { file_warden_v1_approval_service } from "../../src/gen/warden/v1/approval_service_pb.js";
import { file_warden_v1_audit_service } from "../../src/gen/warden/v1/audit_service_pb.js";
import { file_warden_v1_auth_service } from "../../src/gen/warden/v1/auth_service_pb.js";
import { file_warden_v1_decision } from "../../src/gen/warden/v1/decision_pb.js";
import { file_warden_v1_event_service } from "../../src/gen/warden/v1/event_service_pb.js";
import { file_warden_v1_money } from "../../src/gen/warden/v1/money_pb.js";
import { file_warden_v1_policy } from "../../src/gen/warden/v1/policy_pb.js";
import {
  AuthorizeRequestSchema,
  CaptureRequestSchema,
  CheckRequestSchema,
  file_warden_v1_policy_service,
  VoidRequestSchema,
} from "../../src/gen/warden/v1/policy_service_pb.js";
import { file_warden_v1_session } from "../../src/gen/warden/v1/session_pb.js";
import { file_warden_v1_session_service } from "../../src/gen/warden/v1/session_service_pb.js";
import {
  AcquireLeaseRequestSchema,
  ClaimIdempotencyKeysRequestSchema,
  file_warden_v1_sync_service,
  ReportLeasesRequestSchema,
} from "../../src/gen/warden/v1/sync_service_pb.js";
import { file_warden_v1_webhook_service } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { compileRuleCheck, withFastPath } from "../../src/transport/fast-path-validator.js";
import { nativeRegexMatch } from "../../src/transport/validation.js";
import { randomMessage } from "../helpers/random-message.js";
import { seededRandom } from "../helpers/seeded-random.js";

const FILES = [
  file_warden_v1_agent_service,
  file_warden_v1_approval_service,
  file_warden_v1_audit_service,
  file_warden_v1_auth_service,
  file_warden_v1_decision,
  file_warden_v1_event_service,
  file_warden_v1_money,
  file_warden_v1_policy,
  file_warden_v1_policy_service,
  file_warden_v1_session,
  file_warden_v1_session_service,
  file_warden_v1_sync_service,
  file_warden_v1_webhook_service,
];
const TYPES = FILES.flatMap((f) => [...nestedTypes(f)].filter((t): t is DescMessage => t.kind === "message"));
const full = createValidator({ regexMatch: nativeRegexMatch });

/** JSON of a message for an assertion message (bigints as strings, bytes as lengths). */
const show = (m: Message) => JSON.stringify(m, (_k, v) => (typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? `bytes(${v.length})` : v));

function validCheckRequest() {
  return create(CheckRequestSchema, {
    sessionId: "ses_01m978gb4spp0thwd9311gygyw",
    action: { type: "payment", merchant: "bench", amount: { amountMicros: 1_000_000n, currencyCode: "USD" }, metadata: { order: "42" } },
    idempotencyKey: "k-1",
  });
}

describe("fast-path validator", () => {
  test("the requests of the decision and report paths have a compiled check", () => {
    for (const schema of [
      CheckRequestSchema,
      AuthorizeRequestSchema,
      CaptureRequestSchema,
      VoidRequestSchema,
      ReportLeasesRequestSchema,
      AcquireLeaseRequestSchema,
      ClaimIdempotencyKeysRequestSchema,
    ]) {
      const check = compileRuleCheck(schema, nativeRegexMatch);
      assert.equal(typeof check, "function", `${schema.typeName}: ${typeof check === "function" ? "" : check.unsupported}`);
    }
  });

  test("agrees with protovalidate on random messages of every type in the API", () => {
    const rand = seededRandom(20261207);
    let valid = 0;
    let invalid = 0;
    let compiled = 0;
    for (const schema of TYPES) {
      const check = compileRuleCheck(schema, nativeRegexMatch);
      if (typeof check === "function") compiled++;
      for (let i = 0; i < 300; i++) {
        const m = randomMessage(schema, rand);
        const kind = full.validate(schema, m).kind;
        assert.notEqual(kind, "error", `${schema.typeName}: ${show(m)}`);
        if (typeof check !== "function") continue;
        // Never valid where protovalidate is not; and, for a type it covers,
        // never sent to protovalidate when valid.
        assert.equal(check(m), kind === "valid", `${schema.typeName}: compiled ${check(m)}, protovalidate ${kind}: ${show(m)}`);
        if (kind === "valid") valid++;
        else invalid++;
      }
    }
    // The comparison means something only if both answers came up often.
    assert.ok(compiled >= 100, `only ${compiled} of ${TYPES.length} types compiled`);
    assert.ok(valid >= 2000 && invalid >= 2000, `valid ${valid}, invalid ${invalid}`);
  });

  test("each rule of a Check request, at and past its bound", () => {
    const check = compileRuleCheck(CheckRequestSchema, nativeRegexMatch);
    assert.equal(typeof check, "function");
    const ok = check as (m: Message) => boolean;
    const cases: [string, (r: ReturnType<typeof validCheckRequest>) => void, boolean][] = [
      ["as built", () => {}, true],
      ["amount zero", (r) => (r.action!.amount!.amountMicros = 0n), false],
      ["amount negative", (r) => (r.action!.amount!.amountMicros = -1n), false],
      ["no amount", (r) => (r.action!.amount = undefined), true],
      ["no action", (r) => (r.action = undefined), false],
      ["type empty", (r) => (r.action!.type = ""), false],
      ["type 64 emoji", (r) => (r.action!.type = `a${"😀".repeat(63)}`), false],
      ["type upper case", (r) => (r.action!.type = "Payment"), false],
      ["merchant 256 emoji", (r) => (r.action!.merchant = "😀".repeat(256)), true],
      ["merchant 257 emoji", (r) => (r.action!.merchant = "😀".repeat(257)), false],
      ["metadata key empty", (r) => (r.action!.metadata = { "": "x" }), false],
      ["metadata value 1024", (r) => (r.action!.metadata = { k: "x".repeat(1024) }), true],
      ["metadata value 1025", (r) => (r.action!.metadata = { k: "x".repeat(1025) }), false],
      ["33 metadata pairs", (r) => (r.action!.metadata = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"]))), false],
      ["session id with a space", (r) => (r.sessionId = "ses 1"), false],
      ["idempotency key 129", (r) => (r.idempotencyKey = "k".repeat(129)), false],
    ];
    for (const [name, mutate, expected] of cases) {
      const r = validCheckRequest();
      mutate(r);
      assert.equal(full.validate(CheckRequestSchema, r).kind === "valid", expected, `protovalidate, ${name}`);
      assert.equal(ok(r), expected, `compiled, ${name}`);
    }
  });

  test("a valid request never reaches protovalidate; an invalid one gets its full answer", () => {
    let calls = 0;
    const counting: Validator = {
      validate(schema: DescMessage, message: Message) {
        calls++;
        return full.validate(schema, message);
      },
    } as Validator;
    const v = withFastPath(counting, nativeRegexMatch);
    assert.equal(v.validate(CheckRequestSchema, validCheckRequest()).kind, "valid");
    assert.equal(calls, 0);
    const bad = validCheckRequest();
    bad.action!.amount!.amountMicros = 0n;
    const result = v.validate(CheckRequestSchema, bad);
    assert.equal(calls, 1);
    assert.equal(result.kind, "invalid");
    assert.deepEqual(
      result.kind === "invalid" ? result.violations.map((x) => x.message) : [],
      ["amount_micros must be greater than zero"],
    );
    // A type without a compiled check goes to protovalidate every time.
    const uncompiled = TYPES.find((t) => typeof compileRuleCheck(t, nativeRegexMatch) !== "function")!;
    v.validate(uncompiled, create(uncompiled));
    assert.equal(calls, 2);
  });
});
