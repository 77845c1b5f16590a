import type { ConnectRouter } from "@connectrpc/connect";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { createConnectServer, type HttpRoutes, type ListeningServer } from "../transport/connect-server.js";
import { createHealthService, type HealthStatus } from "../transport/health-service.js";

/** Options of {@link startHealthListener}. */
export interface HealthListenerOptions {
  /** The registry behind `grpc.health.v1.Health`; the same one the main listeners serve. */
  readonly health: HealthStatus;
  /** The plain HTTP routes, normally `createObservabilityRoutes(…)`: `/metrics`, `/healthz`, `/readyz`. */
  readonly routes: HttpRoutes;
}

/**
 * Starts the listener of `--health-listen`: only `grpc.health.v1.Health`
 * (gRPC over h2c, which is what Kubernetes gRPC probes speak, plus Connect
 * and gRPC-Web) and the plain routes, on one port. It lets probes and
 * Prometheus reach a pod on its IP while the decision API stays on
 * loopback, without exposing anything that reads or spends a budget.
 */
export async function startHealthListener(address: string, options: HealthListenerOptions): Promise<ListeningServer> {
  const impl = createHealthService(options.health);
  return createConnectServer(address, (router: ConnectRouter) => router.service(Health, impl), { httpRoutes: options.routes });
}
