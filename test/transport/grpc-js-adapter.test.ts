import assert from "node:assert/strict";
import http2 from "node:http2";
import { after, before, describe, test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { type CheckRequest, CheckRequestSchema, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { type MountedService, mountService } from "../../src/transport/grpc-server.js";
import { connectTransports, deferred, grpcJsClient, grpcJsUnary, type Stacks, stackUrls, startStacks } from "./harness.js";

/** What the fake handler saw of a call that waited for its signal. */
interface Observed {
  readonly timeoutMs: number | undefined;
  readonly reason: unknown;
}

/**
 * A stand-in PolicyService whose Check behaves according to the session id,
 * so each test can drive one path of the adapter.
 */
function createFakePolicyService(
  observed: Observed[],
  started: { notify: () => void },
  kept: HandlerContext[] = [],
): Partial<ServiceImpl<typeof PolicyService>> {
  return {
    async check(req: CheckRequest, ctx: HandlerContext) {
      switch (req.sessionId) {
        case "keep":
          // Never reads the signal while the call runs.
          kept.push(ctx);
          return { actionId: "kept" };
        case "notfound":
          throw new ConnectError("session notfound does not exist", Code.NotFound);
        case "odd":
          throw new ConnectError(oddMessage, Code.FailedPrecondition);
        case "boom":
          throw new Error("connection to postgres://admin:hunter2@db failed");
        case "wait": {
          const timeoutMs = ctx.timeoutMs();
          started.notify();
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
          observed.push({ timeoutMs, reason: ctx.signal.reason });
          throw ctx.signal.reason;
        }
        default:
          ctx.responseHeader.set("x-served-by", "fake");
          ctx.responseTrailer.set("x-trailer", "done");
          return {
            actionId: `${req.sessionId}:${ctx.requestHeader.get("x-request-id") ?? "-"}`,
            decision: { outcome: Outcome.ALLOW, message: `${ctx.protocolName} ${ctx.method.name} ${ctx.service.typeName}` },
          };
      }
    },
  };
}

/** A message with what percent-encoding of grpc-message must survive. */
const oddMessage = `100% of "café" budget, used: ÿ 💸 %41`;

function checkRequest(sessionId: string) {
  return create(CheckRequestSchema, { sessionId, action: { type: "payment" } });
}

describe("createGrpcJsService: one implementation on both stacks", { timeout: 20_000 }, () => {
  let stacks: Stacks;
  const observed: Observed[] = [];
  let started = deferred();
  const startedHook = { notify: () => started.resolve() };
  const kept: HandlerContext[] = [];

  before(async () => {
    const mounted: MountedService[] = [mountService(PolicyService, createFakePolicyService(observed, startedHook, kept))];
    stacks = await startStacks(mounted);
  });
  after(() => stacks.close());

  test("unary: request headers in, response, headers and trailers out, over every connect-es transport", async () => {
    for (const { name, transport } of connectTransports(stacks)) {
      const client = createClient(PolicyService, transport);
      let header: Headers | undefined;
      let trailer: Headers | undefined;
      const res = await client.check(checkRequest("ok"), {
        headers: { "x-request-id": "r-1" },
        onHeader: (h) => (header = h),
        onTrailer: (t) => (trailer = t),
      });
      assert.equal(res.actionId, "ok:r-1", name);
      assert.equal(res.decision?.outcome, Outcome.ALLOW, name);
      assert.match(res.decision!.message, /^(grpc|grpc-web|connect) Check warden\.v1\.PolicyService$/, name);
      assert.equal(header?.get("x-served-by"), "fake", name);
      assert.equal(trailer?.get("x-trailer"), "done", name);
    }
  });

  test("unary: a plain grpc-js client gets the same answer from both servers", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = grpcJsClient(PolicyService, grpcAddress);
      try {
        const md = new grpc.Metadata();
        md.set("x-request-id", "r-2");
        const { response, header, status } = await grpcJsUnary<{ actionId: string; decision?: { message: string } }>(client, "check", checkRequest("ok"), { metadata: md });
        assert.equal(response.actionId, "ok:r-2", name);
        assert.equal(response.decision?.message, "grpc Check warden.v1.PolicyService", name);
        assert.deepEqual(header.get("x-served-by"), ["fake"], name);
        assert.deepEqual(status.metadata.get("x-trailer"), ["done"], name);
      } finally {
        client.close();
      }
    }
  });

  test("a ConnectError maps to the same gRPC status and message everywhere", async () => {
    const cases: [string, Code, string][] = [
      ["notfound", Code.NotFound, "session notfound does not exist"],
      ["odd", Code.FailedPrecondition, oddMessage],
    ];
    for (const [sessionId, code, message] of cases) {
      for (const { name, transport } of connectTransports(stacks)) {
        await assert.rejects(createClient(PolicyService, transport).check(checkRequest(sessionId)), (e: unknown) => {
          const err = ConnectError.from(e);
          assert.equal(err.code, code, name);
          assert.equal(err.rawMessage, message, name);
          return true;
        });
      }
      for (const { name, grpcAddress } of stackUrls(stacks)) {
        const client = grpcJsClient(PolicyService, grpcAddress);
        try {
          await assert.rejects(grpcJsUnary(client, "check", checkRequest(sessionId)), (e: grpc.ServiceError) => {
            assert.equal(e.code, code as number, name);
            assert.equal(e.details, message, name);
            return true;
          });
        } finally {
          client.close();
        }
      }
    }
  });

  test("any other error is INTERNAL with a generic message on both stacks, and reaches onError", async () => {
    stacks.reported.length = 0;
    const transports = connectTransports(stacks);
    for (const { name, transport } of transports) {
      await assert.rejects(createClient(PolicyService, transport).check(checkRequest("boom")), (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.Internal, name);
        assert.equal(err.rawMessage, "internal error", name);
        return true;
      });
    }
    const client = grpcJsClient(PolicyService, stacks.grpcAddress);
    try {
      await assert.rejects(grpcJsUnary(client, "check", checkRequest("boom")), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.INTERNAL);
        assert.equal(e.details, "internal error");
        assert.doesNotMatch(JSON.stringify(e.metadata.toJSON()), /hunter2/);
        return true;
      });
    } finally {
      client.close();
    }
    assert.equal(stacks.reported.length, transports.length + 1);
    for (const r of stacks.reported) {
      assert.equal(r.procedure, "/warden.v1.PolicyService/Check");
      assert.match((r.reason as Error).message, /hunter2/, "the log gets the real cause");
    }
  });

  test("a method the implementation leaves out is UNIMPLEMENTED on both stacks", async () => {
    const messages = new Set<string>();
    for (const { name, transport } of connectTransports(stacks)) {
      await assert.rejects(createClient(PolicyService, transport).listActions({ sessionId: "s" }), (e: unknown) => {
        const err = ConnectError.from(e);
        assert.equal(err.code, Code.Unimplemented, name);
        messages.add(err.rawMessage);
        return true;
      });
    }
    assert.deepEqual([...messages], ["warden.v1.PolicyService.ListActions is not implemented"]);
  });

  test("the client's deadline reaches ctx.timeoutMs and aborts ctx.signal with DEADLINE_EXCEEDED", async () => {
    // A raw HTTP/2 client that sends grpc-timeout but never cancels, so it
    // is the server's own deadline that fires.
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      observed.length = 0;
      const trailers = await rawGrpcCall(grpcAddress, "/warden.v1.PolicyService/Check", toBinary(CheckRequestSchema, checkRequest("wait")), "200m");
      assert.equal(trailers["grpc-status"], String(grpc.status.DEADLINE_EXCEEDED), name);
      assert.equal(observed.length, 1, name);
      const { timeoutMs, reason } = observed[0]!;
      assert.ok(timeoutMs !== undefined && timeoutMs > 0 && timeoutMs <= 200, `${name}: timeoutMs ${timeoutMs}`);
      assert.equal(ConnectError.from(reason).code, Code.DeadlineExceeded, name);
    }
  });

  test("a grpc-js client's deadline ends the call with DEADLINE_EXCEEDED and aborts the handler", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      observed.length = 0;
      const client = grpcJsClient(PolicyService, grpcAddress);
      try {
        await assert.rejects(grpcJsUnary(client, "check", checkRequest("wait"), { deadline: Date.now() + 200 }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
        // The client gives up at its deadline, and may do so a moment before
        // the server's timer: the handler sees either reason, but it does see one.
        await waitFor(() => observed.length === 1);
        assert.ok([Code.DeadlineExceeded, Code.Canceled].includes(ConnectError.from(observed[0]!.reason).code), name);
        assert.ok(observed[0]!.timeoutMs! <= 200, name);
      } finally {
        client.close();
      }
    }
  });

  test("a signal first read after the call completed is already aborted, with the completion as its reason", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      kept.length = 0;
      const client = grpcJsClient(PolicyService, grpcAddress);
      try {
        await grpcJsUnary(client, "check", checkRequest("keep"));
        assert.equal(kept.length, 1, name);
        assert.equal(kept[0]!.signal.aborted, true, name);
        assert.equal(ConnectError.from(kept[0]!.signal.reason).code, Code.Canceled, name);
      } finally {
        client.close();
      }
    }
  });

  test("cancelling the call aborts ctx.signal with CANCELED", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      observed.length = 0;
      started = deferred();
      const client = grpcJsClient(PolicyService, grpcAddress);
      try {
        let call: grpc.ClientUnaryCall | undefined;
        const result = grpcJsUnary(client, "check", checkRequest("wait"), { onCall: (c) => (call = c) });
        await started.promise;
        call!.cancel();
        await assert.rejects(result, (e: grpc.ServiceError) => e.code === grpc.status.CANCELLED);
        await waitFor(() => observed.length === 1);
        assert.equal(observed[0]!.timeoutMs, undefined, name);
        assert.equal(ConnectError.from(observed[0]!.reason).code, Code.Canceled, name);
      } finally {
        client.close();
      }
    }
  });
});

/** Polls a condition the server side will make true shortly (no fixed sleeps). */
async function waitFor(condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** One gRPC call over a bare HTTP/2 stream; resolves with the trailers. */
async function rawGrpcCall(address: string, path: string, message: Uint8Array, timeout: string): Promise<http2.IncomingHttpHeaders> {
  const session = http2.connect(`http://${address}`);
  try {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", "grpc-timeout": timeout });
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    frame.set(message, 5);
    stream.end(frame);
    stream.resume();
    return await new Promise((resolve, reject) => {
      stream.once("trailers", resolve);
      // A trailers-only response carries the status in the headers.
      stream.once("response", (headers) => {
        if (headers["grpc-status"] !== undefined) resolve(headers);
      });
      stream.once("error", reject);
    });
  } finally {
    session.close();
  }
}
