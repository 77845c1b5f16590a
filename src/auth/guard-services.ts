import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { AgentService } from "../gen/warden/v1/agent_service_pb.js";
import { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";
import { AuditService } from "../gen/warden/v1/audit_service_pb.js";
import { AuthService } from "../gen/warden/v1/auth_service_pb.js";
import { EventService } from "../gen/warden/v1/event_service_pb.js";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../gen/warden/v1/session_service_pb.js";
import { SyncService } from "../gen/warden/v1/sync_service_pb.js";
import { WebhookService } from "../gen/warden/v1/webhook_service_pb.js";
import { AGENT_SERVICE_ACCESS, AUDIT_SERVICE_ACCESS, AUTH_SERVICE_ACCESS, EVENT_SERVICE_ACCESS, SESSION_SERVICE_ACCESS, SYNC_SERVICE_ACCESS, WEBHOOK_SERVICE_ACCESS } from "./access-tables.js";
import type { Auth } from "./create-auth.js";
import type { AccessTable } from "./with-api-key-auth.js";

/** A service and its implementation, as the listeners mount them. */
export interface GuardedService {
  readonly service: DescService;
  readonly impl: Partial<ServiceImpl<DescService>>;
}

/** The access table of every Warden service that API keys guard. */
const TABLES: ReadonlyMap<string, AccessTable<DescService>> = new Map<string, unknown>([
  [SessionService.typeName, SESSION_SERVICE_ACCESS],
  [AgentService.typeName, AGENT_SERVICE_ACCESS],
  [AuthService.typeName, AUTH_SERVICE_ACCESS],
  [SyncService.typeName, SYNC_SERVICE_ACCESS],
  [WebhookService.typeName, WEBHOOK_SERVICE_ACCESS],
  [EventService.typeName, EVENT_SERVICE_ACCESS],
  [AuditService.typeName, AUDIT_SERVICE_ACCESS],
]) as ReadonlyMap<string, AccessTable<DescService>>;

/**
 * Puts every service of a server behind credentials: PolicyService behind
 * session tokens (or API keys, see `Auth.wrapPolicy`), the other Warden
 * services behind API keys and their access tables. The standard `grpc.*`
 * services (health, reflection) stay open: probes and tools need them and
 * they reveal no data.
 *
 * Fails closed: a service with no rules here throws, so a service added to
 * a server cannot be served without credentials by accident.
 */
export function guardServices<M extends GuardedService>(services: readonly M[], auth: Auth): M[] {
  return services.map((m) => {
    const name = m.service.typeName;
    if (name.startsWith("grpc.")) return m;
    if (name === PolicyService.typeName) {
      return { ...m, impl: auth.wrapPolicy(m.impl as Partial<ServiceImpl<typeof PolicyService>>) as GuardedService["impl"] };
    }
    if (name === ApprovalService.typeName) {
      return { ...m, impl: auth.wrapApprovals(m.impl as Partial<ServiceImpl<typeof ApprovalService>>) as GuardedService["impl"] };
    }
    const table = TABLES.get(name);
    if (table === undefined) throw new Error(`no access rules for ${name}: refusing to serve it without credentials`);
    return { ...m, impl: auth.wrapAdmin(m.service, m.impl, table) };
  });
}
