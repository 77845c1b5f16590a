import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Action, ActionSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { type SessionPolicySchema } from "../../src/gen/warden/v1/policy_pb.js";
import { CreateSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";

/** Decimal-free micros: usd(12.5) would be a float, so amounts are whole units or explicit micros. */
export const USD = (units: number) => BigInt(units) * 1_000_000n;

/** A CreateSessionRequest for tests, one hour long by default. */
export function sessionRequest(
  agentId: string,
  policy: MessageInitShape<typeof SessionPolicySchema>,
  extra: Record<string, unknown> = {},
) {
  return create(CreateSessionRequestSchema, {
    agentId,
    policy: { currencyCode: "USD", ...policy },
    expiration: { case: "ttl", value: durationFromMs(3_600_000) },
    ...(extra as object),
  });
}

/** A payment action. */
export function payment(amountMicros: bigint, merchant = "acme", currencyCode = "USD"): Action {
  return create(ActionSchema, { type: "payment", amount: { currencyCode, amountMicros }, merchant });
}

/** A manual clock: tests move time instead of sleeping. */
export class ManualClock {
  constructor(public ms = Date.UTC(2026, 10, 21, 12, 0, 0)) {}
  readonly now = () => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}
