import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ImportSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { requestHash } from "../../src/services/request-hash.js";
import { sessionRequest } from "../helpers/fixtures.js";
import { CreateSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("requestHash: what tells a retry from another request under the same key", () => {
  test("the request's own idempotency_key is left out; the keys an import snapshot carries are not", () => {
    const importOf = (outer: string, carried: string) =>
      create(ImportSessionRequestSchema, {
        idempotencyKey: outer,
        snapshot: { session: { sessionId: "imported" }, idempotencyKeys: [{ idempotencyKey: carried, method: "check" }] },
      });
    const h = (r: ReturnType<typeof importOf>) => hex(requestHash(ImportSessionRequestSchema, r));
    assert.equal(h(importOf("import-1", "pay-1")), h(importOf("import-2", "pay-1")), "a retry under another outer key is the same request");
    assert.notEqual(h(importOf("import-1", "pay-1")), h(importOf("import-1", "pay-2")), "a snapshot carrying other keys is another request");
  });

  test("map entries in any order hash alike; a map key named __proto__ is data like any other", () => {
    const withLabels = (labels: Record<string, string>) => hex(requestHash(CreateSessionRequestSchema, sessionRequest("a", {}, { labels })));
    assert.equal(withLabels({ team: "ops", env: "prod" }), withLabels({ env: "prod", team: "ops" }));
    const proto = Object.fromEntries([["__proto__", "x"]]) as Record<string, string>;
    assert.notEqual(withLabels(proto), withLabels({}));
  });
});
