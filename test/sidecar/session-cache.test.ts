import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type SessionPolicy, SessionPolicySchema } from "../../src/gen/warden/v1/policy_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { type GetSessionStateResponse, GetSessionStateResponseSchema, SessionStateSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { type CachedSession, SessionCache } from "../../src/sidecar/session-cache.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

// The cache is fed by the real store's session state (what the control
// plane's GetSessionState returns), counted to see how often it is asked.
describe("SessionCache", () => {
  let t: TestDatabase;
  let store: WardenStore;
  before(async () => {
    t = await openTestDatabase("pglite");
    store = createWardenStore({ db: t.db });
  });
  after(() => t.drop());

  function cacheOf(max = 100, onChange?: (b: CachedSession, a: CachedSession | undefined) => void) {
    const fetched: string[] = [];
    let gate: Promise<void> = Promise.resolve();
    let onRead: () => void = () => undefined;
    const read = new Promise<void>((r) => (onRead = r));
    const cache = new SessionCache({
      maxSessions: max,
      maxBytes: 1 << 20,
      // Reads, then waits at the gate before answering: a fetch in flight.
      fetch: async (id) => {
        fetched.push(id);
        const state = await store.sessionState(id);
        onRead();
        await gate;
        return state;
      },
      onChange,
    });
    return { cache, fetched, read, hold: (p: Promise<void>) => (gate = p) };
  }

  test("concurrent misses of one session share one fetch", async () => {
    const s = await store.createSession(sessionRequest("cache-a", { daily: { maxValueMicros: USD(10) } }), NO_HASH);
    const { cache, fetched } = cacheOf();
    const got = await Promise.all(Array.from({ length: 50 }, () => cache.get(s.sessionId)));
    assert.deepEqual(fetched, [s.sessionId]);
    assert.ok(got.every((g) => g === got[0]));
    assert.ok(!(cache.get(s.sessionId) instanceof Promise), "then a hit, synchronously");
  });

  test("a change that arrives while the session is being fetched is not lost", async () => {
    const s = await store.createSession(sessionRequest("cache-b", {}), NO_HASH);
    const { cache, hold, read } = cacheOf();
    let release!: () => void;
    hold(new Promise<void>((r) => (release = r)));
    const pending = cache.get(s.sessionId);
    await read;
    // The fetch has read the session (still active) but not answered;
    // meanwhile the session is paused and the watch stream brings it.
    await store.setPaused(s.sessionId, true, "x");
    const paused = (await store.sessionState(s.sessionId)).sessions[0]!;
    cache.applySession(paused);
    release();
    const got = await pending;
    assert.equal(got.status, SessionStatus.PAUSED);
  });

  test("a parent's change that arrives while its fork is being fetched is not lost", async () => {
    // The fork's fetch brings its parent too, read before the pause; the
    // parent is neither held nor fetched on its own when the pause comes.
    const parent = await store.createSession(sessionRequest("cache-race", { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    const child = await store.forkSession(
      create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(10) } } }),
      NO_HASH,
    );
    const { cache, hold, read } = cacheOf();
    let release!: () => void;
    hold(new Promise<void>((r) => (release = r)));
    const pending = cache.get(child.sessionId);
    await read;
    await store.setPaused(parent.sessionId, true, "paused by a person");
    cache.applySession((await store.sessionState(parent.sessionId)).sessions[0]!);
    release();
    await pending;
    assert.equal(SessionStatus[cache.peek(parent.sessionId)!.status], "PAUSED", "no later change will come to correct it");
    // Nothing in flight: a change to a session not held is dropped again.
    const other = await store.createSession(sessionRequest("cache-race", {}), NO_HASH);
    cache.applySession((await store.sessionState(other.sessionId)).sessions[0]!);
    assert.equal(cache.peek(other.sessionId), undefined);
  });

  test("more changes during a fetch than the cache holds: the fetch reads again rather than keep them all", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await store.createSession(sessionRequest("cache-flood", {}), NO_HASH)).sessionId);
    const { cache, hold, read, fetched } = cacheOf(2);
    let release!: () => void;
    hold(new Promise<void>((r) => (release = r)));
    const pending = cache.get(ids[0]!);
    await read;
    for (const id of ids.slice(1)) cache.applySession((await store.sessionState(id)).sessions[0]!);
    release();
    await pending;
    assert.deepEqual(fetched, [ids[0], ids[0]]);
  });

  test("changes to sessions not held are ignored; older revisions never replace newer", async () => {
    const s = await store.createSession(sessionRequest("cache-c", {}), NO_HASH);
    const { cache } = cacheOf();
    const before = (await store.sessionState(s.sessionId)).sessions[0]!;
    cache.applySession(before);
    assert.equal(cache.peek(s.sessionId), undefined, "not fetched, not held");
    await cache.get(s.sessionId);
    await store.setPaused(s.sessionId, true, "x");
    const newer = (await store.sessionState(s.sessionId)).sessions[0]!;
    cache.applySession(newer);
    cache.applySession(before);
    assert.equal(cache.peek(s.sessionId)!.status, SessionStatus.PAUSED);
  });

  test("bounded by count: the least recently used leaves, and its owner is told", async () => {
    const left: string[] = [];
    const { cache } = cacheOf(2, (b, a) => a === undefined && left.push(b.sessionId));
    const ids = [];
    for (const agent of ["cache-d1", "cache-d2", "cache-d3"]) ids.push((await store.createSession(sessionRequest(agent, {}), NO_HASH)).sessionId);
    for (const id of ids) await cache.get(id);
    assert.equal(cache.size, 2);
    assert.deepEqual(left, [ids[0]]);
  });

  test("sessions with the same policy share one compiled policy", async () => {
    const a = await store.createSession(sessionRequest("cache-e", { daily: { maxValueMicros: USD(5) } }), NO_HASH);
    const b = await store.createSession(sessionRequest("cache-e", { daily: { maxValueMicros: USD(5) } }), NO_HASH);
    const { cache } = cacheOf();
    const [x, y] = await Promise.all([cache.get(a.sessionId), cache.get(b.sessionId)]);
    assert.equal(x.policy, y.policy);
    assert.equal(x.agentId, y.agentId);
    const state: GetSessionStateResponse = await store.sessionState(a.sessionId);
    assert.equal(state.agent!.agentId, "cache-e");
  });
});

/** A session's state as the store sends it, at a revision. */
const stateOf = (sessionId: string, agentId: string, revision: bigint, status: SessionStatus) =>
  create(SessionStateSchema, {
    sessionId,
    agentId,
    policy: { currencyCode: "USD" },
    status,
    expireTime: timestampFromMs(Date.now() + 3_600_000),
    lastActivityTime: timestampFromMs(Date.now()),
    revision,
  });

test("a fetch that read a newer state than a watch update arriving meanwhile keeps the newer one", async () => {
  const state = (revision: bigint, status: SessionStatus) => stateOf("ses_rv", "rv-agent", revision, status);
  // Revision 5: paused. Revision 7: resumed. The fetch reads revision 7;
  // the watch, a little behind, delivers revision 5 while the fetch is on
  // its way. Deciding from 5 would deny SESSION_PAUSED after the resume.
  let answer!: () => void;
  const cache = new SessionCache({
    maxSessions: 10,
    maxBytes: 1 << 20,
    fetch: async () => {
      await new Promise<void>((r) => (answer = r));
      return create(GetSessionStateResponseSchema, { sessions: [state(7n, SessionStatus.ACTIVE)], agent: { agentId: "rv-agent", revision: 1n }, revision: 7n });
    },
  });
  const got = cache.get("ses_rv");
  await new Promise((r) => setImmediate(r));
  cache.applySession(state(5n, SessionStatus.PAUSED));
  answer();
  const s = await got;
  assert.deepEqual({ status: SessionStatus[s.status], revision: s.revision }, { status: "ACTIVE", revision: 7 });
});

test("a fetch begun before the cache was cleared (a watch starting at the present) is read again, not stored stale", async () => {
  const state = (revision: bigint, status: SessionStatus) =>
    create(GetSessionStateResponseSchema, { sessions: [stateOf("ses_cl", "cl-agent", revision, status)], agent: { agentId: "cl-agent", revision: 1n }, revision });
  // The first read sees the session active; by the second it was revoked
  // (a change the new watch, starting after it, does not send).
  const answers = [state(3n, SessionStatus.ACTIVE), state(4n, SessionStatus.REVOKED)];
  let answer!: () => void;
  let fetches = 0;
  const cache = new SessionCache({
    maxSessions: 10,
    maxBytes: 1 << 20,
    fetch: async () => {
      const res = answers[fetches++]!;
      if (fetches === 1) await new Promise<void>((r) => (answer = r));
      return res;
    },
  });
  const got = cache.get("ses_cl");
  await new Promise((r) => setImmediate(r));
  cache.clear();
  answer();
  const s = await got;
  assert.deepEqual({ status: SessionStatus[s.status], fetches }, { status: "REVOKED", fetches: 2 });
  assert.equal(cache.peek("ses_cl")?.status, SessionStatus.REVOKED);
});

test("a watch change kept for a fetch in flight is forgotten when the cache is cleared (another store): it never overrides the new store's state", async () => {
  // Two sessions: one whose fetch stays in flight throughout, and one the
  // old store's watch changed (kept for fetches in flight) before the reset.
  const agent = { agentId: "reset-agent", revision: 1n };
  let answerHeld!: () => void;
  let heldOnce = false;
  const cache = new SessionCache({
    maxSessions: 10,
    maxBytes: 1 << 20,
    fetch: async (id) => {
      // Only its first read waits (one begun before the clear is read again).
      if (id === "ses_held" && !heldOnce) {
        heldOnce = true;
        await new Promise<void>((r) => (answerHeld = r));
      }
      // The new store's history is shorter: its revisions are lower.
      return create(GetSessionStateResponseSchema, { sessions: [stateOf(id, "reset-agent", 3n, SessionStatus.REVOKED)], agent, revision: 3n });
    },
  });
  const held = cache.get("ses_held");
  await new Promise((r) => setImmediate(r));
  cache.applySession(stateOf("ses_other", "reset-agent", 50n, SessionStatus.ACTIVE));
  cache.clear();
  const other = await cache.get("ses_other");
  assert.deepEqual({ status: SessionStatus[other.status], revision: other.revision }, { status: "REVOKED", revision: 3 });
  answerHeld();
  await held;
});

describe("SessionCache byte bound counts the policies the sessions use", () => {
  const MAX = 1 << 20;
  /** A policy of 1,000 allowed merchants of 256 characters (the proto's limits allow it): ~260 KB encoded. */
  const bigPolicy = (tag: string) => create(SessionPolicySchema, { currencyCode: "USD", allowedMerchants: Array.from({ length: 1000 }, (_, j) => `${tag}-${j}-`.padEnd(256, "x")) });
  const put = (cache: SessionCache, id: string, policy: SessionPolicy, revision = 1n) =>
    cache.applySession(create(SessionStateSchema, { ...stateOf(id, "mem-agent", revision, SessionStatus.ACTIVE), policy }), true);
  const newCache = (onChange?: (b: CachedSession, a: CachedSession | undefined) => void) =>
    new SessionCache({ maxSessions: 100_000, maxBytes: MAX, fetch: () => Promise.reject(new Error("no fetch here")), onChange });

  test("sessions with large policies of their own: only as many as fit stay, the most recent, and the owners of the rest are told", () => {
    const left: string[] = [];
    const cache = newCache((b, a) => a === undefined && left.push(b.sessionId));
    const encoded = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const p = bigPolicy(`m${i}`);
      encoded.set(`ses_big${i}`, toBinary(SessionPolicySchema, p).byteLength);
      put(cache, `ses_big${i}`, p);
    }
    const held = [...encoded.keys()].filter((id) => cache.peek(id) !== undefined);
    const heldBytes = held.reduce((n, id) => n + encoded.get(id)!, 0);
    assert.ok(heldBytes <= MAX, `${held.length} sessions held whose policies alone are ${heldBytes} bytes encoded`);
    assert.ok(cache.bytes <= MAX && cache.bytes >= heldBytes, `estimate ${cache.bytes}`);
    assert.ok(held.length >= 1 && held.includes("ses_big39"), "the newest stays");
    assert.equal(left.length + held.length, 40);
  });

  test("a policy many sessions share is counted once, and no longer once none uses it", () => {
    const cache = newCache();
    // ~100 KB encoded: with 1,000 sessions, well within 1 MiB if counted once.
    const shared = create(SessionPolicySchema, { currencyCode: "USD", allowedMerchants: Array.from({ length: 400 }, (_, j) => `s-${j}-`.padEnd(256, "x")) });
    for (let i = 0; i < 1000; i++) put(cache, `ses_sh${i}`, shared);
    assert.equal(cache.size, 1000, "1,000 small sessions and one large policy fit in 1 MiB");
    const one = cache.bytes;
    // Every session moves to a small policy: the large one is counted no more.
    for (let i = 0; i < 1000; i++) put(cache, `ses_sh${i}`, create(SessionPolicySchema, { currencyCode: "USD" }), 2n);
    assert.ok(one - cache.bytes > 200_000, `${one} → ${cache.bytes}`);
    cache.clear();
    assert.equal(cache.bytes, 0);
  });
});
