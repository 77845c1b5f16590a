import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import {
  GetSessionStateResponseSchema,
  SessionStateSchema,
  type SyncService,
  type WatchSessionsResponse,
  WatchSessionsResponseSchema,
} from "../../src/gen/warden/v1/sync_service_pb.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { SyncClient } from "../../src/sidecar/sync-client.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The watch stream is the network: the test decides when a message arrives. */
function controlledStream() {
  const queue: WatchSessionsResponse[] = [];
  let wake: (() => void) | undefined;
  const sync = {
    async *watchSessions(_req: unknown, opts: { signal: AbortSignal }) {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        await new Promise<void>((resolve) => {
          wake = resolve;
          opts.signal.addEventListener("abort", () => resolve(), { once: true });
        });
        if (opts.signal.aborted) return;
      }
    },
  };
  let revision = 0n;
  return {
    sync: sync as unknown as Client<typeof SyncService>,
    send() {
      queue.push(create(WatchSessionsResponseSchema, { revision: ++revision }));
      wake?.();
    },
  };
}

test("the view turns stale when the bound passes with nothing heard; every message pushes that back", async () => {
  const BOUND = 300;
  const stream = controlledStream();
  const cache = new SessionCache({ maxSessions: 10, maxBytes: 1 << 20, fetch: () => Promise.reject(new Error("no fetch here")) });
  const stale: { fresh: boolean; staleness: number }[] = [];
  const client: SyncClient = new SyncClient({
    sync: stream.sync,
    cache,
    agentId: "a",
    stalenessBoundMs: BOUND,
    onStale: () => stale.push({ fresh: client.fresh(), staleness: client.staleness() }),
  });
  client.start();
  try {
    // Heard from every 30 ms for 3 bounds: it never turns stale.
    for (let i = 0; i < 30; i++) {
      stream.send();
      await sleep(30);
    }
    assert.equal(stale.length, 0, "fresh all along");
    // Then silence: stale once, after the bound.
    await sleep(BOUND + 500);
    assert.equal(stale.length, 1);
    assert.equal(stale[0]!.fresh, false);
    assert.ok(stale[0]!.staleness > BOUND, `stale after ${stale[0]!.staleness} ms`);
    // A message makes it fresh again, and the next silence stale again.
    stream.send();
    await sleep(20);
    assert.equal(client.fresh(), true);
    await sleep(BOUND + 500);
    assert.equal(stale.length, 2);
    assert.equal(stale[1]!.fresh, false);
  } finally {
    await client.stop();
  }
});

test("a session fetched before a watch from revision 0 began is dropped at its first message, since that watch will not send older changes", async () => {
  const stream = controlledStream();
  let fetches = 0;
  const state = create(GetSessionStateResponseSchema, {
    sessions: [
      create(SessionStateSchema, {
        sessionId: "ses_early",
        agentId: "a",
        policy: { currencyCode: "USD" },
        status: SessionStatus.ACTIVE,
        expireTime: timestampFromMs(Date.now() + 3_600_000),
        lastActivityTime: timestampFromMs(Date.now()),
        revision: 1n,
      }),
    ],
    agent: { agentId: "a", revision: 1n },
    revision: 1n,
  });
  const cache = new SessionCache({ maxSessions: 10, maxBytes: 1 << 20, fetch: async () => (fetches++, state) });
  const client = new SyncClient({ sync: stream.sync, cache, agentId: "a", stalenessBoundMs: 10_000 });
  // A decision came before the watch's first message: the session is fetched.
  await cache.get("ses_early");
  client.start();
  try {
    stream.send();
    for (let i = 0; i < 100 && !client.synced; i++) await sleep(5);
    assert.equal(client.synced, true);
    assert.equal(cache.peek("ses_early"), undefined, "fetched again when next asked, after the watch began");
    // Later messages of that watch keep what was fetched since.
    await cache.get("ses_early");
    stream.send();
    await sleep(20);
    assert.notEqual(cache.peek("ses_early"), undefined);
    assert.equal(fetches, 2);
  } finally {
    await client.stop();
  }
});
