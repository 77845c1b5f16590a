import type { Logger } from "./logger.js";

/** How long a closed role may take to end on its own before it is made to. */
export const EXIT_LINGER_MS = 2000;

/** What a role logs when something still held the process after its close. */
export const LINGERED_MESSAGE = "still busy after shutdown; exiting anyway";

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
        exitWhenIdle(logger, 0);
      },
      (err: unknown) => {
        logger.error({ err }, "shutdown failed");
        exitWhenIdle(logger, 1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

/**
 * Ends the process by letting its event loop run dry rather than with
 * process.exit(). process.exit() shuts V8's worker threads down without
 * disposing the isolate, and a worker in the middle of a concurrent
 * compile that waits for a garbage collection then waits forever: the
 * process hangs at exit (nodejs/node#54918). We saw it on a sidecar with a
 * full cache and a heap limit; Kubernetes would kill it only after the
 * pod's grace period. An ending event loop disposes the isolate first,
 * which releases such workers. A close leaves nothing running, so this
 * normally takes a moment; if something still holds the loop, it is named
 * in the log and the process exits anyway.
 */
function exitWhenIdle(logger: Logger, code: number): void {
  process.exitCode = code;
  setTimeout(() => {
    logger.warn({ resources: process.getActiveResourcesInfo() }, LINGERED_MESSAGE);
    process.exit(code);
  }, EXIT_LINGER_MS).unref();
}
