import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { grpcFrame, runGrpcLoad } from "../../bench/grpc-load.js";

/** How long the server below holds a call marked slow: far above any loopback call's latency. */
const SLOW_MS = 200;

/**
 * A bare gRPC endpoint on node:http2 that answers every call with an empty
 * message and grpc-status 0, holding calls whose request message is the
 * single byte 1 for SLOW_MS first.
 */
function startServer(): Promise<{ address: string; close(): Promise<void> }> {
  const server = http2.createServer();
  server.on("stream", (stream) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      const slow = Buffer.concat(chunks).subarray(5).equals(Buffer.from([1]));
      setTimeout(
        () => {
          stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
          stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
          stream.end(grpcFrame(Buffer.alloc(0)));
        },
        slow ? SLOW_MS : 0,
      );
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      }),
    ),
  );
}

describe("runGrpcLoad (the benchmarks' load generator)", () => {
  let server: Awaited<ReturnType<typeof startServer>>;
  before(async () => {
    server = await startServer();
  });
  after(() => server.close());

  // 110 calls: the first 60 answered at once, the other 50 held SLOW_MS.
  // With the 60 as warm-up, every measured call is a slow one, so even the
  // median is; counted, the fast ones are most. More workers than calls
  // held at once, so none is late for want of one.
  const run = (warmupCalls: number | undefined) =>
    runGrpcLoad({
      address: server.address,
      path: "/bench.Test/Call",
      request: (i) => Buffer.from([i < 60 ? 0 : 1]),
      total: 110 - (warmupCalls ?? 0),
      warmupCalls,
      concurrency: 256,
      connections: 4,
      ratePerSecond: 500,
    });

  test("open loop: warm-up calls are sent on the schedule but left out of the percentiles", async () => {
    const r = await run(60);
    assert.equal(r.errors, 0);
    assert.equal(r.requests, 110, "warm-up calls are counted as sent");
    assert.ok(r.p50Ms >= SLOW_MS, `p50 ${r.p50Ms} ms: a warm-up call is in the percentiles`);
  });

  test("without warm-up, every call is in the percentiles", async () => {
    const r = await run(undefined);
    assert.equal(r.errors, 0);
    assert.equal(r.requests, 110);
    assert.ok(r.p50Ms < SLOW_MS && r.p99Ms >= SLOW_MS, `p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms: not every call was counted`);
  });
});
