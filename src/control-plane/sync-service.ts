import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type SyncService,
  type WatchSessionsResponse,
  WatchSessionsResponseSchema,
} from "../gen/warden/v1/sync_service_pb.js";
import type { WardenStore } from "../store/warden-store.js";
import type { ChangeFeed, FeedBatch } from "./change-feed.js";

/** Options of {@link createSyncService}. */
export interface SyncServiceOptions {
  readonly store: WardenStore;
  readonly feed: ChangeFeed;
  /** How often an idle watch stream says it is alive. Default 1000 ms. */
  readonly heartbeatMs?: number;
}

/**
 * SyncService: what sidecars read, watch and lease. The watch stream is the
 * feed's batches filtered to one agent, after a catch-up read from the
 * watcher's revision; heartbeats carry the revision reached, so a watcher
 * resumes from there and never re-reads what it has.
 */
export function createSyncService(o: SyncServiceOptions): ServiceImpl<typeof SyncService> {
  const { store, feed } = o;
  const heartbeatMs = o.heartbeatMs ?? 1000;
  return {
    async getSessionState(req) {
      return store.sessionState(req.sessionId);
    },
    async acquireLease(req) {
      return { lease: await store.leases.acquire(req) };
    },
    async reportLeases(req) {
      return { rejected: await store.leases.report(req) };
    },
    async claimIdempotencyKeys(req) {
      return { results: await store.claimKeys(req.claims) };
    },
    async *watchSessions(req, ctx) {
      const queue: FeedBatch[] = [];
      let wakeUp: (() => void) | undefined;
      // Subscribe before reading, so nothing between the read and the
      // subscription is lost; what arrives twice is skipped by revision.
      const unsubscribe = feed.subscribe((b) => {
        queue.push(b);
        wakeUp?.();
      });
      const abort = () => wakeUp?.();
      ctx.signal.addEventListener("abort", abort);
      // A replica shutting down ends its streams at once; sidecars resume
      // from their revision on another replica (or this one, restarted).
      const cancelStop = feed.onStop(abort);
      try {
        let sent = req.fromRevision;
        const [now, storeEpoch] = await Promise.all([store.revision(), store.storeEpoch()]);
        if (sent > now || (sent > 0n && req.storeEpoch !== "" && req.storeEpoch !== storeEpoch)) {
          // Not a revision this store gave out (a replaced or restored
          // store), or one of another store's history, whose number this
          // store may have given out too, for other changes.
          yield create(WatchSessionsResponseSchema, { reset: true, revision: now, sendTime: timestampNow(), storeEpoch });
          sent = now;
        } else if (sent === 0n) {
          // A new watcher holds nothing: start it at the present.
          sent = feed.current > now ? feed.current : now;
          yield create(WatchSessionsResponseSchema, { revision: sent, sendTime: timestampNow(), storeEpoch });
        } else {
          for (;;) {
            const ch = await store.changes(req.agentId, sent);
            if (ch.revision <= sent) break;
            sent = ch.revision;
            yield create(WatchSessionsResponseSchema, {
              revision: sent,
              sessions: ch.sessions,
              agent: ch.agents[0],
              settledHolds: ch.settledHolds,
              sendTime: timestampNow(),
              storeEpoch,
            });
            if (ch.sessions.length < 1000) break;
          }
          // Caught up: say so at once, even with nothing new. A sidecar
          // that was cut off past its staleness bound denies until it
          // hears from the stream; a heartbeat later would be a second late.
          if (sent === req.fromRevision) yield create(WatchSessionsResponseSchema, { revision: sent, sendTime: timestampNow(), storeEpoch });
        }
        // The next heartbeat is due a heartbeat after the last message, by
        // the clock, not after the last wake-up: batches of other agents
        // wake this loop but send nothing, and while they kept coming more
        // often than heartbeats, an idle agent's watcher heard nothing and
        // its sidecar went stale.
        let beatAt = Date.now() + heartbeatMs;
        while (!ctx.signal.aborted && !feed.stopped) {
          const batch = queue.shift();
          if (batch === undefined) {
            const wait = beatAt - Date.now();
            if (wait > 0) {
              await new Promise<void>((resolve) => {
                const t = setTimeout(resolve, wait);
                wakeUp = () => {
                  clearTimeout(t);
                  resolve();
                };
              });
              wakeUp = undefined;
              continue;
            }
            beatAt = Date.now() + heartbeatMs;
            // Only while the feed can read the store: see ChangeFeed.readsStore.
            if (feed.current >= sent && feed.readsStore) {
              sent = feed.current > sent ? feed.current : sent;
              yield create(WatchSessionsResponseSchema, { revision: sent, sendTime: timestampNow() });
            }
            continue;
          }
          if (batch.revision <= sent) continue;
          const mine = filterBatch(batch, req.agentId);
          sent = batch.revision;
          // Batches of other agents only move the revision; the heartbeat says so.
          if (mine.sessions.length > 0 || mine.agent !== undefined || mine.settledHolds.length > 0) {
            beatAt = Date.now() + heartbeatMs;
            yield mine;
          }
        }
      } finally {
        unsubscribe();
        cancelStop();
        ctx.signal.removeEventListener("abort", abort);
      }
    },
  };
}

function filterBatch(b: FeedBatch, agentId: string): WatchSessionsResponse {
  return create(WatchSessionsResponseSchema, {
    revision: b.revision,
    sessions: b.sessions.filter((s) => s.agentId === agentId),
    agent: b.agents.find((a) => a.agentId === agentId),
    settledHolds: b.settledHolds.filter((h) => h.agentId === agentId),
    sendTime: timestampNow(),
  });
}
