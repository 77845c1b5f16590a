import { Code, ConnectError } from "@connectrpc/connect";

/**
 * How long, after the grace period, handlers get to finish once their
 * signal has aborted, before connections are dropped.
 */
export const abortGraceMs = 250;

/** Options of {@link closeGracefully}. */
export interface CloseGracefullyOptions {
  /** Settles once the server has stopped accepting and every call has finished. */
  readonly drained: Promise<unknown>;
  /** How long calls in flight may take to finish on their own. */
  readonly graceMs: number;
  /** Aborted when the grace period is over, so handlers' signals fire. */
  readonly shutdown?: AbortController;
  /** Drops every connection that is left. */
  readonly force: () => void;
}

/**
 * The shutdown both servers share, in three steps:
 *
 * 1. wait up to `graceMs` for calls in flight to finish (the caller has
 *    already stopped accepting new ones);
 * 2. abort `shutdown` with UNAVAILABLE "server is shutting down": calls
 *    that would run forever (a health Watch) end, and clients get a proper
 *    status instead of a reset stream; wait up to {@link abortGraceMs};
 * 3. `force` whatever is left.
 */
export async function closeGracefully(o: CloseGracefullyOptions): Promise<void> {
  if (await settlesWithin(o.drained, o.graceMs)) return;
  o.shutdown?.abort(new ConnectError("server is shutting down", Code.Unavailable));
  if (await settlesWithin(o.drained, abortGraceMs)) return;
  o.force();
}

/** Resolves true if `promise` settles within `ms`, false otherwise; the timer never holds the process open. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, ms, false);
    timer.unref();
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
