/**
 * `npm run bench`: Check decisions per second and latency over gRPC.
 *
 * In one run, against servers in child processes on loopback, with one
 * load generator:
 *   - warden serve on PGlite and on PostgreSQL, one hot session and 1,000
 *     sessions, each with a daily limit that admits exactly half the calls,
 *     so the run also proves there is no overspend;
 *   - a no-op @grpc/grpc-js server (the ceiling);
 *   - rate-limiter-flexible on the local Redis, one `consume` per call (what
 *     many would build instead).
 * Every figure is also given as a ratio to the no-op server. The run is
 * bounded: a fixed number of requests per scenario.
 *
 * On PostgreSQL the 1,000-session scenario runs again with more calls in
 * flight (BENCH_WIDE_CONCURRENCY): group commit's batches grow with the
 * calls waiting, so throughput depends on how many there are.
 *
 * Env: BENCH_REQUESTS (default 20000), BENCH_CONCURRENCY (64),
 * BENCH_WIDE_CONCURRENCY (256), BENCH_CONNECTIONS (4), BENCH_SESSIONS (1000),
 * BENCH_WARMUP (10000), DATABASE_URL or
 * WARDEN_TEST_DATABASE_URL for the PostgreSQL server (default the local one).
 */
import { fromBinary } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Outcome } from "../src/gen/warden/v1/decision_pb.js";
import { CheckResponseSchema } from "../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../src/gen/warden/v1/session_service_pb.js";
import { createStoreLocation, startServerProcess } from "../test/helpers/server-process.js";
import { AMOUNT, CHECK_PATH, encodeCheck, printTable, rampOf, startBaseline, warmUntilSteady } from "./bench-helpers.js";
import { type LoadResult, runGrpcLoad } from "./grpc-load.js";
import { cpuCells, measureCpu, pidsNamed } from "./process-cpu.js";

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 20_000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const WIDE_CONCURRENCY = Number(process.env.BENCH_WIDE_CONCURRENCY ?? 256);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 4);
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 1000);
/**
 * Calls per warm-up round: before each measured run, rounds of it until the
 * server is steady (bench-helpers.ts, warmUntilSteady). Warden's rounds are
 * half as long: it is 5 times slower than the baselines.
 */
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10_000);

/** Warms a target until steady and logs the ramp. */
async function warm(label: string, round: () => Promise<LoadResult>): Promise<void> {
  console.error(`  warm-up, ${label}: ${rampOf(await warmUntilSteady(round))}`);
}

interface Row {
  target: string;
  scenario: string;
  result: LoadResult;
  overspend: string;
  /** CPU ms each process used during the run (see CPU_LABELS). */
  cpu: Record<string, number> | undefined;
}

const CPU_LABELS = ["server", "PostgreSQL", "Redis", "load generator"];

/**
 * A run, with the CPU each process used meanwhile: the server, the
 * databases and this load generator share the machine's cores, so whose
 * cost limits a figure is part of the result.
 */
async function measured(serverPid: number, run: () => Promise<LoadResult>): Promise<{ result: LoadResult; cpu: Row["cpu"] }> {
  const { value, cpuMs } = await measureCpu(
    { server: () => [serverPid], PostgreSQL: () => pidsNamed("postgres"), Redis: () => pidsNamed("redis-server"), "load generator": () => [process.pid] },
    run,
  );
  return { result: value, cpu: cpuMs };
}

async function load(address: string, sessionIds: string[], total = REQUESTS, keep = false, concurrency = CONCURRENCY): Promise<LoadResult> {
  console.error(`  load ${address}: ${total} calls over ${sessionIds.length} session(s), ${concurrency} in flight`);
  const encoded = sessionIds.map((id) => encodeCheck(id));
  return runGrpcLoad({ address, path: CHECK_PATH, request: (i) => encoded[i % encoded.length]!, total, concurrency, connections: CONNECTIONS, keepResponses: keep });
}

async function benchWarden(driver: "pglite" | "postgres", rows: Row[]): Promise<void> {
  const { location, drop: cleanup } = await createStoreLocation(driver);
  const server = await startServerProcess(location);
  try {
    const sessions = createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
    const mk = async (agentId: string, allowed: number) =>
      (
        await sessions.createSession({
          agentId,
          policy: { currencyCode: "USD", daily: { maxValueMicros: AMOUNT * BigInt(allowed) } },
          expiration: { case: "ttl", value: durationFromMs(3_600_000) },
        })
      ).session!.sessionId;
    // Warm-up on sessions of its own, shaped like the measured ones but
    // with budgets the warm-up never reaches, so the measured sessions start
    // from zero and their books stay exact.
    const warmHot = await mk("hot-agent", 1_000_000);
    await warm(`warden (${driver}), 1 hot session`, () => load(server.grpcAddress, [warmHot], WARMUP / 2));
    const hot = await mk("hot-agent", REQUESTS / 2);
    const hotRun = await measured(server.proc.pid!, () => load(server.grpcAddress, [hot], REQUESTS, true));
    rows.push({ target: `warden (${driver})`, scenario: "1 hot session", ...hotRun, overspend: await overspend(sessions, [hot], hotRun.result, REQUESTS / 2) });

    const warmMany: string[] = [];
    for (let i = 0; i < SESSIONS; i++) warmMany.push(await mk(`agent-${i % 100}`, 1_000_000));
    await warm(`warden (${driver}), ${SESSIONS} sessions`, () => load(server.grpcAddress, warmMany, WARMUP / 2));
    const perSession = REQUESTS / SESSIONS;
    const many: string[] = [];
    for (let i = 0; i < SESSIONS; i++) many.push(await mk(`agent-${i % 100}`, Math.ceil(perSession / 2)));
    const spreadRun = await measured(server.proc.pid!, () => load(server.grpcAddress, many, REQUESTS, true));
    rows.push({
      target: `warden (${driver})`,
      scenario: `${SESSIONS} sessions`,
      ...spreadRun,
      overspend: await overspend(sessions, many, spreadRun.result, Math.ceil(perSession / 2)),
    });
    if (driver === "postgres" && WIDE_CONCURRENCY !== CONCURRENCY) {
      // The same scenario on fresh sessions, with more calls waiting.
      const wide: string[] = [];
      for (let i = 0; i < SESSIONS; i++) wide.push(await mk(`agent-${i % 100}`, Math.ceil(perSession / 2)));
      const wideRun = await measured(server.proc.pid!, () => load(server.grpcAddress, wide, REQUESTS, true, WIDE_CONCURRENCY));
      rows.push({
        target: `warden (${driver})`,
        scenario: `${SESSIONS} sessions, ${WIDE_CONCURRENCY} in flight`,
        ...wideRun,
        overspend: await overspend(sessions, wide, wideRun.result, Math.ceil(perSession / 2)),
      });
    }
  } finally {
    await server.stop();
    await cleanup();
  }
}

/** Checks the books after a run: allowed calls × amount = committed, never above the limit. */
async function overspend(
  sessions: ReturnType<typeof createClient<typeof SessionService>>,
  ids: string[],
  run: LoadResult,
  allowedPerSession: number,
): Promise<string> {
  const allowed = run.responses.filter((b) => fromBinary(CheckResponseSchema, b).decision?.outcome === Outcome.ALLOW).length;
  let committed = 0n;
  let over = 0;
  for (const id of ids) {
    const s = (await sessions.getSession({ sessionId: id })).session!;
    committed += s.usage!.valueCommittedMicros;
    if (s.usage!.valueCommittedMicros > AMOUNT * BigInt(allowedPerSession)) over++;
  }
  const ok = over === 0 && committed === AMOUNT * BigInt(allowed) && run.errors === 0;
  return ok ? `none (${allowed} allowed = ${committed / AMOUNT}.00 committed)` : `MISMATCH: ${over} over limit, ${allowed} allowed vs ${committed} committed, ${run.errors} errors`;
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  console.log(`# Check over gRPC: ${REQUESTS} requests per scenario, ${CONCURRENCY} in flight (unless the scenario says) over ${CONNECTIONS} connections\n`);
  const noop = await startBaseline("noop");
  try {
    await warm("no-op", () => load(noop.address, ["warmup"], WARMUP));
    rows.push({ target: "no-op @grpc/grpc-js", scenario: "ceiling", ...(await measured(noop.proc.pid!, () => load(noop.address, ["s"]))), overspend: "n/a" });
  } finally {
    noop.proc.kill("SIGTERM");
  }
  const rl = await startBaseline("ratelimiter");
  try {
    await warm("rate-limiter-flexible", () => load(rl.address, ["warmup"], WARMUP));
    rows.push({ target: "rate-limiter-flexible + Redis", scenario: "1 hot key", ...(await measured(rl.proc.pid!, () => load(rl.address, ["hot"]))), overspend: "n/a" });
    const keys = Array.from({ length: SESSIONS }, (_, i) => `k${i}`);
    rows.push({ target: "rate-limiter-flexible + Redis", scenario: `${SESSIONS} keys`, ...(await measured(rl.proc.pid!, () => load(rl.address, keys))), overspend: "n/a" });
  } finally {
    rl.proc.kill("SIGTERM");
  }
  for (const driver of ["pglite", "postgres"] as const) await benchWarden(driver, rows);

  const ceiling = rows[0]!.result.perSecond;
  const header = ["target", "scenario", "decisions/s", "p50 ms", "p99 ms", "vs no-op", "errors", "overspend"];
  const table = rows.map((r) => [
    r.target,
    r.scenario,
    r.result.perSecond.toFixed(0),
    r.result.p50Ms.toFixed(2),
    r.result.p99Ms.toFixed(2),
    `${((r.result.perSecond / ceiling) * 100).toFixed(1)}%`,
    String(r.result.errors),
    r.overspend,
  ]);
  printTable(header, table);
  console.log("\n# CPU per decision, by process (µs); all share this machine's cores (PGlite runs inside the server)\n");
  printTable(
    ["target", "scenario", "decisions/s", "server", "PostgreSQL", "Redis", "load generator", "all"],
    rows.map((r) => [r.target, r.scenario, r.result.perSecond.toFixed(0), ...cpuCells(r.cpu, r.result.requests, CPU_LABELS)]),
  );
  if (rows.some((r) => r.overspend.startsWith("MISMATCH"))) process.exitCode = 1;
}

await main();
