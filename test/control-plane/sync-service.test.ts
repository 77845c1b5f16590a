import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { createChangeFeed } from "../../src/control-plane/change-feed.js";
import { createSyncService } from "../../src/control-plane/sync-service.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { type SyncService, type WatchSessionsResponse, WatchSessionsRequestSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { SyncClient } from "../../src/sidecar/sync-client.js";
import type { WardenStore } from "../../src/store/warden-store.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("WatchSessions from a replica whose change feed cannot read the store", () => {
  const s = storeSuite("pglite", "sync-feed", { ledgerCheck: false });

  it("stops vouching for freshness: a connected sidecar that cannot hear revocations turns stale within the bound", async () => {
    // The replica's view of the store: reads of changes fail once `broken`
    // (its connection to the database is gone), everything else passes.
    let broken = false;
    const replica = new Proxy(s.store, {
      get(target, prop, recv) {
        if (prop === "changes") {
          return (...args: Parameters<WardenStore["changes"]>) => {
            if (broken) return Promise.reject(new Error("connection terminated"));
            return target.changes(...args);
          };
        }
        const v = Reflect.get(target, prop, recv);
        return typeof v === "function" ? v.bind(target) : v;
      },
    }) as WardenStore;
    const feed = await createChangeFeed({ store: replica, pollIntervalMs: 20 });
    const svc = createSyncService({ store: replica, feed, heartbeatMs: 20 });
    const agent = s.agent();
    const ses = await s.store.createSession(sessionRequest(agent, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);

    const sync = {
      watchSessions: (req: { agentId: string; fromRevision: bigint }, opts: { signal: AbortSignal }) =>
        svc.watchSessions!(create(WatchSessionsRequestSchema, req), { signal: opts.signal } as never) as AsyncIterable<WatchSessionsResponse>,
    } as unknown as Client<typeof SyncService>;
    const cache = new SessionCache({ maxSessions: 100, maxBytes: 1 << 20, fetch: (id) => s.store.sessionState(id) });
    const BOUND = 300;
    const client = new SyncClient({ sync, cache, agentId: agent, stalenessBoundMs: BOUND });
    client.start();
    try {
      for (let i = 0; i < 100 && !client.synced; i++) await sleep(10);
      assert.ok(client.synced, "the watch started");
      await cache.get(ses.sessionId);
      assert.equal(cache.peek(ses.sessionId)?.status, SessionStatus.ACTIVE);

      // The replica loses the store; the session is revoked (through another replica).
      broken = true;
      await s.store.terminate(ses.sessionId, SessionStatus.REVOKED, "revoked by a person");
      await sleep(BOUND * 3);

      // Either the revocation reached the sidecar, or the sidecar knows it
      // cannot hear and denies spending (CONTROL_PLANE_UNAVAILABLE): a
      // heartbeat with the stuck revision would keep it "fresh".
      const heard = cache.peek(ses.sessionId)?.status === SessionStatus.REVOKED;
      assert.ok(
        heard || !client.fresh(),
        `session still ${SessionStatus[cache.peek(ses.sessionId)!.status]} in the sidecar ${BOUND * 3} ms after its revocation, ` +
          `yet the sidecar counts itself fresh (staleness ${client.staleness()} ms, bound ${BOUND} ms, revision ${client.currentRevision} < store ${await s.store.revision()})`,
      );
    } finally {
      await client.stop();
      await feed.stop();
    }
  });
});

describe("WatchSessions resumed from a revision", () => {
  const s = storeSuite("pglite", "sync-resume", { ledgerCheck: false });

  it("a sidecar that resumes from its revision with nothing new hears from the control plane at once, not a heartbeat later", async () => {
    // A sidecar that was cut off past the staleness bound denies every call
    // until its stream's first message: README says it reconnects "cut
    // short when a call finds it stale", so that first message must not
    // wait for the next heartbeat (1 s by default, here 2 s).
    const feed = await createChangeFeed({ store: s.store, pollIntervalMs: 3_600_000 });
    const svc = createSyncService({ store: s.store, feed, heartbeatMs: 2000 });
    const agent = s.agent();
    await s.store.createSession(sessionRequest(agent, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    await feed.wake();
    const revision = await s.store.revision();
    assert.ok(revision > 0n);
    const ac = new AbortController();
    const stream = svc.watchSessions!(create(WatchSessionsRequestSchema, { agentId: agent, fromRevision: revision }), {
      signal: ac.signal,
    } as never) as AsyncGenerator<WatchSessionsResponse>;
    try {
      const started = Date.now();
      const first = await stream.next();
      const waited = Date.now() - started;
      assert.equal(first.done, false);
      assert.ok(waited < 500, `the resumed stream's first message came after ${waited} ms (a heartbeat interval): the sidecar stays stale and denies meanwhile`);
    } finally {
      ac.abort();
      await stream.return(undefined);
      await feed.stop();
    }
  });
});

describe("WatchSessions heartbeats while other agents are busy", () => {
  const s = storeSuite("pglite", "sync-hb", { ledgerCheck: false });

  it("an idle agent's watcher hears a heartbeat on time while other agents' changes keep waking the stream", async () => {
    const HEARTBEAT = 400;
    const feed = await createChangeFeed({ store: s.store, pollIntervalMs: 3_600_000 });
    const svc = createSyncService({ store: s.store, feed, heartbeatMs: HEARTBEAT });
    const idle = s.agent();
    const busy = s.agent();
    const ac = new AbortController();
    const stream = svc.watchSessions!(create(WatchSessionsRequestSchema, { agentId: idle, fromRevision: 0n }), {
      signal: ac.signal,
    } as never) as AsyncGenerator<WatchSessionsResponse>;
    const got: number[] = [];
    let first = true;
    const reading = (async () => {
      for await (const _m of stream) {
        if (first) first = false;
        else got.push(Date.now());
      }
    })();
    const started = Date.now();
    try {
      await sleep(50);
      // Another agent's sessions change every ~30-50 ms (each change wakes the feed, as NOTIFY would).
      const ses = await s.store.createSession(sessionRequest(busy, { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
      let paused = false;
      while (Date.now() - started < 6 * HEARTBEAT) {
        paused = !paused;
        await s.store.setPaused(ses.sessionId, paused, "x");
        await feed.wake();
        await sleep(30);
      }
      assert.ok(
        got.length >= 2,
        `the idle agent's watcher got ${got.length} messages in ${Date.now() - started} ms with heartbeats every ${HEARTBEAT} ms: its sidecar turns stale and fails closed`,
      );
    } finally {
      ac.abort();
      await feed.stop();
      await stream.return(undefined).catch(() => {});
      await reading.catch(() => {});
    }
  });
});
