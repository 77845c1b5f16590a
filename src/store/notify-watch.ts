import type { Database } from "./database.js";

/** Options of {@link createNotifyWatch}. */
export interface NotifyWatchOptions {
  readonly db: Database;
  /** The NOTIFY channel to listen on (e.g. approval decisions, or every recorded event). */
  readonly channel: string;
  /** Waiters wake at least this often even without a notification (a missed NOTIFY costs at most this). Default 1 s. */
  readonly pollMs?: number;
}

/**
 * Wakes server streams (WatchApproval, WatchEvents) when what they watch
 * may have changed: one LISTEN per server on a channel that writers notify
 * on commit (any replica's change reaches every replica's watchers),
 * started with the first waiter. A notification wakes every waiter (each
 * re-reads what it watches); a poll bounds what a lost notification can
 * delay.
 */
export interface NotifyWatch {
  /**
   * Starts listening (once) and returns the count of notifications seen:
   * take it before reading an approval, and pass it to `changed`, so a
   * notification that lands between the read and the wait is not missed.
   */
  mark(): Promise<number>;
  /**
   * Resolves at once if a notification came since `mark`, else after the
   * next one, after `maxWaitMs`, when `signal` aborts, or when the watch
   * stops, whichever is first. Returns false once stopped or aborted: the
   * caller ends its stream.
   */
  changed(mark: number, maxWaitMs: number, signal: AbortSignal): Promise<boolean>;
  /** Wakes and ends every waiter, and stops listening. */
  stop(): Promise<void>;
}

/** Creates a {@link NotifyWatch}. */
export function createNotifyWatch(o: NotifyWatchOptions): NotifyWatch {
  const pollMs = o.pollMs ?? 1000;
  const waiters = new Set<() => void>();
  let unlisten: Promise<() => Promise<void>> | undefined;
  let stopped = false;
  let seen = 0;
  const wakeAll = () => {
    for (const w of [...waiters]) w();
  };
  const onNotify = () => {
    seen++;
    wakeAll();
  };
  return {
    async mark() {
      // A LISTEN that failed (the database unreachable for a moment) is
      // forgotten, so the next caller tries again rather than getting the
      // same error until the process restarts.
      unlisten ??= o.db.listen(o.channel, onNotify).catch((err: unknown) => {
        unlisten = undefined;
        throw err;
      });
      await unlisten;
      return seen;
    },
    async changed(mark, maxWaitMs, signal) {
      if (stopped || signal.aborted) return false;
      if (seen !== mark) return true;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener("abort", done);
          waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(0, Math.min(maxWaitMs, pollMs)));
        signal.addEventListener("abort", done);
        waiters.add(done);
      });
      return !stopped && !signal.aborted;
    },
    async stop() {
      stopped = true;
      wakeAll();
      if (unlisten !== undefined) await (await unlisten.catch(() => async () => {}))();
    },
  };
}
