import { createLogger, redactUrl } from "./logger.js";
import { booleanFlag, parseRoleFlags, positiveInt, usageOf } from "./role-flags.js";
import { startServer } from "./start-server.js";

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
  const databaseUrl = values["database-url"];
  const requireAuth = booleanFlag(values, "require-auth");
  const server = await startServer({
    grpcAddress: values["grpc-listen"]!,
    httpAddress: values["http-listen"]!,
    dataDir: values["data-dir"]!,
    databaseUrl,
    sweepIntervalMs: positiveInt(values, "sweep-interval"),
    healthAddress: values["health-listen"],
    requireAuth,
    sessionTokenTtlMs: positiveInt(values, "session-token-ttl"),
    logger,
  });
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
  const grace = positiveInt(values, "shutdown-grace");
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    server.close(grace).then(
      () => {
        logger.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

/** Whether a "host:port" listen address is on loopback only. */
function isLoopback(address: string): boolean {
  const host = address.slice(0, address.lastIndexOf(":")).replace(/^\[|\]$/g, "").toLowerCase();
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}
