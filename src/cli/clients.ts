import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AgentService } from "../gen/warden/v1/agent_service_pb.js";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../gen/warden/v1/session_service_pb.js";
import type { WardenClients } from "./command.js";

/**
 * Creates the CLI's transport: the Connect protocol over HTTP/1.1, which
 * every deployment of the control plane serves (also behind proxies that
 * do not speak HTTP/2).
 */
export function createCliTransport(baseUrl: string): Transport {
  return createConnectTransport({ baseUrl, httpVersion: "1.1" });
}

/** Creates the clients of the three services over one transport. */
export function createWardenClients(transport: Transport): WardenClients {
  return {
    sessions: createClient(SessionService, transport),
    policy: createClient(PolicyService, transport),
    agents: createClient(AgentService, transport),
  };
}
