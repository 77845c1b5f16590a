import { serverTlsFromFlags } from "../auth/server-tls.js";
import { createLogger } from "../server/logger.js";
import { redactUrl } from "../server/redact-url.js";
import { parseRoleFlags, positiveInt, usageOf } from "../server/role-flags.js";
import { runUntilSignal } from "../server/run-until-signal.js";
import { startServer } from "../server/start-server.js";
import { storeServerOptions } from "../server/store-server-options.js";

/**
 * `warden control-plane`: the system of record for a cluster. It serves
 * SessionService, AgentService, PolicyService (exact decisions) and the
 * SyncService that sidecars watch and lease through; replicas on one
 * PostgreSQL share changes over LISTEN/NOTIFY.
 */
export async function controlPlaneCommand(argv: string[]): Promise<void> {
  const { help, values } = parseRoleFlags("control-plane", argv);
  if (help) {
    process.stdout.write(
      usageOf("control-plane", "Runs the control plane: sessions, agents, the ledger, and the sync and lease API of sidecars."),
    );
    return;
  }
  const logger = createLogger(values["log-level"]!);
  // Read before anything starts: a bad value found after would leave it serving, with no signal handler.
  const shutdownGraceMs = positiveInt(values, "shutdown-grace");
  const databaseUrl = values["database-url"];
  const server = await startServer({
    ...storeServerOptions(values, logger),
    leaseReconcileGraceMs: positiveInt(values, "lease-reconcile-grace"),
    // A cluster's system of record is never open: API keys on admin calls,
    // session tokens (or agent credentials) on decisions.
    requireAuth: true,
    tls: serverTlsFromFlags(values),
  });
  runUntilSignal(logger, (grace) => server.close(grace), shutdownGraceMs);
  logger.info(
    {
      role: "control-plane",
      grpcPort: server.grpcPort,
      httpPort: server.httpPort,
      healthPort: server.healthPort,
      store: databaseUrl ? redactUrl(databaseUrl) : `pglite:${values["data-dir"]}`,
    },
    "listening",
  );
}
