/**
 * Baseline servers for the benchmark, run as a child process so they sit
 * on the other side of a socket exactly like Warden does:
 *
 *   noop         a @grpc/grpc-js server whose Check returns an empty
 *                response: the ceiling of the transport.
 *   ratelimiter  a @grpc/grpc-js server whose Check does one
 *                rate-limiter-flexible `consume` on the local Redis: what
 *                many would build instead of Warden.
 *
 * Usage: node --import tsx bench/baseline-servers.ts noop|ratelimiter
 * Prints {"port": N} on stdout once listening; exits on SIGTERM.
 */
import * as grpc from "@grpc/grpc-js";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { Redis } from "ioredis";
import { RateLimiterRedis } from "rate-limiter-flexible";
import { CheckRequestSchema, CheckResponseSchema } from "../src/gen/warden/v1/policy_service_pb.js";
import { Outcome } from "../src/gen/warden/v1/decision_pb.js";

const kind = process.argv[2];
const identity = (b: Buffer) => b;
const server = new grpc.Server();
const empty = Buffer.from(toBinary(CheckResponseSchema, create(CheckResponseSchema)));
let handler: grpc.handleUnaryCall<Buffer, Buffer>;

if (kind === "noop") {
  handler = (_call, cb) => cb(null, empty);
} else if (kind === "ratelimiter") {
  const redis = new Redis({ host: "127.0.0.1", port: 6379, enableOfflineQueue: true });
  const limiter = new RateLimiterRedis({
    storeClient: redis,
    keyPrefix: `warden-bench-${process.pid}`,
    // Daily value budget in cents: what a hand-rolled limiter would keep.
    points: Number(process.env.BENCH_POINTS ?? 1_000_000_000),
    duration: 86_400,
  });
  const allow = Buffer.from(toBinary(CheckResponseSchema, create(CheckResponseSchema, { decision: { outcome: Outcome.ALLOW } })));
  const deny = Buffer.from(toBinary(CheckResponseSchema, create(CheckResponseSchema, { decision: { outcome: Outcome.DENY } })));
  handler = (call, cb) => {
    const req = fromBinary(CheckRequestSchema, call.request);
    const cents = Number((req.action?.amount?.amountMicros ?? 0n) / 10_000n);
    limiter.consume(req.sessionId, Math.max(1, cents)).then(
      () => cb(null, allow),
      (r: unknown) => (r instanceof Error ? cb({ code: grpc.status.UNAVAILABLE, details: r.message }) : cb(null, deny)),
    );
  };
} else {
  console.error("usage: baseline-servers.ts noop|ratelimiter");
  process.exit(2);
}

server.addService(
  {
    Check: {
      path: "/warden.v1.PolicyService/Check",
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  },
  { Check: handler },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) throw err;
  console.log(JSON.stringify({ port }));
});
process.on("SIGTERM", () => server.tryShutdown(() => process.exit(0)));
