import type { ConnectRouter } from "@connectrpc/connect";
import { createServerCredentials, readListenerTls, type ServerTlsFiles } from "../auth/server-tls.js";
import { type HealthListenerOptions, startHealthListener } from "../observability/start-health-listener.js";
import { createConnectServer, type ListeningServer } from "../transport/connect-server.js";
import { createGrpcServer, type GrpcServer, type MountedService } from "../transport/grpc-server.js";
import type { HandlerErrorHook } from "../transport/normalize-error.js";
import type { StartSteps } from "./start-steps.js";

/** What a role serves, and where. */
export interface ListenersOptions extends HealthListenerOptions {
  /** gRPC (`@grpc/grpc-js`). */
  readonly grpcAddress: string;
  /** Connect, gRPC-Web and gRPC, plus the plain routes. */
  readonly httpAddress: string;
  /** The health-only listener (`--health-listen`), when asked for. */
  readonly healthAddress?: string | undefined;
  readonly services: readonly MountedService[];
  readonly onError: HandlerErrorHook;
  /** TLS on both main listeners; plaintext without. */
  readonly tls?: ServerTlsFiles | undefined;
}

/** A role's bound listeners. */
export interface Listeners {
  readonly grpc: GrpcServer;
  readonly connect: ListeningServer;
  readonly health: ListeningServer | undefined;
}

/**
 * Binds a role's listeners as steps of its start, each registered to be
 * closed if a later step fails (a port already taken, say). The health
 * listener comes first, so probes hear "not ready" rather than nothing
 * while the others start.
 */
export async function bindListeners(steps: StartSteps, o: ListenersOptions): Promise<Listeners> {
  const { healthAddress, onError, tls } = o;
  const health = healthAddress === undefined ? undefined : await steps.run(() => startHealthListener(healthAddress, o));
  steps.opened(() => health?.close(0));
  const grpc = await steps.run(() => createGrpcServer(o.grpcAddress, o.services, { onError, credentials: createServerCredentials(tls) }));
  steps.opened(() => grpc.close(0));
  const connect = await steps.run(() =>
    createConnectServer(
      o.httpAddress,
      (router: ConnectRouter) => {
        for (const m of o.services) router.service(m.service, m.impl);
      },
      { onError, httpRoutes: o.routes, tls: tls === undefined ? undefined : readListenerTls(tls) },
    ),
  );
  steps.opened(() => connect.close(0));
  return { grpc, connect, health };
}
