import { hostname } from "node:os";
import { type DescService, toJson } from "@bufbuild/protobuf";
import type { JSONWebKeySet } from "jose";
import { createClient, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { CalendarSpanCache } from "../core/windows.js";
import { file_grpc_health_v1_health, Health } from "../gen/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection, ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { file_warden_v1_policy_service, PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { SyncService } from "../gen/warden/v1/sync_service_pb.js";
import { AuthService, GetSigningKeysResponseSchema } from "../gen/warden/v1/auth_service_pb.js";
import { createSessionTokenVerifier } from "../auth/session-tokens.js";
import { anotherAgentsSession, withSessionTokenAuth } from "../auth/with-session-token-auth.js";
import { APPROVAL_TOKEN_METHODS } from "../auth/access-tables.js";
import { ApprovalService, file_warden_v1_approval_service } from "../gen/warden/v1/approval_service_pb.js";
import { createSidecarApprovalService } from "./sidecar-approval-service.js";
import { createMetrics, type Metrics } from "../observability/metrics.js";
import { createObservabilityRoutes } from "../observability/observability-routes.js";
import { createReadiness } from "../observability/readiness.js";
import { withDecisionMetrics } from "../observability/with-decision-metrics.js";
import type { Logger } from "../server/logger.js";
import { bindListeners } from "../server/bind-listeners.js";
import { StartSteps } from "../server/start-steps.js";
import { routeGrpcJsLogs } from "../transport/grpc-server.js";
import { poolWriterBuffers } from "../transport/writer-buffer-pool.js";
import { createHealthService, HealthStatus } from "../transport/health-service.js";
import { createReflectionService, createReflectionServiceV1Alpha, ServerReflectionV1Alpha } from "../transport/reflection-service.js";
import { withValidation } from "../transport/validation.js";
import { ReportQueue } from "./report-queue.js";
import { SessionCache } from "./session-cache.js";
import { type EngineEvents, SidecarEngine } from "./sidecar-engine.js";
import { createSidecarPolicyService } from "./sidecar-policy-service.js";
import { SyncClient } from "./sync-client.js";

/** Options of {@link startSidecar}. */
export interface SidecarOptions {
  readonly grpcAddress: string;
  readonly httpAddress: string;
  /** gRPC base URL of any control-plane replica, e.g. "http://127.0.0.1:50052". */
  readonly controlPlaneUrl: string;
  /** The agent whose sessions this sidecar serves. */
  readonly agentId: string;
  /** "exact": every decision through the control plane, recorded before it is answered. Default "lease". */
  readonly decisionMode?: "lease" | "exact";
  readonly stalenessBoundMs: number;
  readonly leaseTtlMs: number;
  readonly reportIntervalMs: number;
  readonly cacheMaxSessions: number;
  readonly cacheMaxBytes: number;
  readonly logger: Logger;
  /** Extra client options to reach the control plane (credentials, TLS). */
  readonly controlPlaneTransport?: { interceptors?: Interceptor[]; nodeOptions?: Record<string, unknown> };
  /** This sidecar's name in leases; host and pid by default. */
  readonly holder?: string;
  readonly events?: EngineEvents;
  /**
   * Require a session token (from CreateSession) on every PolicyService
   * call, verified offline against the control plane's published keys.
   * Default true.
   */
  readonly requireSessionTokens?: boolean;
  /** "host:port" of the optional health listener (gRPC health, /healthz, /readyz, /metrics). */
  readonly healthAddress?: string | undefined;
}

/** A running sidecar. */
export interface RunningSidecar {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly engine: SidecarEngine;
  readonly cache: SessionCache;
  readonly sync: SyncClient;
  readonly reports: ReportQueue;
  readonly health: HealthStatus;
  readonly metrics: Metrics;
  /** The health listener's port, when `healthAddress` was given. */
  readonly healthPort: number | undefined;
  /** Stops accepting, drains calls, returns leases and reports what is queued (up to graceMs). */
  close(graceMs?: number): Promise<void>;
}

interface Mounted {
  readonly service: DescService;
  readonly impl: Partial<ServiceImpl<DescService>>;
}

/**
 * Starts `warden sidecar`: PolicyService for the local agent, decided from
 * a session cache kept in step with the control plane and from budget
 * leases; no database. Ready (gRPC health SERVING) once the watch stream
 * is in step, and NOT_SERVING while the control plane has been away past
 * the staleness bound.
 */
export async function startSidecar(o: SidecarOptions): Promise<RunningSidecar> {
  const log = o.logger;
  routeGrpcJsLogs(log);
  // Every message this process encodes reuses one buffer (see the module).
  poolWriterBuffers();
  const transport = createGrpcTransport({
    baseUrl: o.controlPlaneUrl,
    interceptors: o.controlPlaneTransport?.interceptors,
    nodeOptions: o.controlPlaneTransport?.nodeOptions as never,
    // A dead control plane must not hold a decision for long.
    defaultTimeoutMs: 5_000,
  });
  const sync = createClient(SyncService, transport);
  const policy = createClient(PolicyService, transport);
  const authClient = createClient(AuthService, transport);
  const metrics = createMetrics({ sync: true });
  const holder = o.holder ?? `${hostname()}-${process.pid}`;

  let engine: SidecarEngine | undefined;
  const cache = new SessionCache({
    maxSessions: o.cacheMaxSessions,
    maxBytes: o.cacheMaxBytes,
    fetch: async (sessionId) => {
      const res = await sync.getSessionState({ sessionId });
      // The control plane answers whatever the sidecar's credential may
      // read (an admin key reads every agent's sessions), but the watch
      // covers only this agent: another agent's session would never hear
      // of its revocation here, so it is never served.
      const own = res.sessions.find((s) => s.sessionId === sessionId);
      if (own !== undefined && own.agentId !== o.agentId) throw anotherAgentsSession(sessionId, own.agentId, o.agentId);
      return res;
    },
    onLookup: (hit) => metrics.recordCacheLookup(hit),
    onChange: (before, after) => {
      if (after !== undefined) log.debug({ sessionId: after.sessionId, status: after.status, revision: after.revision }, "session changed");
      engine?.onSessionChange(before, after);
    },
    onAgentChange: (agentId) => {
      log.debug({ agentId }, "agent policy changed");
      engine?.onAgentChange(agentId);
    },
  });
  metrics.watchCacheSize(() => ({ sessions: cache.size, bytes: cache.bytes }));
  metrics.setStalenessBound(o.stalenessBoundMs / 1000);
  const reports = new ReportQueue({
    holder,
    send: (req) => sync.reportLeases(req),
    intervalMs: o.reportIntervalMs,
    onRejected: (rejected) => {
      metrics.recordRejectedSettlements(rejected.length);
      log.warn({ rejected }, "store refused settlements");
    },
    onError: (err) => log.debug({ err }, "report failed; kept for the next try"),
    onSend: (result) => metrics.recordReportSend(result),
    onSent: (records) => metrics.recordReportedRecords(records),
    onRefused: (sessionId, err) =>
      log.error({ sessionId, err: err.rawMessage }, "control plane refuses this session's reports; kept apart and retried each second, the others go on"),
  });
  metrics.watchReportBacklog(() => reports.backlog());
  const syncClient = new SyncClient({
    sync,
    cache,
    agentId: o.agentId,
    stalenessBoundMs: o.stalenessBoundMs,
    onError: (err, attempt) => (attempt === 0 ? log.warn({ err }, "watch stream broke; reconnecting") : log.debug({ err, attempt }, "watch reconnect failed")),
    onConnected: (up) => {
      metrics.setControlPlaneConnected(up);
      log.info({ connected: up }, up ? "control plane connected" : "control plane disconnected");
    },
    onMessage: (lagMs, revision) => {
      metrics.markSyncContact();
      metrics.recordSyncApplied(revision, Math.max(0, lagMs) / 1000);
      // Ready the moment the first message lands (or the first after a stale spell).
      if (!readiness.ready) updateReadiness();
    },
    onStale: () => updateReadiness(),
    onSettledHolds: (holds) => engine?.forgetSettledHolds(holds),
  });
  engine = new SidecarEngine({
    cache,
    controlPlane: { sync, policy },
    reports,
    holder,
    spans: new CalendarSpanCache(),
    leaseTtlMs: o.leaseTtlMs,
    exactOnly: o.decisionMode === "exact",
    fresh: () => syncClient.fresh(),
    contact: (ok) => syncClient.contact(ok),
    stale: () => syncClient.nudge(),
    events: {
      lease: (op) => {
        metrics.recordLeaseOperation(op);
        o.events?.lease?.(op);
      },
      path: o.events?.path,
      claim: (result) => metrics.recordClaim(result),
    },
  });

  const health = new HealthStatus();
  // Drives gRPC health ("" and the services served) and /readyz alike.
  const readiness = createReadiness({ health, services: [PolicyService.typeName, ApprovalService.typeName] });
  readiness.set("listeners", false, "starting");
  readiness.set("sync", false, "waiting for the first message from the control plane");
  const routes = createObservabilityRoutes({ registry: metrics.registry, readiness, onError: (err) => log.warn({ err }, "metrics collection failed") });
  let decide = createSidecarPolicyService(engine, policy);
  let approvals = createSidecarApprovalService(createClient(ApprovalService, transport));
  if (o.requireSessionTokens !== false) {
    const verifier = createSessionTokenVerifier({
      fetchJwks: async () => toJson(GetSigningKeysResponseSchema, await authClient.getSigningKeys({})) as unknown as JSONWebKeySet,
    });
    decide = withSessionTokenAuth(PolicyService, decide, { verifier, agentId: o.agentId }) as typeof decide;
    approvals = withSessionTokenAuth(ApprovalService, approvals, { verifier, tokenMethods: APPROVAL_TOKEN_METHODS, agentId: o.agentId }) as typeof approvals;
  }
  const described = [file_warden_v1_policy_service, file_warden_v1_approval_service, file_grpc_health_v1_health, file_grpc_reflection_v1_reflection];
  const mounted: Mounted[] = [
    { service: PolicyService, impl: withDecisionMetrics(withValidation(PolicyService, decide), metrics) },
    { service: ApprovalService, impl: withValidation(ApprovalService, approvals) },
    { service: Health, impl: createHealthService(health) },
    { service: ServerReflection, impl: createReflectionService(described) },
    { service: ServerReflectionV1Alpha, impl: createReflectionServiceV1Alpha(described) },
  ] as Mounted[];
  const onError = (err: unknown, method: string) => log.error({ err, method }, "handler failed");
  function updateReadiness(): void {
    const fresh = syncClient.fresh();
    readiness.set(
      "sync",
      syncClient.synced && fresh,
      !syncClient.synced ? "waiting for the first message from the control plane" : fresh ? undefined : `control plane unheard for over ${o.stalenessBoundMs} ms (the staleness bound)`,
    );
  }

  // The watch stream first: connecting to the control plane and waiting
  // for its first message overlaps with binding the listeners, and ready
  // needs both. Calls cannot arrive before the listeners exist.
  const steps = new StartSteps();
  syncClient.start();
  reports.start();
  engine.start();
  steps.opened(() => {
    engine?.stop();
    reports.stop();
    return syncClient.stop();
  });
  const { grpc: grpcServer, connect: connectServer, health: healthListener } = await bindListeners(steps, {
    grpcAddress: o.grpcAddress,
    httpAddress: o.httpAddress,
    healthAddress: o.healthAddress,
    services: mounted,
    health,
    routes,
    onError,
  });
  readiness.set("listeners", true);
  // From here readiness changes only on events: a message (onMessage), the
  // staleness bound passing (onStale), shutdown. No timer polls it.
  updateReadiness();

  return {
    grpcPort: grpcServer.port,
    httpPort: connectServer.port,
    engine,
    cache,
    sync: syncClient,
    reports,
    health,
    metrics,
    healthPort: healthListener?.port,
    async close(graceMs = 10_000) {
      readiness.shutdown();
      const deadline = Date.now() + graceMs;
      await Promise.all([grpcServer.close(graceMs), connectServer.close(graceMs)]);
      // Leases go back (one being granted too, as it lands) and every queued
      // record reaches the store, if it can.
      engine.stop();
      reports.stop();
      await engine.settled();
      const drained = await reports.drain(Math.max(deadline, Date.now() + 1000));
      if (!drained) log.error({ pending: reports.size }, "control plane unreachable at shutdown: unreported decisions stay counted as spent until their leases are reconciled");
      await syncClient.stop();
      await healthListener?.close(0);
    },
  };
}
