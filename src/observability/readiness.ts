import type { HealthStatus } from "../transport/health-service.js";

/** One thing a process waits for before it takes traffic, e.g. "store" or "control-plane". */
export interface ReadinessCondition {
  readonly name: string;
  readonly ready: boolean;
  /** Why it is not ready, for people: "migrating", "unreachable since 2025-…". */
  readonly detail?: string;
}

/**
 * Whether a process should get traffic (ready) and whether it is alive,
 * fed by the role as its dependencies come and go, read by `/readyz`,
 * `/healthz` and, through the {@link HealthStatus} it drives, by
 * `grpc.health.v1.Health`, so HTTP probes and gRPC probes never disagree.
 */
export interface Readiness {
  /**
   * Sets a condition. The first `set` of a name adds it; the process is
   * ready when every condition is, and it is not shutting down.
   */
  set(name: string, ready: boolean, detail?: string): void;
  /** Every condition and shutdown are fine. */
  readonly ready: boolean;
  /** Not shutting down: what `/healthz` (liveness) reports. */
  readonly live: boolean;
  /** The conditions, in the order they were first set. */
  conditions(): ReadinessCondition[];
  /**
   * Adds services of the health registry that follow readiness from now
   * on, as `services` of the options do: for a role that knows what it
   * serves only once the services are built.
   */
  follow(services: readonly string[]): void;
  /**
   * Marks the process as shutting down: not ready and not live from now on,
   * whatever the conditions say, so probes turn away traffic while calls in
   * flight drain. There is no way back.
   */
  shutdown(): void;
}

/** Options of {@link createReadiness}. */
export interface ReadinessOptions {
  /**
   * The health registry whose overall service "" follows readiness:
   * SERVING exactly when ready, NOT_SERVING otherwise. Kubernetes gRPC
   * probes check "".
   */
  readonly health?: HealthStatus;
  /**
   * Services of `health` that follow readiness as "" does, e.g.
   * "warden.v1.PolicyService" on a sidecar that cannot decide until it has
   * synced.
   */
  readonly services?: readonly string[];
}

/**
 * Creates a {@link Readiness} with no conditions (ready) and syncs the
 * health registry to it at once.
 */
export function createReadiness(options: ReadinessOptions = {}): Readiness {
  const conditions = new Map<string, ReadinessCondition>();
  let shuttingDown = false;
  const isReady = () => {
    if (shuttingDown) return false;
    for (const c of conditions.values()) if (!c.ready) return false;
    return true;
  };
  const services = ["", ...(options.services ?? [])];
  const sync = () => {
    const status = isReady() ? "SERVING" : "NOT_SERVING";
    for (const service of services) options.health?.set(service, status);
  };
  sync();
  return {
    set(name, ready, detail) {
      conditions.set(name, detail === undefined || detail === "" ? { name, ready } : { name, ready, detail });
      sync();
    },
    get ready() {
      return isReady();
    },
    get live() {
      return !shuttingDown;
    },
    conditions: () => [...conditions.values()],
    follow(more) {
      services.push(...more);
      sync();
    },
    shutdown() {
      shuttingDown = true;
      sync();
    },
  };
}
