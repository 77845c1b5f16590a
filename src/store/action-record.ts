import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { WindowKind } from "../core/compiled-policy.js";
import { MoneySchema } from "../gen/warden/v1/money_pb.js";
import { DecisionSchema } from "../gen/warden/v1/decision_pb.js";
import { type ActionRecord, ActionRecordSchema, ActionSchema, type ActionStatus } from "../gen/warden/v1/policy_service_pb.js";

/** The columns of `actions` every reader selects. */
export const ACTION_COLUMNS = `action_id, seq, session_id, agent_id, method, action, decision, status, currency, amount,
  held_value, captured_value, charges, create_time, update_time, hold_expire_time, approval_id, placed_by, written_off_value`;

/** A row of `actions`. */
export interface ActionRow {
  action_id: string;
  seq: string;
  session_id: string;
  agent_id: string;
  method: string;
  action: Uint8Array;
  decision: Uint8Array;
  status: number;
  currency: string;
  amount: string;
  held_value: string;
  captured_value: string;
  charges: [string, WindowKind, number][];
  create_time: Date;
  update_time: Date;
  hold_expire_time: Date | null;
  approval_id?: string | null;
  /** The sidecar that placed and reported this hold (migration 018); null for everything else. */
  placed_by?: string | null;
  /** What the store counted as spent of a sidecar's hold closed without its word (migration 021); null when not. */
  written_off_value?: string | null;
}

/** An `actions` row as the API's `ActionRecord`. */
export function actionRecordOf(r: ActionRow): ActionRecord {
  return create(ActionRecordSchema, {
    actionId: r.action_id,
    sessionId: r.session_id,
    agentId: r.agent_id,
    action: fromBinary(ActionSchema, r.action),
    decision: fromBinary(DecisionSchema, r.decision),
    status: r.status as ActionStatus,
    heldAmount: create(MoneySchema, { currencyCode: r.currency, amountMicros: BigInt(r.held_value) }),
    capturedAmount: create(MoneySchema, { currencyCode: r.currency, amountMicros: BigInt(r.captured_value) }),
    createTime: timestampFromMs(r.create_time.getTime()),
    updateTime: timestampFromMs(r.update_time.getTime()),
    holdExpireTime: r.hold_expire_time === null ? undefined : timestampFromMs(r.hold_expire_time.getTime()),
    method: r.method,
    approvalId: r.approval_id ?? "",
    writtenOffAmount: r.written_off_value == null ? undefined : create(MoneySchema, { currencyCode: r.currency, amountMicros: BigInt(r.written_off_value) }),
  });
}
