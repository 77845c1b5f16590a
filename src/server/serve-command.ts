import { parseArgs } from "node:util";
import { createLogger, redactUrl } from "./logger.js";
import { startServer } from "./start-server.js";

const USAGE = `Usage: warden serve [flags]

Runs the control plane and the decision API in one process.

Flags (environment variable in brackets):
  --grpc-listen HOST:PORT   gRPC (@grpc/grpc-js) listener [WARDEN_GRPC_LISTEN] (default 127.0.0.1:50051)
  --http-listen HOST:PORT   Connect, gRPC-Web and gRPC over HTTP/2 or HTTP/1.1 [WARDEN_HTTP_LISTEN] (default 127.0.0.1:8080)
  --data-dir DIR            embedded PGlite data directory [WARDEN_DATA_DIR] (default ./.warden/data)
  --database-url URL        use this PostgreSQL server instead of PGlite [DATABASE_URL]
  --sweep-interval MS       how often holds and sessions are expired [WARDEN_SWEEP_INTERVAL_MS] (default 1000)
  --shutdown-grace MS       how long in-flight calls may finish on SIGTERM [WARDEN_SHUTDOWN_GRACE_MS] (default 10000)
  --log-level LEVEL         trace|debug|info|warn|error [WARDEN_LOG_LEVEL] (default info)
`;

function int(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name}: "${text}" is not a positive whole number`);
  return n;
}

/**
 * `warden serve`: parses flags and environment, starts the servers, and
 * shuts down gracefully on SIGTERM or SIGINT (stop accepting, drain in-flight
 * calls, close the store).
 */
export async function serveCommand(argv: string[]): Promise<void> {
  const env = process.env;
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      "grpc-listen": { type: "string", default: env.WARDEN_GRPC_LISTEN ?? "127.0.0.1:50051" },
      "http-listen": { type: "string", default: env.WARDEN_HTTP_LISTEN ?? "127.0.0.1:8080" },
      "data-dir": { type: "string", default: env.WARDEN_DATA_DIR ?? ".warden/data" },
      "database-url": { type: "string", default: env.DATABASE_URL },
      "sweep-interval": { type: "string", default: env.WARDEN_SWEEP_INTERVAL_MS ?? "1000" },
      "shutdown-grace": { type: "string", default: env.WARDEN_SHUTDOWN_GRACE_MS ?? "10000" },
      "log-level": { type: "string", default: env.WARDEN_LOG_LEVEL ?? "info" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const logger = createLogger(values["log-level"]);
  const databaseUrl = values["database-url"] || undefined;
  const server = await startServer({
    grpcAddress: values["grpc-listen"],
    httpAddress: values["http-listen"],
    dataDir: values["data-dir"],
    databaseUrl,
    sweepIntervalMs: int("sweep-interval", values["sweep-interval"]),
    logger,
  });
  logger.info(
    { grpcPort: server.grpcPort, httpPort: server.httpPort, store: databaseUrl ? redactUrl(databaseUrl) : `pglite:${values["data-dir"]}` },
    "listening",
  );
  const grace = int("shutdown-grace", values["shutdown-grace"]);
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
