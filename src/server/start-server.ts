import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { createAuth } from "../auth/create-auth.js";
import { guardServices } from "../auth/guard-services.js";
import type { ServerTlsFiles } from "../auth/server-tls.js";
import { file_grpc_health_v1_health, Health } from "../gen/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection, ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { AgentService, file_warden_v1_agent_service } from "../gen/warden/v1/agent_service_pb.js";
import { ApprovalService, file_warden_v1_approval_service } from "../gen/warden/v1/approval_service_pb.js";
import { AuditService, file_warden_v1_audit_service } from "../gen/warden/v1/audit_service_pb.js";
import { loadOrCreateAuditKey } from "../audit/audit-key.js";
import { createAuditService } from "../services/audit-service.js";
import { type AuditCheckpointer, createAuditCheckpointer } from "../store/audit-checkpointer.js";
import { createAuditStore } from "../store/audit-store.js";
import { createApprovalService } from "../services/approval-service.js";
import { createNotifyWatch } from "../store/notify-watch.js";
import { APPROVAL_CHANNEL } from "../store/approval-ledger.js";
import { createEventLog } from "../store/event-log.js";
import { EVENT_CHANNEL } from "../store/outbox.js";
import { EventService, file_warden_v1_event_service } from "../gen/warden/v1/event_service_pb.js";
import { createEventService } from "../services/event-service.js";
import { AuthService, file_warden_v1_auth_service } from "../gen/warden/v1/auth_service_pb.js";
import { file_warden_v1_policy_service, PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { file_warden_v1_session_service, SessionService } from "../gen/warden/v1/session_service_pb.js";
import { file_warden_v1_sync_service, SyncService } from "../gen/warden/v1/sync_service_pb.js";
import { file_warden_v1_webhook_service, WebhookService } from "../gen/warden/v1/webhook_service_pb.js";
import { createChangeFeed } from "../control-plane/change-feed.js";
import { createSyncService } from "../control-plane/sync-service.js";
import { createMetrics, type Metrics } from "../observability/metrics.js";
import { createObservabilityRoutes } from "../observability/observability-routes.js";
import { createReadiness, type Readiness } from "../observability/readiness.js";
import { withDecisionMetrics } from "../observability/with-decision-metrics.js";
import { withQueryMetrics } from "../observability/with-query-metrics.js";
import { createAgentService } from "../services/agent-service.js";
import { createPolicyService } from "../services/policy-service.js";
import { createSessionService } from "../services/session-service.js";
import { createWebhookService } from "../services/webhook-service.js";
import { createWebhookDispatcher, type WebhookDispatcherOptions } from "../webhooks/webhook-dispatcher.js";
import { createWebhookStore } from "../webhooks/webhook-store.js";
import type { Database } from "../store/database.js";
import { migrate } from "../store/migrate.js";
import { createPgDatabase } from "../store/pg-database.js";
import { createPgliteDatabase } from "../store/pglite-database.js";
import { createWardenStore, type WardenStore } from "../store/warden-store.js";
import { routeGrpcJsLogs } from "../transport/grpc-server.js";
import { poolWriterBuffers } from "../transport/writer-buffer-pool.js";
import { createHealthService, HealthStatus } from "../transport/health-service.js";
import { createReflectionService, createReflectionServiceV1Alpha, ServerReflectionV1Alpha } from "../transport/reflection-service.js";
import { withValidation } from "../transport/validation.js";
import { bindListeners } from "./bind-listeners.js";
import { StartSteps } from "./start-steps.js";
import type { Logger } from "./logger.js";
import { DEFAULT_DATA_DIR } from "./role-flags.js";

/** Options of {@link startServer}. */
export interface ServerOptions {
  /** "host:port" of the gRPC listener; port 0 picks a free one. */
  readonly grpcAddress: string;
  /** "host:port" of the Connect / gRPC-Web listener. */
  readonly httpAddress: string;
  /** PGlite data directory, used when no databaseUrl is given. */
  readonly dataDir: string;
  readonly databaseUrl?: string | undefined;
  readonly sweepIntervalMs: number;
  readonly logger: Logger;
  /**
   * Require API keys on admin calls and session tokens on PolicyService
   * (`--require-auth`), as the control plane and sidecar do. Off by
   * default: the all-in-one server is a loopback development server.
   */
  readonly requireAuth?: boolean;
  /** Lifetime of session tokens (`--session-token-ttl`); 30 days by default. */
  readonly sessionTokenTtlMs?: number;
  /**
   * TLS on both listeners (the control plane's `--tls-*` flags, see
   * `serverTlsFromFlags`); plaintext when unset. With a client CA the gRPC
   * listener requires client certificates (mutual TLS, for sidecars) and
   * the Connect listener asks for one but lets clients without one in (for
   * API keys); a verified certificate identifies its agent to `requireAuth`.
   */
  readonly tls?: ServerTlsFiles | undefined;
  /** "host:port" of the optional health listener (`--health-listen`): gRPC health, /healthz, /readyz, /metrics only. */
  readonly healthAddress?: string | undefined;
  /** Injected clock (epoch ms); the wall clock by default. */
  readonly now?: () => number;
  /** How long past expiry an unreleased sidecar lease is written off; default 10 s. */
  readonly leaseReconcileGraceMs?: number;
  /**
   * Webhook delivery (`--webhook-interval`, `--webhook-retry-period`, and
   * for tests the backoff and failure limits); see createWebhookDispatcher.
   */
  readonly webhooks?: Omit<WebhookDispatcherOptions, "store" | "logger">;
  /** WatchEvents sends a heartbeat after this long without an event; default 5 s. */
  readonly eventHeartbeatMs?: number;
  /**
   * The Ed25519 private JWK that signs audit checkpoints (`--audit-key`),
   * created when missing; `<dataDir>/audit-signing-key.jwk` by default,
   * also with PostgreSQL. Never stored in the database.
   */
  readonly auditKeyFile?: string | undefined;
  /** How often a checkpoint is signed (`--audit-checkpoint-interval`); 60 s by default. */
  readonly auditCheckpointIntervalMs?: number;
  /** How long after its session ended a chain is kept (`--audit-retention`); 0 keeps it forever (the default here). */
  readonly auditRetentionMs?: number;
  /** How long after its session ended an idempotency key is kept (`--idempotency-retention`); 0 keeps it forever. Default 24 hours. */
  readonly idempotencyRetentionMs?: number;
}

/** A running `warden serve`. */
export interface RunningServer {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly store: WardenStore;
  /** The health listener's port, when `healthAddress` was given. */
  readonly healthPort: number | undefined;
  /** What /metrics serves. */
  readonly metrics: Metrics;
  /** What /readyz and gRPC health report. */
  readonly readiness: Readiness;
  /** Signs audit checkpoints (on a timer and at close); tests call it directly. */
  readonly auditCheckpointer: AuditCheckpointer;
  /** Stops accepting, lets in-flight calls finish (up to graceMs), closes the store. */
  close(graceMs?: number): Promise<void>;
}

/** One service as both transports mount it. */
interface Mounted {
  readonly service: DescService;
  readonly impl: Partial<ServiceImpl<DescService>>;
}

/**
 * Starts the all-in-one server: store, services, gRPC and Connect listeners,
 * health, reflection and the sweeper. Every service has one implementation,
 * validated once, mounted on both listeners.
 */
export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const log = o.logger;
  routeGrpcJsLogs(log);
  // Every message this process encodes reuses one buffer (see the module).
  poolWriterBuffers();
  // The audit checkpoint key first, before anything is opened: a replica
  // that cannot sign must not start (its changes would go unsigned), and a
  // bad key file must fail the start at once, with nothing left running.
  // (A dataDir of "" — PostgreSQL without a data dir — means the default one.)
  const auditKey = await loadOrCreateAuditKey(o.auditKeyFile ?? join(o.dataDir || DEFAULT_DATA_DIR, "audit-signing-key.jwk"));
  log.info({ keyId: auditKey.keyId }, "audit checkpoints signed with this key");
  const metrics = createMetrics();
  const health = new HealthStatus();
  // Drives the overall gRPC health ("") too, so both kinds of probe agree.
  const readiness = createReadiness({ health });
  readiness.set("store", false, "migrating");
  readiness.set("listeners", false, "starting");
  const routes = createObservabilityRoutes({ registry: metrics.registry, readiness, onError: (err) => log.warn({ err }, "metrics collection failed") });
  const db: Database = withQueryMetrics(
    o.databaseUrl !== undefined ? createPgDatabase({ connectionString: o.databaseUrl }) : await createPgliteDatabase(o.dataDir),
    metrics,
  );
  const steps = new StartSteps();
  steps.opened(() => db.close());
  const applied = await steps.run(() => migrate(db));
  if (applied.length > 0) log.info({ applied }, "migrated");
  readiness.set("store", true);
  // Tokens are issued whether or not they are required, so an agent is
  // written once for both modes; the signing key lives in the store.
  const auth = await steps.run(() => createAuth({ db, now: o.now, tokenTtlMs: o.sessionTokenTtlMs }));
  const store = createWardenStore({ db, now: o.now, leaseReconcileGraceMs: o.leaseReconcileGraceMs, idempotencyRetentionMs: o.idempotencyRetentionMs });
  // Sidecars watch sessions through this replica's one feed of changes.
  const webhookStore = createWebhookStore({ db, now: o.now });
  const feed = await steps.run(() => createChangeFeed({ store, onError: (err) => log.warn({ err }, "change feed read failed") }));
  steps.opened(() => feed.stop());
  // WatchApproval and WatchEvents streams wait on this replica's one LISTEN per channel.
  const approvalWatch = createNotifyWatch({ db, channel: APPROVAL_CHANNEL });
  const eventWatch = createNotifyWatch({ db, channel: EVENT_CHANNEL });
  steps.opened(() => Promise.all([approvalWatch.stop(), eventWatch.stop()]));
  const auditCheckpointer = createAuditCheckpointer({ db, key: auditKey, now: o.now, retentionMs: o.auditRetentionMs });

  const described = [
    file_warden_v1_policy_service,
    file_warden_v1_session_service,
    file_warden_v1_agent_service,
    file_warden_v1_auth_service,
    file_warden_v1_sync_service,
    file_warden_v1_webhook_service,
    file_warden_v1_approval_service,
    file_warden_v1_event_service,
    file_warden_v1_audit_service,
    file_grpc_health_v1_health,
    file_grpc_reflection_v1_reflection,
  ];
  const mounted: Mounted[] = [
    { service: PolicyService, impl: withDecisionMetrics(withValidation(PolicyService, createPolicyService(store)), metrics) },
    { service: SessionService, impl: withValidation(SessionService, createSessionService(store, { tokens: auth.issuer })) },
    { service: AgentService, impl: withValidation(AgentService, createAgentService(store)) },
    { service: AuthService, impl: withValidation(AuthService, auth.authService) },
    { service: WebhookService, impl: withValidation(WebhookService, createWebhookService(webhookStore)) },
    { service: ApprovalService, impl: withValidation(ApprovalService, createApprovalService(store, approvalWatch)) },
    { service: EventService, impl: withValidation(EventService, createEventService({ log: createEventLog(db), watch: eventWatch, heartbeatMs: o.eventHeartbeatMs })) },
    { service: SyncService, impl: withValidation(SyncService, createSyncService({ store, feed })) },
    { service: AuditService, impl: withValidation(AuditService, createAuditService(createAuditStore(db))) },
    { service: Health, impl: createHealthService(health) },
    { service: ServerReflection, impl: createReflectionService(described) },
    // grpcurl and older tools still ask v1alpha first.
    { service: ServerReflectionV1Alpha, impl: createReflectionServiceV1Alpha(described) },
  ] as Mounted[];
  // With --require-auth every Warden service checks credentials (one
  // without access rules stops the start); health and reflection stay open.
  const served = await steps.run(() => (o.requireAuth === true ? guardServices(mounted, auth) : mounted));

  const onError = (err: unknown, method: string) => log.error({ err, method }, "handler failed");
  const { grpc: grpcServer, connect: connectServer, health: healthListener } = await bindListeners(steps, {
    grpcAddress: o.grpcAddress,
    httpAddress: o.httpAddress,
    healthAddress: o.healthAddress,
    services: served,
    health,
    routes,
    onError,
    tls: o.tls,
  });
  // Each service's health follows readiness as "" does: a client or proxy
  // that checks a service by name turns away while this replica drains.
  // (Health and reflection answer to the end.)
  const alwaysOn = new Set<DescService>([Health, ServerReflection, ServerReflectionV1Alpha]);
  for (const m of mounted) if (alwaysOn.has(m.service)) health.set(m.service.typeName, "SERVING");
  readiness.follow(mounted.filter((m) => !alwaysOn.has(m.service)).map((m) => m.service.typeName));
  readiness.set("listeners", true);

  // Sweeps run one at a time; a failure is logged and retried next tick.
  let sweeping: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (sweeping) return;
    sweeping = store
      .sweep()
      .then((r) => {
        const { leases } = r;
        if (leases.leases > 0) {
          metrics.recordLeaseOperation("reconcile", leases.leases);
          metrics.recordReconciledMicros(leases.writtenOffValue);
        }
        metrics.recordHoldWrittenOffMicros(r.holdsWrittenOff.value);
        // The rest was swept; these are tried again next tick.
        if (r.failures.length > 0) log.warn({ err: r.failures[0], failures: r.failures.length }, "sweep: some steps failed");
        if (r.sessions + r.holds + r.approvals + leases.leases + r.keysPruned > 0) {
          log.info(
            {
              sessions: r.sessions,
              holds: r.holds,
              holdsWrittenOff: r.holdsWrittenOff.holds,
              holdsWrittenOffMicros: String(r.holdsWrittenOff.value),
              approvals: r.approvals,
              leasesReconciled: leases.leases,
              writtenOffMicros: String(leases.writtenOffValue),
              writtenOffActions: String(leases.writtenOffActions),
              idempotencyKeysPrunedSessions: r.keysPruned,
            },
            "swept",
          );
        }
      })
      .catch((err: unknown) => log.warn({ err }, "sweep failed"))
      .finally(() => {
        sweeping = undefined;
      });
  }, o.sweepIntervalMs);
  timer.unref();
  steps.opened(() => clearInterval(timer));
  // Holds and sessions that lapsed while the server was down go at once.
  await steps.run(() => store.sweep());
  // Checkpoints, one at a time like sweeps; a failure is retried next tick.
  let checkpointing: Promise<void> | undefined;
  const checkpoint = () => {
    checkpointing ??= auditCheckpointer
      .checkpoint()
      .then((r) => {
        if (r !== undefined) log.info({ checkpoint: String(r.seq), heads: r.heads, pruned: r.pruned }, "audit checkpoint signed");
      })
      .catch((err: unknown) => log.warn({ err }, "audit checkpoint failed"))
      .finally(() => {
        checkpointing = undefined;
      });
    return checkpointing;
  };
  const checkpointTimer = setInterval(() => void checkpoint(), o.auditCheckpointIntervalMs ?? 60_000);
  checkpointTimer.unref();
  const dispatcher = createWebhookDispatcher({ ...o.webhooks, store: webhookStore, logger: log });

  return {
    grpcPort: grpcServer.port,
    httpPort: connectServer.port,
    healthPort: healthListener?.port,
    store,
    metrics,
    readiness,
    auditCheckpointer,
    async close(graceMs = 10_000) {
      // Probes turn traffic away first, while calls in flight drain.
      readiness.shutdown();
      clearInterval(timer);
      clearInterval(checkpointTimer);
      const dispatcherStopped = dispatcher.stop();
      // Watch streams never end on their own: end them first.
      const feedStopped = feed.stop();
      const approvalWatchStopped = approvalWatch.stop();
      const eventWatchStopped = eventWatch.stop();
      await Promise.all([grpcServer.close(graceMs), connectServer.close(graceMs)]);
      // Last, so probes and scrapes see the drain; nothing on it needs a grace period.
      await healthListener?.close(0);
      await sweeping;
      await dispatcherStopped;
      await feedStopped;
      await approvalWatchStopped;
      await eventWatchStopped;
      // Last, after every call drained: what this replica wrote leaves signed.
      await checkpointing;
      await checkpoint();
      await db.close();
    },
  };
}
