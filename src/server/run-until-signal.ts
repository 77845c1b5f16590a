import type { Logger } from "./logger.js";

/**
 * Keeps a started role running until SIGTERM or SIGINT, then closes it
 * (stop accepting, drain in-flight calls for up to `graceMs`, release what
 * it holds) and exits: 0 when the close finished, 1 when it failed.
 */
export function runUntilSignal(logger: Logger, close: (graceMs: number) => Promise<void>, graceMs: number): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    close(graceMs).then(
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
