import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AgentService } from "../gen/warden/v1/agent_service_pb.js";
import { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";
import { AuditService } from "../gen/warden/v1/audit_service_pb.js";
import { AuthService } from "../gen/warden/v1/auth_service_pb.js";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../gen/warden/v1/session_service_pb.js";
import { WebhookService } from "../gen/warden/v1/webhook_service_pb.js";
import type { WardenClients } from "./command.js";

/**
 * Creates the CLI's transport: the Connect protocol over HTTP/1.1, which
 * every deployment of the control plane serves (also behind proxies that
 * do not speak HTTP/2).
 */
export function createCliTransport(baseUrl: string): Transport {
  return createConnectTransport({ baseUrl, httpVersion: "1.1" });
}

/** Creates the clients of the services over one transport. */
export function createWardenClients(transport: Transport): WardenClients {
  return {
    sessions: createClient(SessionService, transport),
    policy: createClient(PolicyService, transport),
    agents: createClient(AgentService, transport),
    auth: createClient(AuthService, transport),
    webhooks: createClient(WebhookService, transport),
    approvals: createClient(ApprovalService, transport),
    audit: createClient(AuditService, transport),
  };
}

/**
 * `transport` with `authorization: Bearer <apiKey>` on every call, or
 * `transport` itself when there is no key. Wrapping the transport (rather
 * than the clients' options) works for any transport, including the
 * in-memory ones of tests.
 */
export function withApiKey(transport: Transport, apiKey: string | undefined): Transport {
  if (apiKey === undefined || apiKey === "") return transport;
  const withAuth = (header: ConstructorParameters<typeof Headers>[0]) => {
    const h = new Headers(header);
    h.set("authorization", `Bearer ${apiKey}`);
    return h;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) => transport.unary(method, signal, timeoutMs, withAuth(header), input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) => transport.stream(method, signal, timeoutMs, withAuth(header), input, contextValues),
  };
}
