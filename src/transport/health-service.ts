import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from "../gen/grpc/health/v1/health_pb.js";

/** A serving status, as the enum value or its name (e.g. "SERVING"). */
export type ServingStatus = HealthCheckResponse_ServingStatus | keyof typeof HealthCheckResponse_ServingStatus;

/** Receives the new status of a watched service. */
export type HealthListener = (status: HealthCheckResponse_ServingStatus) => void;

/**
 * The serving status of each service, as `grpc.health.v1.Health` reports
 * it. The empty name "" is the server as a whole, which Kubernetes gRPC
 * probes and most load balancers check; it starts as SERVING, as in
 * grpc-go, because a server that answers at all is up.
 *
 * One registry backs the Health service on both stacks, so the gRPC port
 * and the Connect port always agree.
 */
export class HealthStatus {
  readonly #statuses = new Map<string, HealthCheckResponse_ServingStatus>([["", HealthCheckResponse_ServingStatus.SERVING]]);
  readonly #listeners = new Map<string, Set<HealthListener>>();

  /** Sets the status of a service ("" for the whole server) and tells its watchers. */
  set(service: string, status: ServingStatus): void {
    const value = typeof status === "string" ? HealthCheckResponse_ServingStatus[status] : status;
    if (this.#statuses.get(service) === value) return;
    this.#statuses.set(service, value);
    this.#notify(service, value);
  }

  /** Forgets a service: Check answers NOT_FOUND, watchers see SERVICE_UNKNOWN. */
  delete(service: string): void {
    if (this.#statuses.delete(service)) this.#notify(service, HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN);
  }

  /** The status of a service, or undefined if it was never set. */
  get(service: string): HealthCheckResponse_ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /**
   * Calls `listener` on every change of a service's status (not with the
   * current one). Returns the function that unsubscribes.
   */
  subscribe(service: string, listener: HealthListener): () => void {
    let set = this.#listeners.get(service);
    if (set === undefined) this.#listeners.set(service, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.#listeners.get(service) === set) this.#listeners.delete(service);
    };
  }

  /** How many listeners (open Watch calls, mostly) a service has; for metrics and tests. */
  listenerCount(service: string): number {
    return this.#listeners.get(service)?.size ?? 0;
  }

  #notify(service: string, status: HealthCheckResponse_ServingStatus): void {
    const set = this.#listeners.get(service);
    if (set === undefined) return;
    // A copy, so a listener may unsubscribe while we iterate.
    for (const listener of [...set]) listener(status);
  }
}

/**
 * The one implementation of `grpc.health.v1.Health`, backed by `status`.
 *
 * - Check answers the current status, or NOT_FOUND for a service that was
 *   never registered (as the health checking protocol specifies).
 * - Watch sends the current status (SERVICE_UNKNOWN if unregistered) and
 *   then each change, until the call ends. Changes that happen while a
 *   message is being sent are coalesced: a watcher always converges on the
 *   latest status, which is all the protocol promises. When the call's
 *   signal aborts (client gone, deadline, server shutdown) the stream ends
 *   with the abort reason, e.g. UNAVAILABLE when the server shuts down.
 */
export function createHealthService(status: HealthStatus): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const current = status.get(req.service);
      if (current === undefined) throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
      return { status: current };
    },

    async *watch(req, ctx) {
      const signal = ctx.signal;
      let latest = status.get(req.service) ?? HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN;
      let sent: HealthCheckResponse_ServingStatus | undefined;
      let wake: (() => void) | undefined;
      const unsubscribe = status.subscribe(req.service, (s) => {
        latest = s;
        wake?.();
      });
      const onAbort = () => wake?.();
      signal.addEventListener("abort", onAbort);
      try {
        for (;;) {
          if (signal.aborted) throw ConnectError.from(signal.reason, Code.Canceled);
          if (latest !== sent) {
            sent = latest;
            yield create(HealthCheckResponseSchema, { status: latest });
            continue;
          }
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      } finally {
        unsubscribe();
        signal.removeEventListener("abort", onAbort);
      }
    },
  };
}
