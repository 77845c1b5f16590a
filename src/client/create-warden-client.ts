import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { credentialFault } from "../auth/bearer-token.js";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { AgentService } from "../gen/warden/v1/agent_service_pb.js";
import { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";
import { AuditService } from "../gen/warden/v1/audit_service_pb.js";
import { AuthService } from "../gen/warden/v1/auth_service_pb.js";
import { EventService } from "../gen/warden/v1/event_service_pb.js";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../gen/warden/v1/session_service_pb.js";
import { WebhookService } from "../gen/warden/v1/webhook_service_pb.js";

/** Typed clients of every Warden service, over one transport. */
export interface WardenClients {
  readonly sessions: Client<typeof SessionService>;
  readonly policy: Client<typeof PolicyService>;
  readonly agents: Client<typeof AgentService>;
  readonly auth: Client<typeof AuthService>;
  readonly webhooks: Client<typeof WebhookService>;
  readonly approvals: Client<typeof ApprovalService>;
  readonly events: Client<typeof EventService>;
  readonly audit: Client<typeof AuditService>;
}

/** Creates the clients of every service over `transport`. */
export function createServiceClients(transport: Transport): WardenClients {
  return {
    sessions: createClient(SessionService, transport),
    policy: createClient(PolicyService, transport),
    agents: createClient(AgentService, transport),
    auth: createClient(AuthService, transport),
    webhooks: createClient(WebhookService, transport),
    approvals: createClient(ApprovalService, transport),
    events: createClient(EventService, transport),
    audit: createClient(AuditService, transport),
  };
}

/**
 * A credential that cannot be sent as a Bearer token. Its message says
 * what is wrong and where, never the credential itself.
 */
export class MalformedCredentialError extends Error {
  override name = "MalformedCredentialError";
  constructor(
    /** What is wrong, e.g. "it holds a line break at character 77". */
    readonly reason: string,
  ) {
    super(`credential: not a usable API key or session token: only visible ASCII characters may appear in one, and ${reason}`);
  }
}

/**
 * `transport` with `authorization: Bearer <credential>` on every call (an
 * API key, or an agent's session token), or `transport` itself without
 * one. Wrapping the transport (rather than each call's options) works for
 * any transport, including in-memory ones.
 *
 * The credential is checked here, once: keys and tokens are visible ASCII,
 * and anything else (two lines pasted from a file, say) would fail in
 * `Headers.set` on every call with a message that repeats the whole
 * header, secret included. Surrounding whitespace (a file's trailing
 * newline) is allowed, and trimmed here: inside the header, a leading line
 * break fails `Headers.set` as above, and a leading tab makes grpc-js drop
 * the header (and log it, secret and all). Throws
 * {@link MalformedCredentialError}.
 */
export function withBearer(transport: Transport, credential: string | undefined): Transport {
  if (credential === undefined || credential === "") return transport;
  const fault = credentialFault(credential);
  if (fault !== undefined) throw new MalformedCredentialError(fault);
  const value = `Bearer ${credential.trim()}`;
  const withAuth = (header: ConstructorParameters<typeof Headers>[0]) => {
    const h = new Headers(header);
    h.set("authorization", value);
    return h;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) => transport.unary(method, signal, timeoutMs, withAuth(header), input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) => transport.stream(method, signal, timeoutMs, withAuth(header), input, contextValues),
  };
}

/** Options of {@link createWardenClient}. */
export interface WardenClientOptions {
  /**
   * The server: `http://127.0.0.1:8080` for the Connect listener (Connect
   * and gRPC-Web), `http://127.0.0.1:50051` for the gRPC listener.
   */
  readonly baseUrl: string;
  /** Wire protocol; default "connect" (HTTP/1.1 or HTTP/2). "grpc" needs the gRPC listener or HTTP/2. */
  readonly protocol?: "connect" | "grpc" | "grpc-web";
  /**
   * An API key or a session token, sent as `authorization: Bearer …`. One
   * that is not visible ASCII throws {@link MalformedCredentialError} here.
   */
  readonly credential?: string;
  /** HTTP version for "connect" and "grpc-web"; default "1.1". gRPC is always HTTP/2. */
  readonly httpVersion?: "1.1" | "2";
}

/**
 * A client of a Warden server for TypeScript agents and tools: one typed
 * client per service, over the protocol of your choice.
 *
 * ```ts
 * const warden = createWardenClient({ baseUrl: "http://127.0.0.1:8080", credential: sessionToken });
 * const { decision } = await warden.policy.check({ sessionId, action, idempotencyKey });
 * ```
 */
export function createWardenClient(o: WardenClientOptions): WardenClients {
  const httpVersion = o.httpVersion ?? "1.1";
  const transport =
    o.protocol === "grpc"
      ? createGrpcTransport({ baseUrl: o.baseUrl })
      : o.protocol === "grpc-web"
        ? createGrpcWebTransport({ baseUrl: o.baseUrl, httpVersion })
        : createConnectTransport({ baseUrl: o.baseUrl, httpVersion });
  return createServiceClients(withBearer(transport, o.credential));
}
