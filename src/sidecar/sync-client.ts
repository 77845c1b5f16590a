import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { SettledHold, SyncService } from "../gen/warden/v1/sync_service_pb.js";
import type { SessionCache } from "./session-cache.js";

/** Options of {@link SyncClient}. */
export interface SyncClientOptions {
  readonly sync: Client<typeof SyncService>;
  readonly cache: SessionCache;
  readonly agentId: string;
  /** Past this long without hearing from the control plane, spending is denied. */
  readonly stalenessBoundMs: number;
  readonly now?: () => number;
  readonly onError?: (err: unknown, attempt: number) => void;
  /** Called with every message: how far behind the sender's clock it arrived. */
  readonly onMessage?: (lagMs: number, revision: bigint) => void;
  readonly onConnected?: (connected: boolean) => void;
  /**
   * Called when the view turns stale: the staleness bound passed with
   * nothing heard. (It turns fresh again with the next message.)
   */
  readonly onStale?: () => void;
  /** Called with holds this agent's sidecars placed that the store settled (see SidecarEngine.forgetSettledHolds). */
  readonly onSettledHolds?: (holds: readonly SettledHold[]) => void;
}

/** setTimeout's longest delay; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Keeps the session cache in step with the control plane over one
 * server-streaming WatchSessions call, resumed from the last revision seen
 * after any break (backoff 100 ms doubling to 2 s, with jitter, cut short
 * by {@link nudge}), and tracks how fresh the sidecar's view is: fresh
 * means a watch message or heartbeat arrived within the staleness bound,
 * because only the stream brings revocations and pauses.
 */
export class SyncClient {
  private revision = 0n;
  /** The store history `revision` belongs to (WatchSessionsResponse.store_epoch). */
  private storeEpoch = "";
  private lastContactMs: number;
  private abort = new AbortController();
  private running: Promise<void> | undefined;
  connected = false;
  /** Set once the first message arrived: the cache is in step. */
  synced = false;
  private readonly now: () => number;
  /** Cuts a backoff wait short. */
  private retryNow: (() => void) | undefined;
  private lastNudgeMs = 0;
  /**
   * Fires when the bound passes after the last contact; every message
   * pushes it back. A timer instead of polling, so an idle sidecar does not
   * wake up just to learn that nothing changed.
   */
  private staleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: SyncClientOptions) {
    this.now = o.now ?? Date.now;
    this.lastContactMs = this.now();
  }

  /** The last revision applied. */
  get currentRevision(): bigint {
    return this.revision;
  }

  /** Milliseconds since the control plane was last heard from. */
  staleness(): number {
    return this.now() - this.lastContactMs;
  }

  /** Whether decisions may still spend from leases. */
  fresh(): boolean {
    return this.staleness() <= this.o.stalenessBoundMs;
  }

  /**
   * A call outside the stream reached the control plane (or failed to).
   * Only the stream counts for freshness, since only it brings
   * revocations; but a working call while the stream is down means the
   * control plane is back, so the stream retries now.
   */
  contact(ok: boolean): void {
    if (ok && !this.connected) this.nudge();
  }

  /**
   * Retries a broken stream now instead of at the end of its backoff: a
   * decision that found the view stale asks for this, so a sidecar recovers
   * as soon as the control plane is back, not up to one backoff later.
   * At most one retry per 250 ms.
   */
  nudge(): void {
    const now = this.now();
    if (this.retryNow === undefined || now - this.lastNudgeMs < 250) return;
    this.lastNudgeMs = now;
    this.retryNow();
  }

  start(): void {
    this.running = this.loop();
    this.armStaleTimer();
  }

  async stop(): Promise<void> {
    clearTimeout(this.staleTimer);
    this.abort.abort();
    await this.running;
  }

  /** Sets the stale timer for the moment the bound passes, from the last contact. */
  private armStaleTimer(): void {
    const left = this.o.stalenessBoundMs - this.staleness() + 1;
    this.staleTimer = setTimeout(() => this.checkStale(), Math.min(MAX_TIMER_MS, Math.max(1, left)));
    this.staleTimer.unref();
  }

  private checkStale(): void {
    if (this.abort.signal.aborted) return;
    // The timer's clock and `now` can differ by a millisecond: if the bound
    // has not quite passed, wait for the rest.
    if (this.fresh()) this.armStaleTimer();
    else this.o.onStale?.();
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.abort.signal.aborted) {
      try {
        // A watch from revision 0 starts at the present: a session fetched
        // before it (a decision can come first) may predate a change the
        // watch will not send, so its first message drops the cache.
        let fromZero = this.revision === 0n;
        for await (const msg of this.o.sync.watchSessions(
          { agentId: this.o.agentId, fromRevision: this.revision, storeEpoch: this.storeEpoch },
          // The transport's short default deadline is for unary calls; the
          // stream lives until it breaks (and would resume harmlessly if a
          // day's deadline ended it).
          { signal: this.abort.signal, timeoutMs: 86_400_000 },
        )) {
          attempt = 0;
          this.lastContactMs = this.now();
          // Its duration is the whole bound (plus 1 ms) from now.
          this.staleTimer?.refresh();
          if (!this.connected) {
            this.connected = true;
            this.o.onConnected?.(true);
          }
          if (msg.reset || fromZero) this.o.cache.clear();
          fromZero = false;
          for (const s of msg.sessions) this.o.cache.applySession(s);
          if (msg.agent !== undefined) this.o.cache.applyAgent(msg.agent);
          if (msg.settledHolds.length > 0) this.o.onSettledHolds?.(msg.settledHolds);
          if (msg.revision > this.revision || msg.reset) this.revision = msg.revision;
          if (msg.storeEpoch !== "") this.storeEpoch = msg.storeEpoch;
          this.synced = true;
          this.o.onMessage?.(msg.sendTime === undefined ? 0 : this.now() - timestampMs(msg.sendTime), this.revision);
        }
      } catch (err) {
        if (this.abort.signal.aborted) break;
        this.o.onError?.(err, attempt);
      }
      if (this.connected) {
        this.connected = false;
        this.o.onConnected?.(false);
      }
      if (this.abort.signal.aborted) break;
      const delay = Math.min(2000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2);
      attempt++;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          this.retryNow = undefined;
          resolve();
        };
        const t = setTimeout(done, delay);
        this.retryNow = done;
        this.abort.signal.addEventListener("abort", done, { once: true });
      });
    }
  }
}
