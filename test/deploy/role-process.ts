import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  type HealthCheckResponse_ServingStatus,
} from "../../src/gen/grpc/health/v1/health_pb.js";

/** A Warden role started from a compiled image layout. */
export interface RoleProcess {
  /** Resolves with the `listening` log line; rejects if the process exits first. */
  readonly listening: Promise<Record<string, unknown>>;
  /** The `msg` of every log line so far. */
  readonly messages: string[];
  /** Everything written to stderr so far. */
  stderr(): string;
  /** SIGTERM, then the exit code (null if a signal ended it). */
  stop(): Promise<number | null>;
  /** SIGKILL, for cleanup after a failure; harmless once exited. */
  kill(): void;
}

/**
 * Runs `node dist/cli/main.js …args` in `appDir` as the image's ENTRYPOINT
 * would, with only `env` (plus PATH) in its environment, so nothing from the
 * developer's shell leaks into what the manifest configures.
 */
export function startRole(appDir: string, args: readonly string[], env: Record<string, string>): RoleProcess {
  const child = spawn(process.execPath, ["dist/cli/main.js", ...args], {
    cwd: appDir,
    env: { PATH: process.env.PATH ?? "", NODE_ENV: "production", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const messages: string[] = [];
  const listening = new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return; // not a log line
      }
      messages.push(String(entry.msg ?? ""));
      if (entry.msg === "listening") resolve(entry);
    });
    void exited.then((code) => reject(new Error(`warden ${args.join(" ")} exited ${code} before listening: ${stderr}`)));
  });
  // A rejection nobody awaits yet must not crash the test runner.
  listening.catch(() => {});
  return {
    listening,
    messages,
    stderr: () => stderr,
    stop() {
      child.kill("SIGTERM");
      return exited;
    },
    kill() {
      child.kill("SIGKILL");
    },
  };
}

export { freePort } from "../helpers/server-process.js";

/**
 * `grpc.health.v1.Health/Check` for the whole server (""), over plaintext
 * HTTP/2 as a Kubernetes `grpc:` probe makes it. Rejects on any gRPC error.
 */
export async function grpcHealthCheck(address: string): Promise<HealthCheckResponse_ServingStatus> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  try {
    const bytes = await new Promise<Uint8Array>((resolve, reject) => {
      client.makeUnaryRequest(
        "/grpc.health.v1.Health/Check",
        (req: Uint8Array) => Buffer.from(req),
        (res: Buffer) => new Uint8Array(res),
        toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service: "" })),
        { deadline: Date.now() + 5000 },
        (err, res) => (err ? reject(err) : resolve(res!)),
      );
    });
    return fromBinary(HealthCheckResponseSchema, bytes).status;
  } finally {
    client.close();
  }
}
