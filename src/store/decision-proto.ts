import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { BudgetView, Evaluation } from "../core/evaluate.js";
import { type Budget, BudgetSchema, type Decision, DecisionSchema, ViolationSchema } from "../gen/warden/v1/decision_pb.js";

/** A budget view as the API's `Budget`, with remaining amounts never negative. */
export function budgetToProto(b: BudgetView): Budget {
  const max = (a: bigint) => (a < 0n ? 0n : a);
  return create(BudgetSchema, {
    scope: b.scope,
    scopeId: b.scopeId,
    window: b.window,
    windowStartTime: b.span === undefined ? undefined : timestampFromMs(b.span.startMs),
    windowEndTime: b.span === undefined ? undefined : timestampFromMs(b.span.endMs),
    valueUsedMicros: b.valueUsed,
    actionsUsed: b.actionsUsed,
    valueLimitMicros: b.valueLimit,
    valueRemainingMicros: b.valueLimit === undefined ? undefined : max(b.valueLimit - b.valueUsed),
    actionLimit: b.actionLimit,
    actionsRemaining: b.actionLimit === undefined ? undefined : max(b.actionLimit - b.actionsUsed),
  });
}

/** The engine's evaluation as the API's `Decision`. */
export function decisionToProto(ev: Evaluation): Decision {
  return create(DecisionSchema, {
    outcome: ev.outcome,
    reasons: ev.reasons,
    violations: ev.violations.map((v) => create(ViolationSchema, v)),
    message: ev.message,
    remaining: ev.budgets.map(budgetToProto),
  });
}
