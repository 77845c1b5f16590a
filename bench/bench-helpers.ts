/** What both benchmarks share: the baseline servers and the Check request they send. */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create, toBinary } from "@bufbuild/protobuf";
import { CheckRequestSchema } from "../src/gen/warden/v1/policy_service_pb.js";
import type { LoadResult } from "./grpc-load.js";

/** 1.00 USD: every benchmark call spends this. */
export const AMOUNT = 1_000_000n;
/** The method every benchmark drives. */
export const CHECK_PATH = "/warden.v1.PolicyService/Check";

/** A serialized CheckRequest of {@link AMOUNT} for a session, to `merchant`. */
export function encodeCheck(sessionId: string, merchant = "bench", idempotencyKey = ""): Buffer {
  return Buffer.from(
    toBinary(
      CheckRequestSchema,
      create(CheckRequestSchema, { sessionId, action: { type: "payment", amount: { currencyCode: "USD", amountMicros: AMOUNT }, merchant }, idempotencyKey }),
    ),
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

/** Warm-up rounds: the most, and how close the last two must agree to stop. */
const MAX_WARM_ROUNDS = 8;
const STEADY_WITHIN = 0.05;

/**
 * Runs warm-up rounds until the server is steady: until a round's rate is
 * within 5% of the one before (at most 8 rounds). A server process speeds up
 * over its first tens of thousands of calls, as V8 optimizes the hot code
 * and grows its young generation, and a sidecar's lease slices grow with
 * its spend rate; measured before that, a figure is of the warm-up, not of
 * the server (a sidecar in lease mode made 4,900/s in its first round of
 * 20,000 calls and 6,600/s from the third on). Every target gets the same
 * rule, so the ratios compare steady states. Returns the rounds, to print
 * (the ramp) and to count (their calls are real decisions).
 */
export async function warmUntilSteady(round: () => Promise<LoadResult>): Promise<LoadResult[]> {
  const rounds = [await round()];
  while (rounds.length < MAX_WARM_ROUNDS) {
    const r = await round();
    const prev = rounds.at(-1)!.perSecond;
    rounds.push(r);
    if (Math.abs(r.perSecond - prev) <= prev * STEADY_WITHIN) break;
  }
  return rounds;
}

/** "4871 → 6102 → 6588/s": a warm-up's rounds, for the log. */
export function rampOf(rounds: readonly LoadResult[]): string {
  return `${rounds.map((r) => r.perSecond.toFixed(0)).join(" → ")}/s`;
}
