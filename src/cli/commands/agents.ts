import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  GetAgentResponseSchema,
  UpdateAgentPolicyRequestSchema,
  UpdateAgentPolicyResponseSchema,
  type UpdateAgentPolicyRequest,
} from "../../gen/warden/v1/agent_service_pb.js";
import { CLIENT_FLAGS, EXIT_OK, IDEMPOTENCY_FLAG, type CommandSpec, type WardenClients } from "../command.js";
import { formatAgent } from "../format-agent.js";
import type { ParsedFlags } from "../parse-command-line.js";
import { buildPolicy, POLICY_FLAGS } from "../policy-flags.js";
import { DEFAULT_CURRENCY } from "./sessions.js";

/**
 * Builds the UpdateAgentPolicyRequest of `warden agents set-policy`. The
 * policy is replaced as a whole; without --currency its currency is left
 * empty for {@link fetchAgentCurrency} to fill in.
 */
export function buildUpdateAgentPolicyRequest(agentId: string, flags: ParsedFlags): UpdateAgentPolicyRequest {
  return create(UpdateAgentPolicyRequestSchema, {
    agentId,
    policy: buildPolicy(flags),
    etag: flags.string("etag") ?? "",
    idempotencyKey: flags.string("idempotency-key") ?? "",
  });
}

/**
 * The currency of an agent's current policy, or USD for an agent that has
 * none yet — so that re-setting limits never switches currency by accident.
 */
export async function fetchAgentCurrency(clients: WardenClients, agentId: string): Promise<string> {
  try {
    const { agent } = await clients.agents.getAgent({ agentId });
    return agent?.policy?.currencyCode || DEFAULT_CURRENCY;
  } catch (err) {
    // set-policy creates unknown agents, so "not found" is expected here.
    if (ConnectError.from(err).code === Code.NotFound) return DEFAULT_CURRENCY;
    throw err;
  }
}

/** The `warden agents …` commands. */
export const AGENT_COMMANDS: readonly CommandSpec[] = [
  {
    name: "agents get",
    args: ["AGENT_ID"],
    summary: "show an agent's policy across its sessions and its windows",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().agents.getAgent({ agentId: ctx.args[0]! });
      ctx.output(GetAgentResponseSchema, res, () => (res.agent ? formatAgent(res.agent) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "agents set-policy",
    args: ["AGENT_ID"],
    summary: "replace an agent's policy (limits across all its sessions); creates the agent if new",
    notes:
      "The whole policy is replaced: limits not given are removed. Without --currency the agent's current currency is kept (USD for a new agent).\nMoney flags are decimal amounts, e.g. 200 or 12.50; 0 means nothing may be spent.",
    flags: [
      ...POLICY_FLAGS,
      { name: "etag", type: "string", value: "ETAG", description: "apply only if the agent's etag still matches (from agents get)" },
      IDEMPOTENCY_FLAG,
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const agentId = ctx.args[0]!;
      const req = buildUpdateAgentPolicyRequest(agentId, ctx.flags);
      if (req.policy && req.policy.currencyCode === "") req.policy.currencyCode = await fetchAgentCurrency(ctx.clients(), agentId);
      const res = await ctx.clients().agents.updateAgentPolicy(req);
      ctx.output(UpdateAgentPolicyResponseSchema, res, () => (res.agent ? formatAgent(res.agent) : ""));
      return EXIT_OK;
    },
  },
];
