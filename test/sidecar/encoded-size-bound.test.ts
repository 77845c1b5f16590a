import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { DoubleValueSchema, FileDescriptorProtoSchema, StructSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Outcome, Reason, Scope, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { EventSchema } from "../../src/gen/warden/v1/event_service_pb.js";
import { ClaimReleaseSchema, LeaseRecordSchema, LeaseSettlementSchema, ReportLeasesRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { encodedSizeBound } from "../../src/sidecar/encoded-size-bound.js";
import { seededRandom } from "../helpers/seeded-random.js";

/** One to three UTF-8 bytes per UTF-16 unit, and four per pair. */
const PIECES = ["a", "Z", "0", "é", "€", "😀", "\u0000", "日本"];

function text(r: () => number, max: number): string {
  let s = "";
  const n = Math.floor(r() * max);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)];
  return s;
}

const int64 = (r: () => number) => (r() < 0.2 ? -1n : BigInt(Math.floor(r() * 2 ** 52)) * (r() < 0.3 ? 2048n : 1n));

function record(r: () => number): MessageInitShape<typeof LeaseRecordSchema> {
  const metadata: Record<string, string> = {};
  for (let i = Math.floor(r() * 4); i > 0; i--) metadata[text(r, 8) || "k"] = text(r, 40);
  const denied = r() < 0.4;
  return {
    actionId: "act_0123456789abcdefghijklmnop",
    method: r() < 0.5 ? "check" : "authorize",
    action: { type: "payment", amount: r() < 0.8 ? { currencyCode: "USD", amountMicros: int64(r) } : undefined, merchant: text(r, 20), metadata, description: text(r, 60) },
    decision: {
      outcome: denied ? Outcome.DENY : Outcome.ALLOW,
      reasons: denied ? [Reason.LIMIT_DAILY_VALUE, Reason.MERCHANT_BLOCKED] : [],
      violations: denied ? [{ reason: Reason.LIMIT_DAILY_VALUE, scope: Scope.SESSION, scopeId: text(r, 30), window: Window.DAY }] : [],
      message: denied ? text(r, 120) : "allowed",
      remaining: denied
        ? [{ scope: Scope.AGENT, scopeId: text(r, 20), window: Window.MONTH, windowStartTime: timestampFromMs(0), valueUsedMicros: int64(r), valueLimitMicros: int64(r), actionsRemaining: 3n }]
        : [],
    },
    createTime: timestampFromMs(Math.floor(r() * 2 ** 41)),
    holdExpireTime: r() < 0.5 ? timestampFromMs(Math.floor(r() * 2 ** 41)) : undefined,
    processingNanos: int64(r),
    idempotencyKey: text(r, 30),
    requestHash: r() < 0.5 ? new Uint8Array(32).fill(255) : new Uint8Array(0),
    response: new Uint8Array(Math.floor(r() * 300)).fill(200),
  };
}

function assertBound<D extends DescMessage>(schema: D, init: MessageInitShape<D>, label: string): { bound: number; size: number } {
  const message = create(schema, init);
  const size = toBinary(schema, message).byteLength;
  const bound = encodedSizeBound(schema, message);
  assert.ok(bound >= size, `${label}: bound ${bound} under the encoded size ${size}`);
  return { bound, size };
}

describe("encodedSizeBound", () => {
  test("is never under what toBinary gives, for 3,000 random records, settlements, claims and whole reports", () => {
    const r = seededRandom(7);
    let bounds = 0;
    let sizes = 0;
    for (let i = 0; i < 1000; i++) {
      const rec = record(r);
      const { bound, size } = assertBound(LeaseRecordSchema, rec, `record #${i}`);
      bounds += bound;
      sizes += size;
      assertBound(
        LeaseSettlementSchema,
        { authorizationId: "act_0123456789abcdefghijklmnop", captureMicros: r() < 0.5 ? int64(r) : undefined, time: timestampFromMs(1), idempotencyKey: text(r, 20), response: new Uint8Array(9) },
        `settlement #${i}`,
      );
      assertBound(ClaimReleaseSchema, { idempotencyKey: text(r, 40) || "k", actionId: text(r, 20) }, `claim #${i}`);
      assertBound(
        ReportLeasesRequestSchema,
        { holder: text(r, 10), reports: [{ sessionId: "s1", leaseId: "", records: [rec, record(r)], release: r() < 0.5 }] },
        `report #${i}`,
      );
    }
    // Loose, not absurd: a send of such records still carries hundreds.
    assert.ok(bounds < 3 * sizes, `bounds ${bounds} against sizes ${sizes}`);
  });

  test("covers every kind of field: optional scalars, enums, oneofs, maps of messages, doubles, bools, nested lists", () => {
    assertBound(
      StructSchema,
      {
        fields: {
          n: { kind: { case: "numberValue", value: 1.5 } },
          z: { kind: { case: "numberValue", value: -0 } },
          b: { kind: { case: "boolValue", value: true } },
          s: { kind: { case: "stringValue", value: "日本😀" } },
          l: { kind: { case: "listValue", value: { values: [{ kind: { case: "nullValue", value: 0 } }, { kind: { case: "stringValue", value: "x" } }] } } },
          o: { kind: { case: "structValue", value: { fields: { k: { kind: { case: "numberValue", value: -2 } } } } } },
        },
      },
      "struct",
    );
    assertBound(
      FileDescriptorProtoSchema,
      {
        name: "a.proto",
        dependency: ["b.proto", "c.proto"],
        publicDependency: [0, 1, 2147483647],
        messageType: [{ name: "M", field: [{ name: "f", number: 536870911, label: 3, type: 9, jsonName: "f", proto3Optional: true }] }],
        options: { javaPackage: "p", optimizeFor: 1, ccEnableArenas: false },
      } as never,
      "file descriptor",
    );
    // Proto3 leaves a field at its default out, but writes a double's -0.
    assert.equal(encodedSizeBound(DoubleValueSchema, create(DoubleValueSchema, { value: 0 })), 0);
    assertBound(DoubleValueSchema, { value: -0 }, "-0");
  });

  test("measures exactly what it does not walk: a Struct field that protobuf-es holds as a plain JSON object", () => {
    const event = create(EventSchema, { eventId: "evt_1", data: { a: "x".repeat(500), nested: { list: [1, 2, 3] } } });
    assert.equal(encodedSizeBound(EventSchema, event), toBinary(EventSchema, event).byteLength);
  });
});
