import type { Logger } from "./logger.js";
import { databaseUrlFlag, nonNegativeInt, positiveInt } from "./role-flags.js";
import type { ServerOptions } from "./start-server.js";

/**
 * The options `warden serve` and `warden control-plane` share, from their
 * parsed flags: listeners, the store and the background jobs on it. Each
 * role adds its own (auth, TLS, lease reconciliation).
 */
export function storeServerOptions(values: Record<string, string | undefined>, logger: Logger) {
  return {
    grpcAddress: values["grpc-listen"]!,
    httpAddress: values["http-listen"]!,
    dataDir: values["data-dir"]!,
    databaseUrl: databaseUrlFlag(values["database-url"]),
    sweepIntervalMs: positiveInt(values, "sweep-interval"),
    webhooks: { intervalMs: positiveInt(values, "webhook-interval"), retryPeriodMs: positiveInt(values, "webhook-retry-period") },
    healthAddress: values["health-listen"],
    auditKeyFile: values["audit-key"],
    auditCheckpointIntervalMs: positiveInt(values, "audit-checkpoint-interval"),
    auditRetentionMs: nonNegativeInt(values, "audit-retention"),
    idempotencyRetentionMs: nonNegativeInt(values, "idempotency-retention"),
    sessionTokenTtlMs: positiveInt(values, "session-token-ttl"),
    logger,
  } satisfies Partial<ServerOptions>;
}
