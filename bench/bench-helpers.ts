/** What both benchmarks share: the baseline servers and the Check request they send. */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create, toBinary } from "@bufbuild/protobuf";
import { CheckRequestSchema } from "../src/gen/warden/v1/policy_service_pb.js";

/** 1.00 USD: every benchmark call spends this. */
export const AMOUNT = 1_000_000n;
/** The method every benchmark drives. */
export const CHECK_PATH = "/warden.v1.PolicyService/Check";

/** A serialized CheckRequest of {@link AMOUNT} for a session, to `merchant`. */
export function encodeCheck(sessionId: string, merchant = "bench"): Buffer {
  return Buffer.from(
    toBinary(CheckRequestSchema, create(CheckRequestSchema, { sessionId, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: AMOUNT }, merchant } })),
  );
}

/** Starts a baseline server of bench/baseline-servers.ts in a child process. */
export async function startBaseline(kind: "noop" | "ratelimiter"): Promise<{ address: string; proc: ChildProcess }> {
  const proc = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "baseline-servers.ts"), kind], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once("line", (l) => resolve((JSON.parse(l) as { port: number }).port));
    proc.once("exit", (c) => reject(new Error(`${kind} exited ${c}`)));
  });
  return { address: `127.0.0.1:${port}`, proc };
}

/** Prints a Markdown table. */
export function printTable(header: string[], rows: string[][]): void {
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map(() => "---").join("|")}|`);
  for (const r of rows) console.log(`| ${r.join(" | ")} |`);
}
