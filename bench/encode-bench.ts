/**
 * `npm run bench:encode`: what encoding a decision's messages costs with
 * protobuf-es's `toBinary` as it comes (a new writer, and its buffer grown
 * from 128 bytes, for every message), then in the same process with the
 * pooled writer buffer every Warden server installs
 * (src/transport/writer-buffer-pool.ts). The messages are shaped like a
 * real decision's: the answer, the action and decision `serve` stores, and a
 * sidecar's report of 100 records.
 *
 * Env: BENCH_ENCODES (default 50000, the smallest message's count; larger
 * ones get fewer, by size). Bounded: a fixed count per message, then it exits.
 */
import { create, type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Budget, BudgetSchema, type Decision, DecisionSchema, Outcome, Scope, Window } from "../src/gen/warden/v1/decision_pb.js";
import { ActionSchema, CheckResponseSchema } from "../src/gen/warden/v1/policy_service_pb.js";
import { ReportLeasesRequestSchema } from "../src/gen/warden/v1/sync_service_pb.js";
import { poolWriterBuffers } from "../src/transport/writer-buffer-pool.js";
import { printTable } from "./bench-helpers.js";

const ENCODES = Number(process.env.BENCH_ENCODES ?? 50_000);
const DAY = 86_400_000;
const now = Date.UTC(2026, 11, 7, 16, 0);
const sessionId = "ses_01m98kt264q10a0gmhrg4kzjxv";

const budget = (window: Window, startMs?: number, endMs?: number, limit?: bigint): Budget =>
  create(BudgetSchema, {
    scope: Scope.SESSION,
    scopeId: sessionId,
    window,
    windowStartTime: startMs === undefined ? undefined : timestampFromMs(startMs),
    windowEndTime: endMs === undefined ? undefined : timestampFromMs(endMs),
    valueUsedMicros: 4_233_143_305n,
    actionsUsed: 3841n,
    valueLimitMicros: limit,
    valueRemainingMicros: limit === undefined ? undefined : limit - 4_233_143_305n,
  });
const dayStart = now - (now % DAY);
const decision: Decision = create(DecisionSchema, {
  outcome: Outcome.ALLOW,
  message: "allowed",
  remaining: [
    budget(Window.DAY, dayStart, dayStart + DAY, 1_000_000_000_000_000n),
    budget(Window.WEEK, dayStart, dayStart + 7 * DAY),
    budget(Window.MONTH, Date.UTC(2026, 11, 1), Date.UTC(2027, 0, 1)),
    budget(Window.LIFETIME),
  ],
});
const action = create(ActionSchema, {
  type: "payment",
  amount: { amountMicros: 12_500_000n, currencyCode: "USD" },
  merchant: "api.example-merchant.test",
  metadata: { tool: "checkout", order: "ord-20261207-0042" },
});
const record = (i: number) => ({
  actionId: `act_01m98kt3dz8fw4tz3xhp6f${String(i).padStart(4, "0")}`,
  method: "check",
  action,
  decision,
  createTime: timestampFromMs(now + i),
  processingNanos: 41_000n,
});

const cases: { name: string; schema: DescMessage; message: MessageShape<DescMessage> }[] = [
  { name: "CheckResponse (the answer)", schema: CheckResponseSchema, message: create(CheckResponseSchema, { decision, actionId: record(0).actionId }) },
  { name: "Action (stored)", schema: ActionSchema, message: action },
  { name: "Decision (stored)", schema: DecisionSchema, message: decision },
  {
    name: "ReportLeasesRequest, 100 records",
    schema: ReportLeasesRequestSchema,
    message: create(ReportLeasesRequestSchema, {
      holder: "agent-pod-7f9c-12345",
      reports: [{ sessionId, leaseId: "lse_01m98kt3dz8fw4tz3xhp6f83sg", records: Array.from({ length: 100 }, (_, i) => record(i)) }],
    }),
  },
];

/** µs per encode of `message`, best of five rounds of `n` (the machine's other work only ever adds). */
function timeEncode(schema: DescMessage, message: MessageShape<DescMessage>, n: number): number {
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < n; i++) toBinary(schema, message);
    best = Math.min(best, Number(process.hrtime.bigint() - t) / n / 1000);
  }
  return best;
}

const sizes = cases.map((c) => toBinary(c.schema, c.message).length);
const counts = sizes.map((s) => Math.max(200, Math.round((ENCODES * sizes[0]!) / s)));
const before = cases.map((c, i) => timeEncode(c.schema, c.message, counts[i]!));
if (!poolWriterBuffers()) throw new Error("the writer buffer pool did not install on this protobuf-es");
const after = cases.map((c, i) => timeEncode(c.schema, c.message, counts[i]!));
console.log(`# toBinary, µs per encode (best of 5 rounds), protobuf-es as it comes, then with the pooled writer buffer, in one process\n`);
printTable(
  ["message", "bytes", "encodes per round", "protobuf-es µs", "pooled buffer µs", "pooled / protobuf-es"],
  cases.map((c, i) => [c.name, String(sizes[i]), String(counts[i]), before[i]!.toFixed(2), after[i]!.toFixed(2), `${((after[i]! / before[i]!) * 100).toFixed(0)}%`]),
);
