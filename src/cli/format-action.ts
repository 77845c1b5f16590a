import { OutcomeSchema, ReasonSchema } from "../gen/warden/v1/decision_pb.js";
import type { Money } from "../gen/warden/v1/money_pb.js";
import { ActionStatusSchema, type ActionRecord } from "../gen/warden/v1/policy_service_pb.js";
import { enumName, enumWord, formatKeyValues, formatLabels, formatTable, formatTime } from "./format.js";
import { formatMoney } from "../core/money.js";

function money(m: Money | undefined): string | undefined {
  return m === undefined ? undefined : formatMoney(m.amountMicros, m.currencyCode);
}

/**
 * Formats one action record (the answer of Capture and Void) as a
 * `key value` block: what was asked, what was decided, where its money is.
 */
export function formatActionRecord(r: ActionRecord): string {
  return formatKeyValues([
    ["action", r.actionId],
    ["session", r.sessionId],
    ["agent", r.agentId],
    ["method", r.method],
    ["status", enumWord(ActionStatusSchema, r.status)],
    ["type", r.action?.type],
    ["amount", money(r.action?.amount)],
    ["merchant", r.action?.merchant],
    ["description", r.action?.description],
    ["metadata", r.action ? formatLabels(r.action.metadata) : undefined],
    ["outcome", r.decision ? enumName(OutcomeSchema, r.decision.outcome) : undefined],
    ["reasons", r.decision?.reasons.map((x) => enumName(ReasonSchema, x)).join(", ")],
    ["held", money(r.heldAmount)],
    ["captured", money(r.capturedAmount)],
    ["created", formatTime(r.createTime)],
    ["updated", formatTime(r.updateTime)],
    ["hold expires", formatTime(r.holdExpireTime)],
  ]);
}

/** Formats action records as a table, one row each; `no actions` when empty. */
export function formatActionsTable(records: readonly ActionRecord[]): string {
  if (records.length === 0) return "no actions";
  return formatTable(
    [
      { title: "time" },
      { title: "action" },
      { title: "method" },
      { title: "type" },
      { title: "amount", align: "right" },
      { title: "merchant" },
      { title: "outcome" },
      { title: "status" },
      { title: "reasons" },
    ],
    records.map((r) => [
      formatTime(r.createTime) ?? "-",
      r.actionId,
      r.method,
      r.action?.type ?? "",
      money(r.action?.amount) ?? "-",
      r.action?.merchant ?? "",
      r.decision ? enumName(OutcomeSchema, r.decision.outcome) : "",
      enumWord(ActionStatusSchema, r.status),
      r.decision?.reasons.map((x) => enumName(ReasonSchema, x)).join(",") ?? "",
    ]),
  );
}
