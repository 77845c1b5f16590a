import type { SessionChanges } from "../store/session-sync.js";
import type { WardenStore } from "../store/warden-store.js";

/** A batch of changes as the feed hands it to subscribers. */
export interface FeedBatch extends SessionChanges {
  /** The revision the batch starts after. */
  readonly fromRevision: bigint;
}

/** Options of {@link createChangeFeed}. */
export interface ChangeFeedOptions {
  readonly store: WardenStore;
  /**
   * Re-read even without a notification this often: a safety net for a
   * NOTIFY lost while the listening connection was down. Default 1000 ms.
   */
  readonly pollIntervalMs?: number;
  readonly onError?: (err: unknown) => void;
}

/**
 * One control-plane replica's view of every change in the store, in
 * revision order. It wakes on `NOTIFY warden_sync` (sent by every
 * revision-taking transaction on commit, from any replica) and on a slow
 * poll, reads what changed after its revision once, and hands the batch to
 * every subscriber, so N watchers cost one query, not N.
 */
export class ChangeFeed {
  private revision = 0n;
  private readonly subscribers = new Set<(batch: FeedBatch) => void>();
  private reading: Promise<void> | undefined;
  private again = false;
  private unlisten: (() => Promise<void>) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly stopListeners = new Set<() => void>();
  /** Set by {@link stop}: watch streams end so a shutdown does not wait on them. */
  stopped = false;
  /** When a read of the store last succeeded (epoch ms): see {@link readRecently}. */
  private lastReadOkMs = Date.now();

  constructor(private readonly o: ChangeFeedOptions) {}

  /** Starts from the store's current revision. */
  async start(): Promise<void> {
    this.revision = await this.o.store.revision();
    this.unlisten = await this.o.store.db.listen("warden_sync", () => this.wake());
    this.timer = setInterval(() => this.wake(), this.o.pollIntervalMs ?? 1000);
    this.timer.unref();
  }

  /**
   * Whether the feed read the store within its last three polls. A
   * heartbeat says "nothing changed up to this revision": a replica that
   * cannot read the store does not know that, and must not say it, or its
   * sidecars would stay fresh while revocations pass them by; unheard,
   * they turn stale and fail closed, or reconnect elsewhere.
   */
  get readsStore(): boolean {
    return Date.now() - this.lastReadOkMs <= 3 * (this.o.pollIntervalMs ?? 1000);
  }

  /** The revision everything up to which has been handed out. */
  get current(): bigint {
    return this.revision;
  }

  /** Calls `fn` with every batch from now on, until the returned function is called. */
  subscribe(fn: (batch: FeedBatch) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Reads now (coalescing with a read in flight). Resolves when caught up. */
  wake(): Promise<void> {
    if (this.reading !== undefined) {
      this.again = true;
      return this.reading;
    }
    this.reading = this.readLoop().finally(() => {
      this.reading = undefined;
    });
    return this.reading;
  }

  private async readLoop(): Promise<void> {
    do {
      this.again = false;
      try {
        for (;;) {
          const from = this.revision;
          const changes = await this.o.store.changes(undefined, from);
          if (changes.revision <= from) break;
          this.revision = changes.revision;
          const batch: FeedBatch = { ...changes, fromRevision: from };
          for (const fn of this.subscribers) fn(batch);
          if (changes.sessions.length < 1000) break;
        }
        this.lastReadOkMs = Date.now();
      } catch (err) {
        this.o.onError?.(err);
      }
    } while (this.again);
  }

  /** Calls `fn` once when the feed stops; returns a function that cancels it. */
  onStop(fn: () => void): () => void {
    this.stopListeners.add(fn);
    return () => this.stopListeners.delete(fn);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const fn of this.stopListeners) fn();
    clearInterval(this.timer);
    await this.unlisten?.();
    await this.reading;
  }
}

/** Creates and starts a feed. */
export async function createChangeFeed(o: ChangeFeedOptions): Promise<ChangeFeed> {
  const feed = new ChangeFeed(o);
  await feed.start();
  return feed;
}
