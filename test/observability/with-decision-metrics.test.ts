import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, createClient, type ServiceImpl } from "@connectrpc/connect";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createMetrics } from "../../src/observability/metrics.js";
import { decisionPathKey, withDecisionMetrics } from "../../src/observability/with-decision-metrics.js";
import { mountService } from "../../src/transport/grpc-server.js";
import { withValidation } from "../../src/transport/validation.js";
import { payment, USD } from "../helpers/fixtures.js";
import { connectTransports, type Stacks, startStacks } from "../transport/harness.js";
import { parseSamples, valueOf } from "./scrape.js";

/**
 * A PolicyService that decides like a sidecar would: by the merchant, and
 * says which path it took. "boom" throws a plain Error (a bug), "gone"
 * a NOT_FOUND.
 */
const sidecarLike: Partial<ServiceImpl<typeof PolicyService>> = {
  check(req, ctx) {
    const merchant = req.action!.merchant;
    if (merchant === "boom") throw new Error("bug");
    if (merchant === "gone") throw new ConnectError("no such session", Code.NotFound);
    ctx.values.set(decisionPathKey, merchant === "acme" ? "local" : "exact");
    return merchant === "acme"
      ? { decision: { outcome: Outcome.ALLOW } }
      : { decision: { outcome: Outcome.DENY, reasons: [Reason.MERCHANT_BLOCKED] } };
  },
  async authorize() {
    return { decision: { outcome: Outcome.NEEDS_APPROVAL, reasons: [Reason.APPROVAL_REQUIRED] }, authorizationId: "" };
  },
};

describe("withDecisionMetrics on both stacks", { timeout: 30_000 }, () => {
  const metrics = createMetrics({ processMetrics: false });
  let stacks: Stacks;
  before(async () => {
    stacks = await startStacks([mountService(PolicyService, withDecisionMetrics(withValidation(PolicyService, sidecarLike), metrics))]);
  });
  after(() => stacks.close());

  test("every transport records the same decisions, paths and error codes", async () => {
    const transports = connectTransports(stacks);
    for (const { transport } of transports) {
      const client = createClient(PolicyService, transport);
      assert.equal((await client.check({ sessionId: "s1", action: payment(USD(1)) })).decision!.outcome, Outcome.ALLOW);
      assert.equal((await client.check({ sessionId: "s1", action: payment(USD(1), "evil") })).decision!.outcome, Outcome.DENY);
      assert.equal((await client.authorize({ sessionId: "s1", action: payment(USD(1)) })).decision!.outcome, Outcome.NEEDS_APPROVAL);
      await assert.rejects(client.check({ sessionId: "s1", action: payment(USD(1), "boom") }), (e: unknown) => ConnectError.from(e).code === Code.Internal);
      await assert.rejects(client.check({ sessionId: "s1", action: payment(USD(1), "gone") }), (e: unknown) => ConnectError.from(e).code === Code.NotFound);
      // Rejected by validation, which the metrics wrap: counted too.
      await assert.rejects(client.check({ sessionId: "s1", action: payment(0n) }), (e: unknown) => ConnectError.from(e).code === Code.InvalidArgument);
    }
    const n = transports.length;
    const s = parseSamples(await metrics.registry.metrics());
    assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "ALLOW", reason: "NONE" }), n);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "check", outcome: "DENY", reason: "MERCHANT_BLOCKED" }), n);
    assert.equal(valueOf(s, "warden_decisions_total", { method: "authorize", outcome: "NEEDS_APPROVAL", reason: "APPROVAL_REQUIRED" }), n);
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "check", path: "local" }), n);
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "check", path: "exact" }), n);
    // No path set by the handler: the default.
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count", { method: "authorize", path: "store" }), n);
    assert.equal(valueOf(s, "warden_decision_errors_total", { method: "check", code: "INTERNAL" }), n);
    assert.equal(valueOf(s, "warden_decision_errors_total", { method: "check", code: "NOT_FOUND" }), n);
    assert.equal(valueOf(s, "warden_decision_errors_total", { method: "check", code: "INVALID_ARGUMENT" }), n);
    assert.equal(valueOf(s, "warden_decision_duration_seconds_count"), 3 * n, "errors have no latency sample");
  });
});
