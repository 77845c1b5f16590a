import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { create, type DescService, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import type { Interceptor } from "@connectrpc/connect";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, type ServerOptions, startServer } from "../../src/server/start-server.js";
import { type RunningSidecar, type SidecarOptions, startSidecar } from "../../src/sidecar/start-sidecar.js";
import { createPostgresDatabase, type Driver } from "./databases.js";

const ROOT = join(import.meta.dirname, "..", "..");

/** A `warden serve` child process. */
export interface ServerProcess {
  readonly grpcAddress: string;
  readonly httpUrl: string;
  readonly proc: ChildProcess;
  /** Log lines so far, parsed. */
  readonly logs: Record<string, unknown>[];
  /** What the process wrote on stderr so far. */
  stderr(): string;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
}

/** Where a server keeps its data: a PGlite directory or a PostgreSQL URL. */
export type StoreLocation = { dataDir: string } | { databaseUrl: string };

/** A loopback port free now, for a process that must come back on the same one. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** A fresh PGlite data directory. */
export function tempDataDir(): string {
  return mkdtempSync(join(tmpdir(), "warden-test-"));
}

/** A fresh, empty store of `driver` for a server process, and a way to remove it. */
export async function createStoreLocation(driver: Driver): Promise<{ location: StoreLocation; drop(): Promise<void> }> {
  if (driver === "pglite") {
    const dataDir = tempDataDir();
    return { location: { dataDir }, drop: async () => rmSync(dataDir, { recursive: true, force: true }) };
  }
  const pgdb = await createPostgresDatabase();
  return { location: { databaseUrl: pgdb.url }, drop: pgdb.drop };
}

/**
 * Starts `warden serve` exactly as a user would (the CLI entry point), on
 * free loopback ports, and resolves once it logs "listening".
 */
export async function startServerProcess(store: StoreLocation, extraArgs: string[] = []): Promise<ServerProcess> {
  return startWardenProcess("serve", [...storeArgs(store), ...extraArgs]);
}

/** Flags that point a serve or control-plane process at a store. */
export function storeArgs(store: StoreLocation): string[] {
  return ["--sweep-interval", "200", ...("dataDir" in store ? ["--data-dir", store.dataDir] : ["--database-url", store.databaseUrl])];
}

/**
 * Starts `warden <role>` through the CLI entry point on free loopback ports
 * and resolves once it logs "listening". `nodeArgs` go to node itself
 * (e.g. `--cpu-prof`); `entry` "compiled" runs the `npm run build` output
 * in dist/, as the image does.
 */
export async function startWardenProcess(
  role: "serve" | "control-plane" | "sidecar",
  extraArgs: string[] = [],
  nodeArgs: string[] = [],
  entry: "source" | "compiled" = "source",
): Promise<ServerProcess> {
  const args = [
    ...nodeArgs,
    ...(entry === "compiled" ? [join(ROOT, "dist/cli/main.js")] : ["--import", "tsx", join(ROOT, "src/cli/main.ts")]),
    role,
    "--grpc-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
    ...extraArgs,
  ];
  const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, DATABASE_URL: "" } });
  const logs: Record<string, unknown>[] = [];
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const ports = await new Promise<{ grpcPort: number; httpPort: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in 30s: ${stderr}`)), 30_000);
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      try {
        const rec = JSON.parse(line) as Record<string, unknown>;
        logs.push(rec);
        if (rec.msg === "listening") {
          clearTimeout(timer);
          resolve(rec as unknown as { grpcPort: number; httpPort: number });
        }
      } catch {
        // not a log line
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${stderr}`));
    });
  });
  return {
    grpcAddress: `127.0.0.1:${ports.grpcPort}`,
    httpUrl: `http://127.0.0.1:${ports.httpPort}`,
    proc,
    logs,
    stderr: () => stderr,
    async stop() {
      proc.kill("SIGTERM");
      return exited;
    },
    async kill() {
      proc.kill("SIGKILL");
      await exited;
    },
  };
}

/** Promise-returning methods of a generic grpc-js client built from a descriptor. */
// biome-ignore lint: methods are built from the descriptor at run time.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type GrpcClient = { close(): void } & { [method: string]: any };

/**
 * A plain `@grpc/grpc-js` client for a service, built from the generated
 * descriptor (as any polyglot agent's generated stub would be). `channel`
 * picks a separate HTTP/2 connection; `headers` go with every call (e.g.
 * `authorization`), and a call may add its own as a third argument. A
 * server-streaming method returns grpc-js's stream: `for await` its messages.
 */
export function grpcClient(service: DescService, address: string, channel = 0, headers: Record<string, string> = {}): GrpcClient {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: (v: unknown) => Buffer.from(toBinary(m.input, create(m.input, v as never))),
      requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
      responseSerialize: (v: unknown) => Buffer.from(toBinary(m.output, v as never)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(def as grpc.ServiceDefinition, service.name);
  const raw = new Ctor(address, grpc.credentials.createInsecure(), { "grpc.test_channel": channel } as grpc.ChannelOptions) as unknown as Record<string, Function> & grpc.Client;
  const out: Record<string, unknown> = { close: () => raw.close() };
  for (const m of service.methods) {
    out[m.localName] = (req: unknown, options: grpc.CallOptions = {}, callHeaders: Record<string, string> = {}) => {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries({ ...headers, ...callHeaders })) md.set(k, v);
      // A server stream: grpc-js's readable stream, which iterates its messages.
      if (m.methodKind === "server_streaming") return raw[m.localName]!.call(raw, req, md, options);
      return new Promise((resolve, reject) => raw[m.localName]!.call(raw, req, md, options, (err: Error | null, res: unknown) => (err ? reject(err) : resolve(res))));
    };
  }
  return out as GrpcClient;
}

/** What a CLI run printed, and its exit code. */
export interface CliRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the real CLI (bin/warden.js, as a user would) against the server at `httpUrl`. */
export async function runWardenCli(httpUrl: string, ...args: string[]): Promise<CliRun> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [join(ROOT, "bin", "warden.js"), ...args], {
      env: { ...process.env, WARDEN_SERVER: httpUrl },
      timeout: 30_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout: string; stderr: string };
    return { code: e.code ?? -1, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A CLI command still running (e.g. a watch): its output so far, and its end. */
export interface RunningCli {
  /** Resolves once stdout matches `re` (e.g. the first state a watch prints). */
  printed(re: RegExp): Promise<void>;
  readonly done: Promise<CliRun>;
}

/** Starts the real CLI against `httpUrl` without waiting for it to end. */
export function startWardenCli(httpUrl: string, ...args: string[]): RunningCli {
  const proc = spawn(process.execPath, [join(ROOT, "bin", "warden.js"), ...args], { env: { ...process.env, WARDEN_SERVER: httpUrl }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  const waiters: (() => void)[] = [];
  proc.stdout!.on("data", (c: Buffer) => {
    stdout += c.toString("utf8");
    for (const w of waiters.splice(0)) w();
  });
  proc.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")));
  const done = new Promise<CliRun>((resolve) => proc.once("exit", (code) => resolve({ code: code ?? -1, stdout, stderr })));
  return {
    done,
    async printed(re) {
      while (!re.test(stdout)) {
        const ended = await Promise.race([new Promise<false>((r) => waiters.push(() => r(false))), done.then(() => true)]);
        if (ended && !re.test(stdout)) throw new Error(`the command ended without printing ${re}: ${stdout}${stderr}`);
      }
    },
  };
}

/**
 * An in-process `warden serve` on loopback ports and a fresh data dir,
 * logging nothing, its sweeper slow: what most in-process tests start,
 * with their own options on top.
 */
export function startTestServer(o: Partial<ServerOptions> = {}): Promise<RunningServer> {
  return startServer({
    grpcAddress: "127.0.0.1:0",
    httpAddress: "127.0.0.1:0",
    dataDir: tempDataDir(),
    sweepIntervalMs: 60_000,
    logger: createLogger("silent"),
    ...o,
  });
}

/**
 * An in-process `warden sidecar` for `agentId` on loopback ports, its
 * control plane at `controlPlaneUrl`, logging nothing and reporting every
 * 20 ms, with the test's own options on top; resolves once it has synced
 * (fails after 15 s).
 */
export async function startTestSidecar(controlPlaneUrl: string, agentId: string, o: Partial<SidecarOptions> = {}): Promise<RunningSidecar> {
  const sc = await startSidecar({
    grpcAddress: "127.0.0.1:0",
    httpAddress: "127.0.0.1:0",
    controlPlaneUrl,
    agentId,
    stalenessBoundMs: 5_000,
    leaseTtlMs: 10_000,
    reportIntervalMs: 20,
    cacheMaxSessions: 1000,
    cacheMaxBytes: 1 << 24,
    logger: createLogger("silent"),
    requireSessionTokens: false,
    ...o,
  });
  const end = Date.now() + 15_000;
  while (!(sc.sync.synced && sc.sync.fresh())) {
    if (Date.now() > end) {
      await sc.close(0);
      throw new Error(`sidecar for ${agentId} did not sync in 15 s`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return sc;
}

/** A Connect interceptor that presents `credential` as a bearer token. */
export const bearer =
  (credential: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set("authorization", `Bearer ${credential}`);
    return next(req);
  };
