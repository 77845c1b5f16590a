import { createSidecarCredentials, sidecarCredentialOptionsFromFlags } from "../auth/sidecar-credentials.js";
import { createLogger } from "../server/logger.js";
import { redactUrl } from "../server/redact-url.js";
import { optimizeFor } from "../server/optimize-for.js";
import { parseRoleFlags, positiveInt, usageOf } from "../server/role-flags.js";
import { runUntilSignal } from "../server/run-until-signal.js";
import { MAX_LEASE_TTL_MS } from "../store/lease-ledger.js";
import { startSidecar } from "./start-sidecar.js";

/**
 * `warden sidecar`: PolicyService for one agent, decided from a cache and
 * budget leases synced from the control plane. It holds no database
 * credentials.
 */
export async function sidecarCommand(argv: string[]): Promise<void> {
  const { help, values } = parseRoleFlags("sidecar", argv);
  if (help) {
    process.stdout.write(usageOf("sidecar", "Runs the sidecar beside one agent: decisions in microseconds from a synced cache and budget leases."));
    return;
  }
  optimizeFor(values["optimize-for"] as "memory" | "speed");
  const logger = createLogger(values["log-level"]!);
  // Read before anything starts: a bad value found after would leave it serving, with no signal handler.
  const shutdownGraceMs = positiveInt(values, "shutdown-grace");
  const controlPlaneUrl = values["control-plane"]!;
  const mode = values["decision-mode"] as "lease" | "exact";
  const credentials = createSidecarCredentials(sidecarCredentialOptionsFromFlags(values));
  if (credentials.tls !== controlPlaneUrl.startsWith("https://")) {
    throw new Error(`--control-plane: use ${credentials.tls ? "https://" : "http://"} ${credentials.tls ? "with" : "without"} --tls-* files`);
  }
  const leaseTtlMs = positiveInt(values, "lease-ttl");
  // The control plane grants no longer leases and takes no longer claims:
  // above it every keyed call's claim would be refused.
  if (leaseTtlMs > MAX_LEASE_TTL_MS) throw new Error(`--lease-ttl: ${leaseTtlMs} is above ${MAX_LEASE_TTL_MS} (5 minutes), the longest lease the control plane grants`);
  const sidecar = await startSidecar({
    grpcAddress: values["grpc-listen"]!,
    httpAddress: values["http-listen"]!,
    controlPlaneUrl,
    agentId: values["agent-id"]!,
    decisionMode: mode,
    stalenessBoundMs: positiveInt(values, "staleness-bound"),
    leaseTtlMs,
    reportIntervalMs: positiveInt(values, "report-interval"),
    cacheMaxSessions: positiveInt(values, "cache-max-sessions"),
    cacheMaxBytes: positiveInt(values, "cache-max-bytes"),
    controlPlaneTransport: { interceptors: credentials.interceptors, nodeOptions: credentials.nodeOptions as Record<string, unknown> | undefined },
    healthAddress: values["health-listen"],
    logger,
  });
  runUntilSignal(logger, (grace) => sidecar.close(grace), shutdownGraceMs);
  logger.info(
    {
      role: "sidecar",
      grpcPort: sidecar.grpcPort,
      httpPort: sidecar.httpPort,
      healthPort: sidecar.healthPort,
      controlPlane: redactUrl(controlPlaneUrl),
      agentId: values["agent-id"],
      decisionMode: mode,
    },
    "listening",
  );
}
