import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { createStoreLocation, storeArgs } from "../helpers/server-process.js";

const ROOT = join(import.meta.dirname, "../..");

/**
 * Runs `warden <args>` to its end (SIGKILL after 30 s): its exit code,
 * signal and stderr, and how long it lived after printing its error.
 */
async function runToExit(args: string[]): Promise<{ code: number | null; signal: string | null; stderr: string; afterErrorMs: number }> {
  const proc = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, DATABASE_URL: "" } });
  let stderr = "";
  let errorAt = Number.NaN;
  proc.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
    if (Number.isNaN(errorAt) && /^warden: /m.test(stderr)) errorAt = Date.now();
  });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  const [code, signal] = (await once(proc, "exit")) as [number | null, string | null];
  clearTimeout(timer);
  return { code, signal, stderr, afterErrorMs: Date.now() - errorAt };
}

describe("a role whose port is taken", () => {
  // A port held by this test for the whole file.
  let taken: Server;
  let address: string;
  before(async () => {
    taken = createServer().listen(0, "127.0.0.1");
    await once(taken, "listening");
    address = `127.0.0.1:${(taken.address() as { port: number }).port}`;
  });
  after(() => taken.close());

  // The health listener binds first and the gRPC one fails: the database
  // pool, the change feed's LISTEN connection and that listener must all
  // close, or the process prints its error and then runs on, serving
  // nothing (the control plane did, on PostgreSQL, until it was killed).
  for (const [role, driver] of [
    ["control-plane", "postgres"],
    ["serve", "pglite"],
  ] as const) {
    test(`warden ${role} on ${driver} exits 1 with the reason, closing what it had opened`, async () => {
      const { location, drop } = await createStoreLocation(driver);
      try {
        const r = await runToExit([role, ...storeArgs(location), "--health-listen", "127.0.0.1:0", "--grpc-listen", address, "--http-listen", "127.0.0.1:0"]);
        assert.equal(r.signal, null, `warden ${role} did not exit on its own; stderr: ${r.stderr}`);
        assert.equal(r.code, 1, r.stderr);
        // One line: grpc-js's own report of the failed bind goes to the JSON log on stdout.
        assert.match(r.stderr, /^warden: .*EADDRINUSE[^\n]*\n?$/, r.stderr);
        // At once, not when some idle timeout lets go of the process (a
        // PGlite serve used to live on for ~10 s after its error).
        assert.ok(r.afterErrorMs < 3000, `exited ${r.afterErrorMs} ms after its error`);
      } finally {
        await drop();
      }
    });
  }
});

describe("a sidecar with a lease TTL the control plane would not grant", () => {
  test("warden sidecar --lease-ttl above 300000 exits 1 naming the flag, before it serves (its keyed calls' claims would all be refused)", async () => {
    const r = await runToExit(["sidecar", "--control-plane", "http://127.0.0.1:1", "--agent-id", "a", "--lease-ttl", "300001", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^warden: --lease-ttl: 300001 is above 300000/);
  });
});
