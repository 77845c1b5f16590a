import type { DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { file_grpc_health_v1_health, Health } from "../gen/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection, ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { AgentService, file_warden_v1_agent_service } from "../gen/warden/v1/agent_service_pb.js";
import { file_warden_v1_policy_service, PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { file_warden_v1_session_service, SessionService } from "../gen/warden/v1/session_service_pb.js";
import { createAgentService } from "../services/agent-service.js";
import { createPolicyService } from "../services/policy-service.js";
import { createSessionService } from "../services/session-service.js";
import type { Database } from "../store/database.js";
import { migrate } from "../store/migrate.js";
import { createPgDatabase } from "../store/pg-database.js";
import { createPgliteDatabase } from "../store/pglite-database.js";
import { createWardenStore, type WardenStore } from "../store/warden-store.js";
import { createConnectServer } from "../transport/connect-server.js";
import { createGrpcServer } from "../transport/grpc-server.js";
import { createHealthService, HealthStatus } from "../transport/health-service.js";
import { createReflectionService, createReflectionServiceV1Alpha, ServerReflectionV1Alpha } from "../transport/reflection-service.js";
import { withValidation } from "../transport/validation.js";
import type { Logger } from "./logger.js";

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
  /** Injected clock (epoch ms); the wall clock by default. */
  readonly now?: () => number;
}

/** A running `warden serve`. */
export interface RunningServer {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly store: WardenStore;
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
  const db: Database =
    o.databaseUrl !== undefined ? createPgDatabase({ connectionString: o.databaseUrl }) : await createPgliteDatabase(o.dataDir);
  const applied = await migrate(db);
  if (applied.length > 0) log.info({ applied }, "migrated");
  const store = createWardenStore({ db, now: o.now });

  const health = new HealthStatus();
  const described = [
    file_warden_v1_policy_service,
    file_warden_v1_session_service,
    file_warden_v1_agent_service,
    file_grpc_health_v1_health,
    file_grpc_reflection_v1_reflection,
  ];
  const mounted: Mounted[] = [
    { service: PolicyService, impl: withValidation(PolicyService, createPolicyService(store)) },
    { service: SessionService, impl: withValidation(SessionService, createSessionService(store)) },
    { service: AgentService, impl: withValidation(AgentService, createAgentService(store)) },
    { service: Health, impl: createHealthService(health) },
    { service: ServerReflection, impl: createReflectionService(described) },
    // grpcurl and older tools still ask v1alpha first.
    { service: ServerReflectionV1Alpha, impl: createReflectionServiceV1Alpha(described) },
  ] as Mounted[];

  const onError = (err: unknown, method: string) => log.error({ err, method }, "handler failed");
  const grpcServer = await createGrpcServer(o.grpcAddress, mounted, { onError });
  const connectServer = await createConnectServer(
    o.httpAddress,
    (router: ConnectRouter) => {
      for (const m of mounted) router.service(m.service, m.impl);
    },
    { onError },
  );
  for (const m of mounted) health.set(m.service.typeName, "SERVING");
  health.set("", "SERVING");

  // Sweeps run one at a time; a failure is logged and retried next tick.
  let sweeping: Promise<void> | undefined;
  const timer = setInterval(() => {
    if (sweeping) return;
    sweeping = store
      .sweep()
      .then((r) => {
        if (r.sessions + r.holds > 0) log.info(r, "swept");
      })
      .catch((err: unknown) => log.warn({ err }, "sweep failed"))
      .finally(() => {
        sweeping = undefined;
      });
  }, o.sweepIntervalMs);
  timer.unref();
  // Holds and sessions that lapsed while the server was down go at once.
  await store.sweep();

  return {
    grpcPort: grpcServer.port,
    httpPort: connectServer.port,
    store,
    async close(graceMs = 10_000) {
      health.set("", "NOT_SERVING");
      clearInterval(timer);
      await Promise.all([grpcServer.close(graceMs), connectServer.close(graceMs)]);
      await sweeping;
      await db.close();
    },
  };
}
