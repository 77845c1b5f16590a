import { spawn } from "node:child_process";
import http2 from "node:http2";
import { join } from "node:path";
import { text } from "node:stream/consumers";

/** Result of one load run. */
export interface LoadResult {
  /** Calls sent, warm-up calls included (they cost CPU and spend budget too). */
  readonly requests: number;
  readonly errors: number;
  readonly seconds: number;
  readonly perSecond: number;
  /** Over the calls after the warm-up ({@link LoadOptions.warmupCalls}). */
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Response messages (without the gRPC frame), when kept. */
  readonly responses: Buffer[];
}

/** Options of {@link runGrpcLoad}. */
export interface LoadOptions {
  /** "host:port". */
  readonly address: string;
  /** Full method path, e.g. "/warden.v1.PolicyService/Check". */
  readonly path: string;
  /** Serialized request message for call number i. */
  readonly request: (i: number) => Buffer;
  /** Extra headers of call number i (e.g. `authorization`). */
  readonly headers?: (i: number) => Record<string, string>;
  /** Calls measured (after {@link LoadOptions.warmupCalls}, if any). */
  readonly total: number;
  /** Calls in flight at once. */
  readonly concurrency: number;
  /** HTTP/2 connections to spread the calls over. */
  readonly connections: number;
  /** Keep responses (costs memory). */
  readonly keepResponses?: boolean;
  /**
   * Open loop: call i is due at start + i / rate, whatever came back, and
   * its latency counts from when it was due (so a stall shows up in the
   * percentiles instead of slowing the load: no coordinated omission).
   * Unset: closed loop, as fast as `concurrency` allows.
   */
  readonly ratePerSecond?: number;
  /**
   * Calls sent before `total`, on the same schedule, whose latencies are
   * left out of the percentiles. For an open-loop run in a fresh process:
   * its first second or so is the client's own warm-up (code not yet
   * optimized, connections new), which would count as the server's latency.
   * On the sidecar at 3,700/s, ~1,000 to 1,900 calls at the start of a run
   * were slower than 10 ms for that reason.
   */
  readonly warmupCalls?: number;
}

/** A message in gRPC's length-prefixed frame: flag byte, 4-byte length, bytes. */
export function grpcFrame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

/**
 * Drives a gRPC unary method with a fixed number of requests and a fixed
 * number in flight, over several HTTP/2 connections, and reports throughput
 * and latency percentiles.
 *
 * It speaks gRPC directly on `node:http2` with pre-framed request bytes, the
 * way h2load would, instead of through a gRPC client library: on a 2-core
 * machine the load generator shares the CPU with the server, and a full
 * client would measure itself more than the server. Every target is
 * measured with this same client. A call counts as an error unless it ends
 * with grpc-status 0.
 */
export async function runGrpcLoad(o: LoadOptions): Promise<LoadResult> {
  const sessions = await Promise.all(
    Array.from(
      { length: o.connections },
      () =>
        new Promise<http2.ClientHttp2Session>((resolve, reject) => {
          const s = http2.connect(`http://${o.address}`);
          s.once("connect", () => resolve(s));
          s.once("error", reject);
        }),
    ),
  );
  const warmup = o.warmupCalls ?? 0;
  const calls = warmup + o.total;
  const latencies = new Float64Array(calls);
  const responses: Buffer[] = [];
  let next = 0;
  let errors = 0;
  const call = (session: http2.ClientHttp2Session, body: Buffer, extra: Record<string, string> | undefined) =>
    new Promise<Buffer | undefined>((resolve) => {
      const stream = session.request({
        ":method": "POST",
        ":path": o.path,
        "content-type": "application/grpc",
        te: "trailers",
        ...extra,
      });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      stream.on("response", (headers) => {
        if (headers["grpc-status"] !== undefined) status = String(headers["grpc-status"]);
      });
      stream.on("trailers", (trailers) => {
        status = String(trailers["grpc-status"]);
      });
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("error", () => resolve(undefined));
      stream.on("close", () => {
        if (status !== "0") return resolve(undefined);
        const all = Buffer.concat(chunks);
        resolve(all.subarray(5));
      });
      stream.end(body);
    });
  const start = process.hrtime.bigint();
  const worker = async (w: number) => {
    const session = sessions[w % sessions.length]!;
    while (next < calls) {
      const i = next++;
      let t0 = process.hrtime.bigint();
      if (o.ratePerSecond !== undefined) {
        const due = start + BigInt(Math.round((i / o.ratePerSecond) * 1e9));
        const wait = Number(due - t0) / 1e6;
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        // Late: count from when it was due. Early (timers are coarse):
        // count from when it is really sent.
        const now = process.hrtime.bigint();
        t0 = due < now ? due : now;
      }
      const res = await call(session, grpcFrame(o.request(i)), o.headers?.(i));
      latencies[i] = Number(process.hrtime.bigint() - t0) / 1e6;
      if (res === undefined) errors++;
      else if (o.keepResponses) responses.push(res);
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, (_, w) => worker(w)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  for (const s of sessions) s.close();
  const sorted = latencies.slice(warmup).sort();
  return {
    requests: calls,
    errors,
    seconds,
    perSecond: calls / seconds,
    p50Ms: sorted[Math.floor(o.total * 0.5)]!,
    p99Ms: sorted[Math.floor(o.total * 0.99)]!,
    responses,
  };
}

/** What {@link runGrpcLoadInChild} sends its child: the options, with the requests and headers as lists cycled by call number. */
export interface ChildLoadSpec extends Omit<LoadOptions, "request" | "headers"> {
  /** Serialized requests, base64. */
  readonly requests: string[];
  readonly headers: Record<string, string>[];
}

/**
 * V8 flags of the load child: a 1 MB young generation and no parallel GC
 * helpers, so its own collections are short and never wait for a helper
 * thread that the busy second core has descheduled. Measured against a bare
 * node:http2 server at 2,700 calls/s on the 2-core machine, this took the
 * p99 from 15–22 ms to 6–10 ms.
 */
const CHILD_FLAGS = ["--max-semi-space-size=1", "--single-threaded-gc"];

/**
 * {@link runGrpcLoad} in a process of its own with {@link CHILD_FLAGS}, for
 * open-loop latency runs: there the load generator's own GC pauses would be
 * counted as the server's latency, and the benchmark process (with its
 * clients, pools and earlier results) pauses longer than a bare one. Closed
 * loop runs stay in process: for throughput those flags would only slow the
 * client.
 */
export async function runGrpcLoadInChild(o: ChildLoadSpec): Promise<LoadResult> {
  const child = spawn(process.execPath, [...CHILD_FLAGS, "--import", "tsx", join(import.meta.dirname, "grpc-load-child.ts")], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  child.stdin.end(JSON.stringify(o));
  const [out, code] = await Promise.all([text(child.stdout), new Promise<number | null>((r) => child.once("exit", r))]);
  if (code !== 0) throw new Error(`load child exited with ${code}`);
  const r = JSON.parse(out) as Omit<LoadResult, "responses"> & { responses: string[] };
  return { ...r, responses: r.responses.map((b) => Buffer.from(b, "base64")) };
}
