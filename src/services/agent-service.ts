import type { ServiceImpl } from "@connectrpc/connect";
import { type AgentService, UpdateAgentPolicyRequestSchema } from "../gen/warden/v1/agent_service_pb.js";
import type { WardenStore } from "../store/warden-store.js";
import { requestHash } from "./request-hash.js";

/** AgentService over the store: an agent's policy across its sessions. */
export function createAgentService(store: WardenStore): ServiceImpl<typeof AgentService> {
  return {
    async getAgent(req) {
      return { agent: await store.getAgent(req.agentId) };
    },
    async updateAgentPolicy(req) {
      return { agent: await store.updateAgentPolicy(req, requestHash(UpdateAgentPolicyRequestSchema, req)) };
    },
  };
}
