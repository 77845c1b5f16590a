import * as grpc from "@grpc/grpc-js";

/** Result of one load run. */
export interface LoadResult {
  readonly requests: number;
  readonly errors: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Responses, for checks of what was decided. */
  readonly responses: Buffer[];
}

/** Options of {@link runGrpcLoad}. */
export interface LoadOptions {
  readonly address: string;
  /** Full method path, e.g. "/warden.v1.PolicyService/Check". */
  readonly path: string;
  /** Serialized request for call number i. */
  readonly request: (i: number) => Buffer;
  readonly total: number;
  /** Calls in flight at once. */
  readonly concurrency: number;
  /** HTTP/2 connections to spread the calls over. */
  readonly connections: number;
  /** Keep responses (costs memory). */
  readonly keepResponses?: boolean;
}

const identity = (b: Buffer) => b;

/**
 * Drives a gRPC unary method with a fixed number of requests and a fixed
 * number in flight, over several connections, and reports throughput and
 * latency percentiles. Requests are pre-serialized bytes, so the client
 * spends as little CPU as possible on the same two cores as the server, and
 * every target is measured with the same client.
 */
export async function runGrpcLoad(o: LoadOptions): Promise<LoadResult> {
  const clients = Array.from(
    { length: o.connections },
    // A distinct channel option forces a separate connection per client.
    (_, i) => new grpc.Client(o.address, grpc.credentials.createInsecure(), { "grpc.bench_channel": i } as grpc.ChannelOptions),
  );
  await Promise.all(clients.map((c) => new Promise<void>((res, rej) => c.waitForReady(Date.now() + 5000, (e) => (e ? rej(e) : res())))));
  const latencies = new Float64Array(o.total);
  const responses: Buffer[] = [];
  let next = 0;
  let errors = 0;
  const start = process.hrtime.bigint();
  const worker = async (w: number) => {
    const client = clients[w % clients.length]!;
    while (next < o.total) {
      const i = next++;
      const t0 = process.hrtime.bigint();
      await new Promise<void>((resolve) => {
        client.makeUnaryRequest(o.path, identity, identity, o.request(i), (err, res) => {
          latencies[i] = Number(process.hrtime.bigint() - t0) / 1e6;
          if (err) errors++;
          else if (o.keepResponses && res) responses.push(res);
          resolve();
        });
      });
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, (_, w) => worker(w)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  for (const c of clients) c.close();
  const sorted = latencies.slice().sort();
  return {
    requests: o.total,
    errors,
    seconds,
    perSecond: o.total / seconds,
    p50Ms: sorted[Math.floor(o.total * 0.5)]!,
    p99Ms: sorted[Math.floor(o.total * 0.99)]!,
    responses,
  };
}
