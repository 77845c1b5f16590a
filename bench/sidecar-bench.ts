/**
 * `npm run bench:sidecar`: the sidecar, in one run, against a control plane
 * on the local PostgreSQL, every process on loopback:
 *
 *   1. Check over gRPC on a warm cache: a sidecar in lease mode (also with
 *      a new idempotency key on every call, which the sidecar first claims
 *      in the store), a sidecar in exact mode (every decision through
 *      the control plane) and a
 *      no-op @grpc/grpc-js server, closed loop (--optimize-for speed), and
 *      lease mode again as deploy/ runs it (what its memory settings cost); then lease mode and no-op
 *      open loop at half of lease mode's maximum, for latency at a load
 *      with headroom, with how busy the cores were meanwhile and how long
 *      the server was ready to run but waiting for one (latency on shared
 *      cores is mostly that). Afterwards the books are checked: what was
 *      allowed equals what the store committed.
 *   2. Revocation propagation across 20 sidecars: time from the revoke
 *      call until the change is in each sidecar's cache (then each is
 *      asked, and none may allow the session).
 *   3. Time from process start to ready (gRPC health SERVING), for the
 *      compiled build (what the image runs) and for tsx (development).
 *   4. Sidecar RSS with 100,000 cached sessions, as deploy/ runs the
 *      sidecar (its NODE_OPTIONS and --optimize-for) and with the other
 *      --optimize-for: right after the fill, and after 10 s idle.
 *
 * Warden runs from the compiled build (npm run build), as in the image.
 *
 * Env: BENCH_REQUESTS (default 20000), BENCH_CONCURRENCY (64),
 * BENCH_CONNECTIONS (4), BENCH_SIDECARS (20), BENCH_REVOCATIONS (10),
 * BENCH_CACHED_SESSIONS (100000), BENCH_WARMUP (10000), WARDEN_TEST_DATABASE_URL
 * (PostgreSQL).
 * Everything is bounded: fixed request counts, then the processes stop.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createAuth } from "../src/auth/create-auth.js";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/grpc/health/v1/health_pb.js";
import { Outcome } from "../src/gen/warden/v1/decision_pb.js";
import { CheckResponseSchema, PolicyService } from "../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../src/gen/warden/v1/session_service_pb.js";
import { createPgDatabase } from "../src/store/pg-database.js";
import { ROLE_FLAGS } from "../src/server/role-flags.js";
import { loadManifests, wardenContainers } from "../test/deploy/load-manifests.js";
import { createPostgresDatabase } from "../test/helpers/databases.js";
import { freePort, grpcClient, type ServerProcess, startWardenProcess, storeArgs } from "../test/helpers/server-process.js";
import { AMOUNT, CHECK_PATH, encodeCheck, printTable, rampOf, startBaseline, warmUntilSteady } from "./bench-helpers.js";
import { type LoadResult, runGrpcLoad, runGrpcLoadInChild } from "./grpc-load.js";
import { type Contention, type CpuGroups, cpuCells, measureContention, measureCpu, pidsNamed } from "./process-cpu.js";

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 20_000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 4);
const SIDECARS = Number(process.env.BENCH_SIDECARS ?? 20);
const REVOCATIONS = Number(process.env.BENCH_REVOCATIONS ?? 10);
const CACHED = Number(process.env.BENCH_CACHED_SESSIONS ?? 100_000);
/** Calls per warm-up round (bench-helpers.ts, warmUntilSteady); exact mode, ~7 times slower, gets a fifth. */
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10_000);
/** Starts timed per build: on this machine one start varies by ±50 ms, so the median wants more than a handful. */
const START_RUNS = 9;
const ROOT = join(import.meta.dirname, "..");
const AGENT = "bench-agent";
/**
 * The sidecar as deploy/ runs it, read from the manifest so the benchmark
 * measures what is deployed: its NODE_OPTIONS (a small young generation and
 * a capped old one) and its --optimize-for (the flag's default unless the
 * manifest sets WARDEN_OPTIMIZE_FOR).
 */
const DEPLOYED = (() => {
  const sidecar = wardenContainers(loadManifests(), "serve").find((w) => w.role === "sidecar");
  const nodeFlags = sidecar?.env.NODE_OPTIONS?.split(" ").filter(Boolean);
  if (nodeFlags === undefined || nodeFlags.length === 0) throw new Error("deploy/: no sidecar container with NODE_OPTIONS");
  const optimizeFor = sidecar!.env.WARDEN_OPTIMIZE_FOR ?? ROLE_FLAGS.sidecar.find((f) => f.name === "optimize-for")!.default!;
  return { nodeFlags, optimizeFor, label: `deploy/ NODE_OPTIONS, --optimize-for ${optimizeFor}` };
})();
/** The other --optimize-for, to show what the deployed one buys and costs. */
const OTHER_GOAL = DEPLOYED.optimizeFor === "memory" ? "speed" : "memory";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

/** A session and its agent's `authorization` header (its session token). */
interface BenchSession {
  readonly id: string;
  readonly auth: Record<string, string>;
}

function load(address: string, sessions: BenchSession[], o: { total?: number; rate?: number; keep?: boolean } = {}): Promise<LoadResult> {
  const encoded = sessions.map((s) => encodeCheck(s.id));
  if (o.rate !== undefined) {
    // Open loop, for latency: the load generator in a lean process of its
    // own, its first second of calls not measured (it starts cold).
    return runGrpcLoadInChild({
      address,
      path: CHECK_PATH,
      requests: encoded.map((b) => b.toString("base64")),
      headers: sessions.map((s) => s.auth),
      total: o.total ?? REQUESTS,
      warmupCalls: Math.round(o.rate),
      concurrency: CONCURRENCY,
      connections: CONNECTIONS,
      keepResponses: o.keep,
      ratePerSecond: o.rate,
    });
  }
  return runGrpcLoad({
    address,
    path: CHECK_PATH,
    request: (i) => encoded[i % encoded.length]!,
    headers: (i) => sessions[i % sessions.length]!.auth,
    total: o.total ?? REQUESTS,
    concurrency: CONCURRENCY,
    connections: CONNECTIONS,
    keepResponses: o.keep,
    ratePerSecond: o.rate,
  });
}

/**
 * Closed loop on one session, every call with an idempotency key never used
 * before: what a sidecar pays to claim the key in the store (there is no
 * first answer yet) before deciding.
 */
let keysUsed = 0;
function loadKeyed(address: string, session: BenchSession, total: number): Promise<LoadResult> {
  const batch = ++keysUsed;
  return runGrpcLoad({
    address,
    path: CHECK_PATH,
    request: (i) => encodeCheck(session.id, "bench", `bench-${batch}-${i}`),
    headers: () => session.auth,
    total,
    concurrency: CONCURRENCY,
    connections: CONNECTIONS,
    keepResponses: true,
  });
}

const allowedOf = (r: LoadResult) => r.responses.filter((b) => fromBinary(CheckResponseSchema, b).decision?.outcome === Outcome.ALLOW).length;

let tokenFile = "";

function sidecarArgs(cpUrl: string, extra: string[] = []): string[] {
  return ["--control-plane", cpUrl, "--agent-id", AGENT, "--control-plane-token-file", tokenFile, ...extra];
}

async function main(): Promise<void> {
  const pgdb = await createPostgresDatabase();
  const db = createPgDatabase({ connectionString: pgdb.url });
  const cpPort = await freePort();
  const cpUrl = `http://127.0.0.1:${cpPort}`;
  // Every Warden process runs the compiled build, as the image does.
  const built = spawnSync("npm", ["run", "-s", "build"], { cwd: ROOT, stdio: "inherit" });
  if (built.status !== 0) throw new Error("npm run build failed");
  const cp = await startWardenProcess("control-plane", [...storeArgs({ databaseUrl: pgdb.url }), "--grpc-listen", `127.0.0.1:${cpPort}`], [], "compiled");
  // Credentials as `warden keys bootstrap` makes them: an admin key for
  // this script, an agent key in a file for the sidecars.
  const auth = await createAuth({ db });
  const adminKey = (await auth.apiKeys.create({ role: "admin" })).secret;
  tokenFile = join(mkdtempSync(join(tmpdir(), "warden-bench-")), "token");
  writeFileSync(tokenFile, (await auth.apiKeys.create({ role: "agent", agentId: AGENT })).secret);
  const admin = createClient(
    SessionService,
    createGrpcTransport({
      baseUrl: cpUrl,
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${adminKey}`);
          return next(req);
        },
      ],
    }),
  );
  const mk = async (policy: Record<string, unknown> = {}): Promise<BenchSession> => {
    const res = await admin.createSession({
      agentId: AGENT,
      policy: { currencyCode: "USD", daily: { maxValueMicros: AMOUNT * 1_000_000_000n }, ...policy },
      expiration: { case: "ttl", value: durationFromMs(3_600_000) },
    });
    return { id: res.session!.sessionId, auth: { authorization: `Bearer ${res.sessionToken}` } };
  };
  const procs: ServerProcess[] = [];
  try {
    console.log(`# Sidecar: Check over gRPC, ${REQUESTS} requests per scenario, ${CONCURRENCY} in flight over ${CONNECTIONS} connections\n`);
    const rows: { target: string; scenario: string; r: LoadResult; books: string; cpu?: Record<string, number> | undefined }[] = [];
    // Closed-loop runs also measure each process's CPU: every process here
    // shares this machine's cores, the control plane and PostgreSQL storing
    // the sidecar's records included.
    const measured = async (server: ChildProcess, run: () => Promise<LoadResult>) => {
      const { value, cpuMs } = await measureCpu(
        { server: () => [server.pid!], "control plane": () => [cp.proc.pid!], PostgreSQL: () => pidsNamed("postgres"), "load generator": () => [process.pid] },
        run,
      );
      return { r: value, cpu: cpuMs };
    };
    // Warm-up rounds of the sidecars are real decisions: what they allowed
    // counts in the books below.
    let warmAllowed = 0;
    const warm = async (label: string, round: () => Promise<LoadResult>) => {
      const rounds = await warmUntilSteady(round);
      for (const r of rounds) warmAllowed += allowedOf(r);
      console.log(`warm-up, ${label}: ${rampOf(rounds)}`);
    };
    const noop = await startBaseline("noop");
    let noopMax: LoadResult;
    try {
      await warm("no-op", () => load(noop.address, [{ id: "warmup", auth: {} }], { total: WARMUP }));
      const m = await measured(noop.proc, () => load(noop.address, [{ id: "s", auth: {} }]));
      noopMax = m.r;
      rows.push({ target: "no-op @grpc/grpc-js", scenario: "max", ...m, books: "n/a" });
    } finally {
      noop.proc.kill("SIGTERM");
    }

    // Node's and V8's defaults: the fastest a sidecar decides here.
    const lease = await startWardenProcess("sidecar", sidecarArgs(cpUrl, ["--optimize-for", "speed"]), [], "compiled");
    const exact = await startWardenProcess("sidecar", sidecarArgs(cpUrl, ["--decision-mode", "exact", "--optimize-for", "speed"]), [], "compiled");
    procs.push(lease, exact);
    const hot = await mk();
    const spread = await Promise.all(Array.from({ length: 1000 }, () => mk()));
    // Caches filled and leases granted, then each scenario warmed until steady.
    warmAllowed += allowedOf(await load(lease.grpcAddress, [hot, ...spread], { total: 4000, keep: true }));
    await warm("lease mode, 1 hot session", () => load(lease.grpcAddress, [hot], { total: WARMUP, keep: true }));
    const hotRun = await measured(lease.proc, () => load(lease.grpcAddress, [hot], { keep: true }));
    const leaseHot = hotRun.r;
    rows.push({ target: "sidecar, lease mode", scenario: "1 hot session, max", ...hotRun, books: "" });
    await warm("lease mode, 1000 sessions", () => load(lease.grpcAddress, spread, { total: WARMUP, keep: true }));
    const spreadRun = await measured(lease.proc, () => load(lease.grpcAddress, spread, { keep: true }));
    const leaseSpread = spreadRun.r;
    rows.push({ target: "sidecar, lease mode", scenario: "1000 sessions, max", ...spreadRun, books: "" });
    await warm("exact mode, 1 hot session", () => load(exact.grpcAddress, [hot], { total: WARMUP / 5, keep: true }));
    const exactRun = await measured(exact.proc, () => load(exact.grpcAddress, [hot], { total: Math.min(REQUESTS, 5000), keep: true }));
    const exactHot = exactRun.r;
    rows.push({ target: "sidecar, exact mode", scenario: "1 hot session, max", ...exactRun, books: "" });
    await warm("lease mode, a new idempotency key per call", () => loadKeyed(lease.grpcAddress, hot, WARMUP / 5));
    const keyedRun = await measured(lease.proc, () => loadKeyed(lease.grpcAddress, hot, Math.min(REQUESTS, 10_000)));
    const leaseKeyed = keyedRun.r;
    rows.push({ target: "sidecar, lease mode", scenario: "1 hot session, a new idempotency key per call, max", ...keyedRun, books: "" });
    // The same as deployed (the RSS below is measured that way): what its
    // memory settings cost in speed.
    const leaseDeploy = await startWardenProcess("sidecar", sidecarArgs(cpUrl, ["--optimize-for", DEPLOYED.optimizeFor]), DEPLOYED.nodeFlags, "compiled");
    procs.push(leaseDeploy);
    await warm(`lease mode, ${DEPLOYED.label}`, () => load(leaseDeploy.grpcAddress, [hot], { total: WARMUP, keep: true }));
    const deployRun = await measured(leaseDeploy.proc, () => load(leaseDeploy.grpcAddress, [hot], { keep: true }));
    const leaseDeployHot = deployRun.r;
    rows.push({ target: `sidecar, lease mode, ${DEPLOYED.label}`, scenario: "1 hot session, max", ...deployRun, books: "" });
    const half = Math.round(leaseHot.perSecond / 2);
    // Open loop, and what the CPU was doing meanwhile (see the table below).
    const halfRows: { target: string; r: LoadResult; contention: Contention | undefined; cpu: Record<string, number> | undefined }[] = [];
    // Whose CPU it was: at a fixed rate calls arrive one by one, and each
    // pays for its own wake-ups and writes, so a decision costs more than
    // in the closed loop. The rest of the machine is the load generator's
    // process and anything else that ran.
    const halfGroups = (server: ChildProcess): CpuGroups => ({
      server: () => [server.pid!],
      "control plane": () => [cp.proc.pid!],
      PostgreSQL: () => pidsNamed("postgres"),
      "other sidecars": () => [lease, exact, leaseDeploy].map((p) => p.proc.pid!).filter((pid) => pid !== server.pid),
    });
    const openLoop = async (server: ChildProcess, run: () => Promise<LoadResult>) => {
      const { value, cpuMs } = await measureCpu(halfGroups(server), () => measureContention(server.pid!, run));
      return { r: value.value, contention: value.contention, cpu: cpuMs };
    };
    const leaseHalfRun = await openLoop(lease.proc, () => load(lease.grpcAddress, [hot], { rate: half, keep: true }));
    const leaseHalf = leaseHalfRun.r;
    rows.push({ target: "sidecar, lease mode", scenario: `1 hot session, ${half}/s (half of max)`, r: leaseHalf, books: "" });
    halfRows.push({ target: "sidecar, lease mode", ...leaseHalfRun });
    const noop2 = await startBaseline("noop");
    try {
      await warm("no-op, for half load", () => load(noop2.address, [{ id: "warmup", auth: {} }], { total: WARMUP }));
      const noopHalf = await openLoop(noop2.proc, () => load(noop2.address, [{ id: "s", auth: {} }], { rate: half }));
      rows.push({ target: "no-op @grpc/grpc-js", scenario: `${half}/s`, r: noopHalf.r, books: "n/a" });
      halfRows.push({ target: "no-op @grpc/grpc-js", ...noopHalf });
    } finally {
      noop2.proc.kill("SIGTERM");
    }

    // The books: stop both sidecars (leases released, records flushed),
    // then what the store committed must be exactly what was allowed.
    await lease.stop();
    await exact.stop();
    await leaseDeploy.stop();
    procs.length = 0;
    const allowed = [leaseHot, leaseSpread, exactHot, leaseKeyed, leaseDeployHot, leaseHalf].reduce((n, r) => n + allowedOf(r), 0);
    const { rows: c } = await db.query<{ v: string }>(
      "SELECT coalesce(sum(lifetime_committed_value), 0) AS v FROM scope_usage WHERE scope_key LIKE 's:%'",
    );
    const { rows: open } = await db.query<{ n: string }>("SELECT count(*) AS n FROM leases WHERE status = 1");
    const committedCalls = Number(BigInt(c[0]!.v) / AMOUNT);
    const books =
      committedCalls === allowed + warmAllowed && open[0]!.n === "0"
        ? `ok: ${allowed} allowed (+${warmAllowed} warm-up) = ${committedCalls} committed, 0 leases open`
        : `MISMATCH: ${allowed}+${warmAllowed} allowed, ${committedCalls} committed, ${open[0]!.n} leases open`;
    for (const row of rows) if (row.books === "") row.books = books;
    printTable(
      ["target", "scenario", "decisions/s", "p50 ms", "p99 ms", "vs no-op max", "errors", "books"],
      rows.map((x) => [
        x.target,
        x.scenario,
        x.r.perSecond.toFixed(0),
        x.r.p50Ms.toFixed(2),
        x.r.p99Ms.toFixed(2),
        `${((x.r.perSecond / noopMax.perSecond) * 100).toFixed(1)}%`,
        String(x.r.errors),
        x.books,
      ]),
    );
    if (books.startsWith("MISMATCH")) process.exitCode = 1;
    const cpuLabels = ["server", "control plane", "PostgreSQL", "load generator"];
    console.log("\n# CPU per decision, by process (µs), in the closed-loop runs above; all share this machine's cores\n");
    printTable(
      ["target", "scenario", "decisions/s", "server (sidecar or no-op)", "control plane", "PostgreSQL", "load generator", "all"],
      rows.filter((x) => x.cpu !== undefined).map((x) => [x.target, x.scenario, x.r.perSecond.toFixed(0), ...cpuCells(x.cpu, x.r.requests, cpuLabels)]),
    );
    console.log(`\n# At ${half}/s (half of lease mode's max), open loop: how busy the machine's cores were, and how long the server was ready to run but waiting for one\n`);
    const pctCell = (v: number | undefined) => (v === undefined ? "n/a" : `${v.toFixed(1)}%`);
    printTable(
      ["target", "decisions/s", "p50 ms", "p99 ms", "machine busy", "server main thread waiting for a CPU"],
      halfRows.map((x) => [
        x.target,
        x.r.perSecond.toFixed(0),
        x.r.p50Ms.toFixed(2),
        x.r.p99Ms.toFixed(2),
        pctCell(x.contention?.machineBusyPct),
        pctCell(x.contention?.waitingPct),
      ]),
    );
    console.log(`\n# CPU per decision, by process (µs), in those open-loop runs\n`);
    const halfLabels = ["server", "control plane", "PostgreSQL", "other sidecars"];
    printTable(
      ["target", "decisions/s", "server", "control plane", "PostgreSQL", "other sidecars", "rest of the machine", "all"],
      halfRows.map((x) => {
        const cells = cpuCells(x.cpu, x.r.requests, halfLabels);
        // Busy share of every core for the run's length, less the processes above.
        const machineUs = x.contention === undefined ? undefined : (x.contention.machineBusyPct / 100) * availableParallelism() * x.r.seconds * 1e6 / x.r.requests;
        const namedUs = x.cpu === undefined ? undefined : halfLabels.reduce((sum, l) => sum + ((x.cpu![l] ?? 0) * 1000) / x.r.requests, 0);
        const rest = machineUs === undefined || namedUs === undefined ? "n/a" : Math.max(0, machineUs - namedUs).toFixed(0);
        return [x.target, x.r.perSecond.toFixed(0), ...cells.slice(0, -1), rest, machineUs === undefined ? "n/a" : machineUs.toFixed(0)];
      }),
    );

    // ---- 2. revocation across SIDECARS sidecars ----
    // Each sidecar logs (at debug level) the moment a change reaches its
    // cache; from then on it refuses the session. The time is that log
    // line's, against the clock read just before the revoke call: one
    // machine, one clock. No polling load distorts it.
    console.log(`\n# Revocation: ${SIDECARS} sidecars, ${REVOCATIONS} revocations, time until each sidecar's cache has it\n`);
    const fleet = await Promise.all(Array.from({ length: SIDECARS }, () => startWardenProcess("sidecar", sidecarArgs(cpUrl, ["--log-level", "debug"]), [], "compiled")));
    procs.push(...fleet);
    const clients = fleet.map((s) => grpcClient(PolicyService, s.grpcAddress));
    const samples: number[] = [];
    let stillAllowed = 0;
    for (let t = 0; t < REVOCATIONS; t++) {
      const s = await mk();
      const check = { sessionId: s.id, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: AMOUNT } } };
      for (const cl of clients) await cl.check(check, {}, s.auth);
      const t0 = Date.now();
      await admin.revokeSession({ sessionId: s.id, reason: "bench" });
      const times = await Promise.all(
        fleet.map(async (proc) => {
          const end = Date.now() + 10_000;
          for (;;) {
            const line = proc.logs.find((l) => l.msg === "session changed" && l.sessionId === s.id);
            // pino writes ISO times here (see src/server/logger.ts).
            if (line !== undefined) return Date.parse(line.time as string) - t0;
            if (Date.now() > end) throw new Error("a sidecar never saw the revocation");
            await sleep(5);
          }
        }),
      );
      samples.push(...times);
      // And then none of them allows it.
      for (const cl of clients) {
        const allowed = await cl.check(check, {}, s.auth).then((r: { decision: { outcome: number } }) => r.decision.outcome === Outcome.ALLOW, () => false);
        if (allowed) stillAllowed++;
      }
    }
    for (const cl of clients) cl.close();
    await Promise.all(fleet.map((s) => s.stop()));
    procs.length = 0;
    samples.sort((a, b) => a - b);
    printTable(
      ["sidecars", "revocations", "samples", "p50 ms", "p99 ms", "max ms", "allowed after"],
      [[String(SIDECARS), String(REVOCATIONS), String(samples.length), pct(samples, 0.5).toFixed(0), pct(samples, 0.99).toFixed(0), samples.at(-1)!.toFixed(0), String(stillAllowed)]],
    );
    if (stillAllowed > 0) process.exitCode = 1;

    // ---- 3. start to ready ----
    // Before the memory run: filling 100,000 sessions leaves the control
    // plane and PostgreSQL busy storing their records for a while, and a
    // starting sidecar syncs from that control plane.
    console.log(`\n# Start to ready: process spawn until gRPC health says SERVING (${START_RUNS} runs each)\n`);
    const startRows: string[][] = [];
    for (const [label, args] of [
      ["compiled (node dist/cli/main.js)", [join(ROOT, "dist/cli/main.js")]],
      ["development (node --import tsx)", ["--import", "tsx", join(ROOT, "src/cli/main.ts")]],
    ] as const) {
      const times: number[] = [];
      for (let i = 0; i < START_RUNS; i++) times.push(await startToReady([...args], cpUrl));
      times.sort((a, b) => a - b);
      startRows.push([label, pct(times, 0.5).toFixed(0), times.at(-1)!.toFixed(0)]);
    }
    printTable(["sidecar", "median ms", "max ms"], startRows);

    // ---- 4. RSS with CACHED sessions ----
    console.log(`\n# Memory: one sidecar holding ${CACHED} cached sessions\n`);
    // The sessions are written straight into the store (setup, not
    // measured), as copies of one made through the API; each has a blocked
    // merchant, so a Check to it is decided in the sidecar after one fetch.
    const template = await mk({ blockedMerchants: ["blocked"] });
    await db.query(
      `INSERT INTO sessions (session_id, agent_id, ancestor_ids, owner, description, labels, policy, status, create_time, update_time,
                             expire_time, last_activity_time)
       SELECT 'mem_' || g, agent_id, ancestor_ids, owner, description, labels, policy, status, create_time, update_time, expire_time, last_activity_time
         FROM sessions, generate_series(1, $2::int) g WHERE session_id = $1`,
      [template.id, CACHED],
    );
    const ids = Array.from({ length: CACHED }, (_, i) => `mem_${i + 1}`);
    const blocked = ids.map((id) => encodeCheck(id, "blocked"));
    const tokens = await Promise.all(ids.map(async (id) => `Bearer ${(await auth.issuer.issue({ sessionId: id, agentId: AGENT })).token}`));
    const rssOf = (p: ChildProcess) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, "utf8"))![1]) / 1024;
    const memRows: string[][] = [];
    // As deployed, then with the other --optimize-for (same NODE_OPTIONS).
    for (const goal of [DEPLOYED.optimizeFor, OTHER_GOAL]) {
      const mem = await startWardenProcess(
        "sidecar",
        sidecarArgs(cpUrl, ["--cache-max-sessions", String(CACHED), "--optimize-for", goal]),
        DEPLOYED.nodeFlags,
        "compiled",
      );
      procs.push(mem);
      const before = rssOf(mem.proc);
      const fill = await runGrpcLoad({
        address: mem.grpcAddress,
        path: CHECK_PATH,
        request: (i) => blocked[i]!,
        headers: (i) => ({ authorization: tokens[i]! }),
        total: CACHED,
        concurrency: CONCURRENCY,
        connections: CONNECTIONS,
      });
      // Let the queued records go to the store and the garbage be collected.
      await sleep(2000);
      const after = rssOf(mem.proc);
      // Then idle: V8's memory reducer starts after 8 s without much allocation.
      await sleep(10_000);
      const idle = rssOf(mem.proc);
      await mem.stop();
      procs.length = 0;
      memRows.push([
        goal === DEPLOYED.optimizeFor ? `as deployed (${DEPLOYED.label})` : `deploy/ NODE_OPTIONS, --optimize-for ${goal}`,
        String(CACHED),
        before.toFixed(0),
        after.toFixed(0),
        idle.toFixed(0),
        fill.perSecond.toFixed(0),
        String(fill.errors),
      ]);
    }
    printTable(["sidecar", "cached sessions", "RSS before MB", "RSS after MB", "RSS 10 s idle MB", "fill rate/s", "errors"], memRows);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await cp.stop();
    await db.close();
    await pgdb.drop();
  }
}

/** Spawns a sidecar on a free port and polls its gRPC health every 2 ms until SERVING. */
async function startToReady(args: string[], cpUrl: string): Promise<number> {
  const port = await freePort();
  const t0 = performance.now();
  const proc = spawn(process.execPath, [...args, "sidecar", ...sidecarArgs(cpUrl, ["--grpc-listen", `127.0.0.1:${port}`, "--http-listen", "127.0.0.1:0"])], {
    cwd: ROOT,
    stdio: "ignore",
  });
  try {
    for (;;) {
      // A new client per try: a grpc-js channel that failed to connect
      // waits a second before trying again, which would be measured.
      const health = grpcClient(Health, `127.0.0.1:${port}`);
      const ok = await health
        .check({ service: "" }, { deadline: Date.now() + 200 })
        .then((r: { status: number }) => r.status === HealthCheckResponse_ServingStatus.SERVING, () => false);
      health.close();
      if (ok) return performance.now() - t0;
      if (performance.now() - t0 > 30_000) throw new Error("sidecar not ready in 30 s");
      await sleep(2);
    }
  } finally {
    proc.kill("SIGTERM");
    await new Promise((r) => proc.once("exit", r));
  }
}

await main();
