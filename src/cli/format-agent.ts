import type { Agent } from "../gen/warden/v1/agent_service_pb.js";
import { formatBudgets } from "./format-decision.js";
import { formatPolicy } from "./format-session.js";
import { formatKeyValues, formatTime } from "./format.js";

/** Formats an agent: identity, its policy across sessions, and its limited windows. */
export function formatAgent(a: Agent): string {
  const blocks = [
    formatKeyValues([
      ["agent", a.agentId],
      ["sessions", a.sessionCount.toString()],
      ["created", formatTime(a.createTime)],
      ["updated", formatTime(a.updateTime)],
      ["etag", a.etag],
    ]),
    a.policy === undefined ? "policy  none (no limits across sessions)" : `policy\n${formatPolicy(a.policy)}`,
  ];
  if (a.budgets.length > 0) blocks.push(`windows\n${formatBudgets(a.budgets, a.policy?.currencyCode, "  ")}`);
  return blocks.join("\n\n");
}
