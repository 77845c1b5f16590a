import type { AgentService } from "../gen/warden/v1/agent_service_pb.js";
import type { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";
import type { AuditService } from "../gen/warden/v1/audit_service_pb.js";
import type { AuthService } from "../gen/warden/v1/auth_service_pb.js";
import type { EventService } from "../gen/warden/v1/event_service_pb.js";
import type { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import type { SessionService } from "../gen/warden/v1/session_service_pb.js";
import type { SyncService } from "../gen/warden/v1/sync_service_pb.js";
import type { WebhookService } from "../gen/warden/v1/webhook_service_pb.js";
import type { AccessTable } from "./with-api-key-auth.js";

// Role sets, so each table reads as a policy. `admin` may do everything,
// so it is in every set.
const ADMIN = ["admin"] as const;
const READERS_AND_AGENT = ["admin", "approver", "auditor", "agent"] as const;
const AUDIT = ["admin", "auditor"] as const;
const ADMIN_AND_AGENT = ["admin", "agent"] as const;
const APPROVERS = ["admin", "approver"] as const;

const ownSession = (r: { sessionId: string }) => ({ sessionIds: [r.sessionId] });
const ownAgent = (r: { agentId: string }) => ({ agentIds: [r.agentId] });

/**
 * SessionService: admins do everything; approvers and auditors read (and
 * auditors export); an agent creates and forks sessions for itself and
 * reads its own (ListSessions must name its agent).
 */
export const SESSION_SERVICE_ACCESS: AccessTable<typeof SessionService> = {
  createSession: { roles: ADMIN_AND_AGENT, scope: ownAgent },
  getSession: { roles: READERS_AND_AGENT, scope: ownSession },
  listSessions: { roles: READERS_AND_AGENT, scope: ownAgent },
  extendSession: { roles: ADMIN },
  endSession: { roles: ADMIN },
  revokeSession: { roles: ADMIN },
  pauseSession: { roles: ADMIN },
  resumeSession: { roles: ADMIN },
  forkSession: { roles: ADMIN_AND_AGENT, scope: (r) => ({ sessionIds: [r.parentSessionId] }) },
  exportSession: { roles: AUDIT },
  importSession: { roles: ADMIN },
};

/** AgentService: readers and the agent itself read; only admins set policy. */
export const AGENT_SERVICE_ACCESS: AccessTable<typeof AgentService> = {
  getAgent: { roles: READERS_AND_AGENT, scope: ownAgent },
  updateAgentPolicy: { roles: ADMIN },
};

/**
 * PolicyService with API keys (the control plane, called by sidecars): an
 * agent decides for its own sessions; readers list actions. Agents calling
 * a sidecar use session tokens instead (withSessionTokenAuth).
 */
export const POLICY_SERVICE_ACCESS: AccessTable<typeof PolicyService> = {
  authorize: { roles: ADMIN_AND_AGENT, scope: ownSession },
  capture: { roles: ADMIN_AND_AGENT, scope: ownSession },
  void: { roles: ADMIN_AND_AGENT, scope: ownSession },
  check: { roles: ADMIN_AND_AGENT, scope: ownSession },
  listActions: { roles: READERS_AND_AGENT, scope: ownSession },
};

/**
 * AuthService: admins manage keys, auditors list them; an agent may mint a
 * new token for its own session; the signing keys are public.
 */
export const AUTH_SERVICE_ACCESS: AccessTable<typeof AuthService> = {
  createApiKey: { roles: ADMIN },
  listApiKeys: { roles: AUDIT },
  revokeApiKey: { roles: ADMIN },
  createSessionToken: { roles: ADMIN_AND_AGENT, scope: ownSession },
  getSigningKeys: { roles: [], public: true },
};

/**
 * SyncService (control plane, called by sidecars): a sidecar holds an
 * agent credential (API key or client certificate) and may only read,
 * watch, lease and report its own agent's sessions.
 */
export const SYNC_SERVICE_ACCESS: AccessTable<typeof SyncService> = {
  getSessionState: { roles: ADMIN_AND_AGENT, scope: ownSession },
  watchSessions: { roles: ADMIN_AND_AGENT, scope: ownAgent },
  acquireLease: { roles: ADMIN_AND_AGENT, scope: ownSession },
  reportLeases: { roles: ADMIN_AND_AGENT, scope: (r) => ({ sessionIds: r.reports.map((x) => x.sessionId) }) },
  claimIdempotencyKeys: { roles: ADMIN_AND_AGENT, scope: (r) => ({ sessionIds: r.claims.map((c) => c.sessionId) }) },
};

/**
 * WebhookService: only admins register, delete, re-enable endpoints and rotate their secrets
 * (an endpoint receives every session's events); auditors may read them.
 */
export const WEBHOOK_SERVICE_ACCESS: AccessTable<typeof WebhookService> = {
  createWebhookEndpoint: { roles: ADMIN },
  getWebhookEndpoint: { roles: AUDIT },
  listWebhookEndpoints: { roles: AUDIT },
  deleteWebhookEndpoint: { roles: ADMIN },
  enableWebhookEndpoint: { roles: ADMIN },
  rotateWebhookSecret: { roles: ADMIN },
};

/**
 * EventService: readers see every event; an agent only its own, so its
 * filter must name it.
 */
export const EVENT_SERVICE_ACCESS: AccessTable<typeof EventService> = {
  listEvents: { roles: READERS_AND_AGENT, scope: (r) => ({ agentIds: [r.filter?.agentId ?? ""] }) },
  watchEvents: { roles: READERS_AND_AGENT, scope: (r) => ({ agentIds: [r.filter?.agentId ?? ""] }) },
};

/**
 * ApprovalService: approvers (and admins) decide; readers read; an agent
 * reads, watches and cancels its own sessions' approvals, naming the
 * session (the store checks the approval belongs to it).
 */
export const APPROVAL_SERVICE_ACCESS: AccessTable<typeof ApprovalService> = {
  getApproval: { roles: READERS_AND_AGENT, scope: ownSession },
  listApprovals: { roles: READERS_AND_AGENT, scope: (r) => ({ agentIds: [r.agentId], sessionIds: r.sessionId === "" ? [] : [r.sessionId] }) },
  approveApproval: { roles: APPROVERS },
  denyApproval: { roles: APPROVERS },
  cancelApproval: { roles: ADMIN_AND_AGENT, scope: ownSession },
  watchApproval: { roles: READERS_AND_AGENT, scope: ownSession },
};

/** The ApprovalService methods an agent's session token may call (see withSessionTokenAuth). */
export const APPROVAL_TOKEN_METHODS = ["getApproval", "cancelApproval", "watchApproval"] as const;

/**
 * AuditService: admins and auditors read the log and its checkpoints; the
 * checkpoints' public keys are public (verifiers pin them).
 */
export const AUDIT_SERVICE_ACCESS: AccessTable<typeof AuditService> = {
  listAuditRecords: { roles: AUDIT },
  listAuditCheckpoints: { roles: AUDIT },
  getAuditPublicKeys: { roles: [], public: true },
};
