import { createLogger } from "./logger.js";
import { redactUrl } from "./redact-url.js";
import { booleanFlag, parseRoleFlags, positiveInt, usageOf } from "./role-flags.js";
import { runUntilSignal } from "./run-until-signal.js";
import { startServer } from "./start-server.js";
import { storeServerOptions } from "./store-server-options.js";

/**
 * `warden serve`: parses flags and environment, starts the servers, and
 * shuts down gracefully on SIGTERM or SIGINT (stop accepting, drain in-flight
 * calls, close the store).
 */
export async function serveCommand(argv: string[]): Promise<void> {
  const { help, values } = parseRoleFlags("serve", argv);
  if (help) {
    process.stdout.write(usageOf("serve", "Runs the control plane and the decision API in one process, on the embedded store by default."));
    return;
  }
  const logger = createLogger(values["log-level"]!);
  // Read before anything starts: a bad value found after would leave it serving, with no signal handler.
  const shutdownGraceMs = positiveInt(values, "shutdown-grace");
  const databaseUrl = values["database-url"];
  const requireAuth = booleanFlag(values, "require-auth");
  const server = await startServer({ ...storeServerOptions(values, logger), requireAuth });
  // Handlers first: a SIGTERM right after "listening" must drain, not kill.
  runUntilSignal(logger, (grace) => server.close(grace), shutdownGraceMs);
  logger.info(
    {
      grpcPort: server.grpcPort,
      httpPort: server.httpPort,
      healthPort: server.healthPort,
      store: databaseUrl ? redactUrl(databaseUrl) : `pglite:${values["data-dir"]}`,
      requireAuth,
    },
    "listening",
  );
  const exposed = [values["grpc-listen"]!, values["http-listen"]!].filter((a) => !isLoopback(a));
  if (!requireAuth && exposed.length > 0) {
    logger.warn({ listeners: exposed }, "listening beyond loopback without --require-auth: anyone who can connect may create keys, sessions and decisions");
  }
}

/** Whether a "host:port" listen address is on loopback only. */
function isLoopback(address: string): boolean {
  const host = address.slice(0, address.lastIndexOf(":")).replace(/^\[|\]$/g, "").toLowerCase();
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
