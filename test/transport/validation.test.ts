import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, createClient, createHandlerContext, type ServiceImpl } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { CheckRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { type MountedService, mountService } from "../../src/transport/grpc-server.js";
import { withValidation } from "../../src/transport/validation.js";
import { connectTransports, grpcJsClient, grpcJsUnary, type Stacks, stackUrls, startStacks } from "./harness.js";

type CheckInit = MessageInitShape<typeof CheckRequestSchema>;

/** Bad requests, and what the error must say. */
const badRequests: [string, CheckInit, RegExp][] = [
  ["empty session id", { sessionId: "", action: { type: "payment" } }, /^invalid request: session_id: does not match regex pattern `\^\[A-Za-z0-9\]/],
  [
    "negative amount",
    { sessionId: "s-1", action: { type: "payment", amount: { currencyCode: "USD", amountMicros: -5n } } },
    /^invalid request: action\.amount: amount_micros must be greater than zero$/,
  ],
  ["missing action", { sessionId: "s-1" }, /^invalid request: action: value is required$/],
  ["map key and value", { sessionId: "s-1", action: { type: "p", metadata: { "": "x", k: "v".repeat(2000) } } }, /^invalid request: action\.metadata\[""\]: .+; action\.metadata\["k"\]: must be at most 1024 characters$/],
  [
    "two violations",
    { sessionId: "bad id!", action: { type: "Payment" } },
    /^invalid request: session_id: does not match regex pattern .+; action\.type: does not match regex pattern/,
  ],
];

describe("withValidation: protovalidate in front of both stacks", { timeout: 20_000 }, () => {
  let stacks: Stacks;
  let handled = 0;
  const impl: Partial<ServiceImpl<typeof PolicyService>> = {
    check(req) {
      handled++;
      return { actionId: `${req.sessionId}-checked`, decision: { outcome: Outcome.ALLOW } };
    },
  };

  before(async () => {
    const mounted: MountedService[] = [mountService(PolicyService, withValidation(PolicyService, impl))];
    stacks = await startStacks(mounted);
  });
  after(() => stacks.close());

  test("a valid request reaches the handler on both stacks", async () => {
    handled = 0;
    const transports = connectTransports(stacks);
    for (const { name, transport } of transports) {
      const res = await createClient(PolicyService, transport).check({ sessionId: "s-1", action: { type: "payment", amount: { currencyCode: "USD", amountMicros: 5n } } });
      assert.equal(res.actionId, "s-1-checked", name);
    }
    assert.equal(handled, transports.length);
  });

  test("a bad request is INVALID_ARGUMENT naming the field, over every connect-es transport, and never reaches the handler", async () => {
    handled = 0;
    for (const { name, transport } of connectTransports(stacks)) {
      const client = createClient(PolicyService, transport);
      for (const [what, req, message] of badRequests) {
        await assert.rejects(client.check(create(CheckRequestSchema, req)), (e: unknown) => {
          const err = ConnectError.from(e);
          assert.equal(err.code, Code.InvalidArgument, `${name}, ${what}`);
          assert.match(err.rawMessage, message, `${name}, ${what}`);
          return true;
        });
      }
    }
    assert.equal(handled, 0);
  });

  test("a plain grpc-js client gets the same status and message from both servers", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = grpcJsClient(PolicyService, grpcAddress);
      try {
        for (const [what, req, message] of badRequests) {
          await assert.rejects(grpcJsUnary(client, "check", create(CheckRequestSchema, req)), (e: grpc.ServiceError) => {
            assert.equal(e.code, grpc.status.INVALID_ARGUMENT, `${name}, ${what}`);
            assert.match(e.details, message, `${name}, ${what}`);
            return true;
          });
        }
      } finally {
        client.close();
      }
    }
  });

  test("the violations travel as a buf.validate.Violations error detail on both stacks", async () => {
    for (const { name, transport } of connectTransports(stacks)) {
      await assert.rejects(createClient(PolicyService, transport).check({ sessionId: "s-1", action: { type: "payment", amount: { amountMicros: -5n, currencyCode: "USD" } } }), (e: unknown) => {
        const [violations] = ConnectError.from(e).findDetails(ViolationsSchema);
        assert.ok(violations, name);
        assert.equal(violations.violations.length, 1, name);
        const v = violations.violations[0]!;
        assert.equal(v.ruleId, "amount.positive", name);
        assert.deepEqual(
          v.field?.elements.map((el) => el.fieldName),
          ["action", "amount"],
          name,
        );
        return true;
      });
    }
  });

  test("methods missing from the implementation stay missing, so both stacks answer UNIMPLEMENTED", () => {
    const wrapped = withValidation(PolicyService, impl);
    assert.deepEqual(Object.keys(wrapped), ["check"]);
  });

  test("the wrapped handler throws before the implementation runs, with the handler's `this` kept", async () => {
    const seen: unknown[] = [];
    const withThis = {
      prefix: "p",
      check(this: { prefix: string }, req: { sessionId: string }) {
        seen.push(this.prefix);
        return { actionId: `${this.prefix}-${req.sessionId}` };
      },
    };
    const wrapped = withValidation(PolicyService, withThis as Partial<ServiceImpl<typeof PolicyService>>);
    const ctx = createHandlerContext({
      service: PolicyService,
      method: PolicyService.method.check,
      protocolName: "test",
      requestMethod: "POST",
      url: "http://localhost/warden.v1.PolicyService/Check",
    });
    const ok = await wrapped.check!(create(CheckRequestSchema, { sessionId: "a", action: { type: "x" } }), ctx);
    assert.equal((ok as { actionId: string }).actionId, "p-a");
    await assert.rejects(Promise.resolve(wrapped.check!(create(CheckRequestSchema, { sessionId: "" }), ctx)), (e: unknown) => {
      const err = ConnectError.from(e);
      assert.equal(err.code, Code.InvalidArgument);
      const [violations] = err.findDetails(ViolationsSchema);
      // The paths in the detail agree with the message.
      for (const v of violations!.violations) assert.ok(err.rawMessage.includes(v.field!.elements.map((el) => el.fieldName).join(".")));
      return true;
    });
    assert.deepEqual(seen, ["p"]);
  });
});
