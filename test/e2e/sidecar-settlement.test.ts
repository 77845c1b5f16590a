import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { AgentService } from "../../src/gen/warden/v1/agent_service_pb.js";
import { ActionStatus, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import { createLogger } from "../../src/server/logger.js";
import type { RunningSidecar } from "../../src/sidecar/start-sidecar.js";
import { startTestSidecar } from "../helpers/server-process.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, fn: () => Promise<boolean> | boolean, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn()) return;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function code(p: Promise<unknown>): Promise<{ code: Code | "ok"; message: string }> {
  try {
    await p;
    return { code: "ok", message: "" };
  } catch (e) {
    const c = ConnectError.from(e);
    return { code: c.code, message: c.rawMessage };
  }
}

/**
 * A control plane (`warden serve` without auth, on PostgreSQL, which mounts
 * SyncService) and in-process sidecars pointed at its gRPC port, as
 * start-sidecar.ts wires them for `warden sidecar`.
 */
describe("holds and leases of sessions whose terms changed, settled through sidecars", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let cp: RunningServer;
  const sidecars: RunningSidecar[] = [];
  let admin: Client<typeof SessionService>;

  const newSidecar = async (agentId: string, reportIntervalMs = 20, cacheMaxSessions = 1000) => {
    const s = await startTestSidecar(`http://127.0.0.1:${cp.grpcPort}`, agentId, { reportIntervalMs, cacheMaxSessions });
    sidecars.push(s);
    return s;
  };
  const policyOf = (s: RunningSidecar) => createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${s.grpcPort}` }));
  const actionRow = async (id: string) =>
    (await cp.store.db.query<{ status: number; captured_value: string; written_off_value: string | null }>("SELECT status, captured_value, written_off_value FROM actions WHERE action_id = $1", [id])).rows[0];

  before(async () => {
    pgdb = await createPostgresDatabase();
    cp = await startServer({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      dataDir: "",
      databaseUrl: pgdb.url,
      sweepIntervalMs: 200,
      logger: createLogger("silent"),
      leaseReconcileGraceMs: 500,
    });
    admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
  });
  after(async () => {
    for (const s of sidecars) await s.close(2000);
    await cp?.close(0);
    await pgdb?.drop();
  });

  test("a sidecar refuses another agent's session it fetched (no token checked here), caching and leasing nothing of it", async () => {
    // This control plane asks no credentials, so it answers for any
    // session; the sidecar's watch covers only its agent, and a session it
    // served would never hear of its revocation.
    const sc = await newSidecar("fetching-agent");
    const policy = policyOf(sc);
    const foreign = (await admin.createSession(sessionRequest("fetched-agent", { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const refused = { code: Code.PermissionDenied, message: `session_id: session "${foreign}" belongs to agent "fetched-agent"; this sidecar serves agent "fetching-agent"` };
    assert.deepEqual(await code(policy.check({ sessionId: foreign, action: payment(USD(1)) })), refused);
    assert.deepEqual(await code(policy.authorize({ sessionId: foreign, action: payment(USD(1)), idempotencyKey: "k-fetched" })), refused);
    assert.equal(sc.cache.peek(foreign), undefined);
    const leases = await cp.store.db.query<{ n: string }>("SELECT count(*) AS n FROM leases WHERE session_id = $1", [foreign]);
    assert.equal(leases.rows[0]!.n, "0");
  });

  test("a hold of a revoked session is refused on its sidecar, which tells the store it was never captured", async () => {
    const agent = "revoked-hold";
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policy.authorize({ sessionId, action: payment(USD(40)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    await admin.revokeSession({ sessionId, reason: "stop" });
    // The sidecar learns of the revocation (as it does within its bound).
    await until("the sidecar to see the revocation", async () => (await code(policy.check({ sessionId, action: payment(USD(1)) }))).code === Code.FailedPrecondition);
    // The store voided the hold when the session ended (endSessions): the
    // control plane would refuse to capture it now.
    const captured = await code(policy.capture({ sessionId, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(40) } }));
    assert.equal(captured.code, Code.FailedPrecondition);
    assert.match(captured.message, /has ended \(REVOKED\)/);
    // The store wrote the hold off when the session ended (the sidecar
    // might have captured it); the sidecar's word that it did not gives it back.
    await until("the sidecar's word to reach the store", async () => (await actionRow(held.authorizationId))?.written_off_value === null);
    assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.VOIDED);
    assert.equal((await admin.getSession({ sessionId })).session?.usage?.valueWrittenOffMicros, 0n);
  });

  test("a hold that lapses unsettled on its sidecar is reported so: the store closes it then, not a minute later, and counts nothing spent", async () => {
    const agent = "lapsed-unsettled";
    const sc = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) }, holdTtl: durationFromMs(1000) }));
    const sessionId = session!.sessionId;
    const held = await policyOf(sc).authorize({ sessionId, action: payment(USD(30)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    // Without the sidecar's word the store would keep it open 60 s past
    // its expiry (SIDECAR_HOLD_GRACE_MS), then write it off as spent.
    await until("the hold to be closed in the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.EXPIRED, 5_000);
    assert.equal((await actionRow(held.authorizationId))?.written_off_value, null);
    const u = (await admin.getSession({ sessionId })).session!.usage!;
    assert.equal(u.valueCommittedMicros, 0n);
    assert.equal(u.valueHeldMicros, u.valueLeasedMicros, "nothing held but the sidecar's lease");
  });

  test("a sidecar shut down cleanly hands its holds back: they are captured through another sidecar, or expire with nothing written off", async () => {
    const agent = "handed-back";
    const leaving = await newSidecar(agent);
    const staying = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) }, holdTtl: durationFromMs(1500) }));
    const sessionId = session!.sessionId;
    const kept = await policyOf(leaving).authorize({ sessionId, action: payment(USD(20)) });
    const left = await policyOf(leaving).authorize({ sessionId, action: payment(USD(10)) });
    sidecars.splice(sidecars.indexOf(leaving), 1);
    await leaving.close(2000);
    const placedBy = async (id: string) => (await cp.store.db.query<{ placed_by: string | null }>("SELECT placed_by FROM actions WHERE action_id = $1", [id])).rows[0]?.placed_by;
    assert.equal(await placedBy(kept.authorizationId), null, "the store owns it now");
    const captured = await policyOf(staying).capture({ sessionId, authorizationId: kept.authorizationId });
    assert.equal(captured.authorization?.status, ActionStatus.CAPTURED);
    // Expired at its expiry by the store's sweeper, as one of its own.
    await until("the other hold to expire", async () => (await actionRow(left.authorizationId))?.status === ActionStatus.EXPIRED, 5_000);
    assert.equal((await actionRow(left.authorizationId))?.written_off_value, null);
    assert.equal((await admin.getSession({ sessionId })).session?.usage?.valueCommittedMicros, USD(20));
  });

  test("a hold of a session revoked after it left the sidecar's cache is refused too: the session is fetched again", async () => {
    const agent = "evicted-hold";
    const sc = await newSidecar(agent, 20, 1);
    const policy = policyOf(sc);
    const first = (await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const second = (await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const held = await policy.authorize({ sessionId: first, action: payment(USD(40)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    // A cache of one session: deciding for the second evicts the first.
    assert.equal((await policy.check({ sessionId: second, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.equal(sc.cache.peek(first), undefined);
    await admin.revokeSession({ sessionId: first, reason: "stop" });
    const captured = await code(policy.capture({ sessionId: first, authorizationId: held.authorizationId }));
    assert.deepEqual(captured, { code: Code.FailedPrecondition, message: `session_id: session "${first}" has ended (REVOKED)` });
    assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.VOIDED);
  });

  test("agent limit: a hold of a revoked session is not captured on its sidecar, so the agent cannot spend past its limit", async () => {
    const agent = "revoked-hold-agent";
    await createClient(AgentService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` })).updateAgentPolicy({
      agentId: agent,
      policy: { currencyCode: "USD", daily: { maxValueMicros: USD(100) } },
    });
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    const s1 = (await admin.createSession(sessionRequest(agent, {}))).session!.sessionId;
    const s2 = (await admin.createSession(sessionRequest(agent, {}))).session!.sessionId;
    const held = await policy.authorize({ sessionId: s1, action: payment(USD(40)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    await admin.revokeSession({ sessionId: s1, reason: "stop" });
    await until("the sidecar to see the revocation", async () => (await code(policy.check({ sessionId: s1, action: payment(USD(1)) }))).code === Code.FailedPrecondition);
    let acknowledged = 0n;
    const capture = await code(policy.capture({ sessionId: s1, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(40) } }));
    if (capture.code === "ok") acknowledged += USD(40);
    assert.equal(capture.code, Code.FailedPrecondition, "the store released the hold when the session ended; the sidecar refuses it too");
    // The agent's other session spends what the agent has left.
    for (let i = 0; i < 30; i++) {
      const r = await policy.check({ sessionId: s2, action: payment(USD(5)) });
      if (r.decision?.outcome === Outcome.ALLOW) acknowledged += USD(5);
    }
    await sleep(300);
    const { rows } = await cp.store.db.query<{ v: string }>("SELECT day_committed_value AS v FROM scope_usage WHERE scope_key = $1", [`a:${agent}`]);
    assert.ok(
      acknowledged <= USD(100),
      `the agent's daily limit is 100 USD; the sidecar acknowledged ${acknowledged / 1_000_000n} USD of captures and checks (the store counts ${BigInt(rows[0]!.v) / 1_000_000n} USD committed)`,
    );
  });

  test("a hold past its expiry is refused on every sidecar, not only the one that placed it", async () => {
    const agent = "expired-hold";
    const placing = await newSidecar(agent);
    const other = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) }, holdTtl: durationFromMs(1000) }));
    const sessionId = session!.sessionId;
    const held = await policyOf(placing).authorize({ sessionId, action: payment(USD(30)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    const expiresAt = Number(held.holdExpireTime!.seconds) * 1000 + held.holdExpireTime!.nanos / 1e6;
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    await sleep(Math.max(0, expiresAt - Date.now()) + 300);
    const here = await code(policyOf(placing).capture({ sessionId, authorizationId: held.authorizationId }));
    assert.equal(here.code, Code.FailedPrecondition, "expired, says the placing sidecar");
    assert.match(here.message, /has expired/);
    const elsewhere = await code(policyOf(other).capture({ sessionId, authorizationId: held.authorizationId }));
    assert.deepEqual(
      elsewhere,
      { code: Code.FailedPrecondition, message: elsewhere.message },
      `a hold past its hold_expire_time (${new Date(expiresAt).toISOString()}) must not be captured; the other sidecar answered ${elsewhere.code === "ok" ? "OK" : Code[elsewhere.code as Code]}`,
    );
  });

  test("a capture retried with its idempotency key on another sidecar gets the first answer", async () => {
    const agent = "capture-key";
    const a = await newSidecar(agent);
    const b = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policyOf(a).authorize({ sessionId, action: payment(USD(20)), idempotencyKey: "auth-1" });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    const req = { sessionId, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(15) }, idempotencyKey: "cap-1" };
    const first = await policyOf(a).capture(req);
    assert.equal(first.authorization?.status, ActionStatus.CAPTURED);
    await until("the capture to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.CAPTURED);
    // The agent's retry (its connection dropped before the answer) lands on another pod.
    const retry = await code(policyOf(b).capture(req));
    assert.deepEqual(retry, { code: "ok", message: "" }, "the same key with the same request returns the first answer (design.md §4)");
  });

  test("a capture retried with its key on the sidecar that placed the hold gets the first answer, after the capture went through another sidecar", async () => {
    const agent = "capture-key-placing";
    const placing = await newSidecar(agent);
    const other = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policyOf(placing).authorize({ sessionId, action: payment(USD(20)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    // The agent's work moved to another pod: the capture goes there, and through it to the control plane.
    const req = { sessionId, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(15) }, idempotencyKey: "cap-moved" };
    const first = await policyOf(other).capture(req);
    assert.equal(first.authorization?.status, ActionStatus.CAPTURED);
    // The watch stream tells the placing sidecar, well within a second.
    await sleep(1000);
    // The answer was lost on the wire; the retry, same key and request, lands back on the first pod.
    const retry = await code(policyOf(placing).capture(req));
    assert.deepEqual(retry, { code: "ok", message: "" }, "the same key with the same request returns the first answer (design.md §4)");
    // Another key is another request: refused, as the hold was captured.
    const again = await code(policyOf(placing).capture({ ...req, idempotencyKey: "cap-other" }));
    assert.equal(again.code, Code.FailedPrecondition);
  });

  test("a keyed capture on the placing sidecar, with a key the store already holds for another request, is INVALID_ARGUMENT and settles nothing", async () => {
    const agent = "capture-key-reused";
    const placing = await newSidecar(agent);
    const other = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    // The agent used the key for a Check, through another pod.
    const checked = await policyOf(other).check({ sessionId, action: payment(USD(5)), idempotencyKey: "shared" });
    assert.equal(checked.decision?.outcome, Outcome.ALLOW);
    await until("the check to reach the store", async () => (await actionRow(checked.actionId))?.status === ActionStatus.CAPTURED);
    const held = await policyOf(placing).authorize({ sessionId, action: payment(USD(20)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    const reused = await code(policyOf(placing).capture({ sessionId, authorizationId: held.authorizationId, idempotencyKey: "shared" }));
    assert.deepEqual(reused, { code: Code.InvalidArgument, message: 'idempotency_key: "shared" was already used for a different request' });
    // Nothing was settled: a capture with its own key goes through, once.
    const req = { sessionId, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(15) }, idempotencyKey: "cap-own" };
    assert.equal((await policyOf(placing).capture(req)).authorization?.status, ActionStatus.CAPTURED);
    assert.equal((await policyOf(placing).capture(req)).authorization?.capturedAmount?.amountMicros, USD(15), "its retry gets the first answer");
    await until("the capture to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.CAPTURED);
    assert.equal((await actionRow(held.authorizationId))?.captured_value, String(USD(15)));
    // Its key is the store's answer now: a retry on the other pod gets it.
    assert.equal((await policyOf(other).capture(req)).authorization?.capturedAmount?.amountMicros, USD(15));
  });

  test("a hold captured or voided on its own sidecar is refused a keyed capture there with another key, not captured again through the control plane", async () => {
    for (const first of ["capture", "void"] as const) {
      const agent = `${first}-then-capture`;
      const sc = await newSidecar(agent, 60_000);
      const policy = policyOf(sc);
      const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
      const sessionId = session!.sessionId;
      const held = await policy.authorize({ sessionId, action: payment(USD(20)) });
      assert.equal(held.decision?.outcome, Outcome.ALLOW);
      // Reports go only when flushed here (a 60 s interval): the hold's record reaches the store.
      await sc.reports.flush();
      assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.HELD);
      const req = { sessionId, authorizationId: held.authorizationId, idempotencyKey: "first" };
      const settled = (await code(first === "capture" ? policy.capture(req) : policy.void(req))).code;
      // Before the next report, the agent captures again with another key.
      const again = (await code(policy.capture({ ...req, idempotencyKey: "again" }))).code;
      await sc.reports.flush();
      const row = await actionRow(held.authorizationId);
      assert.deepEqual(
        { settled, again },
        { settled: "ok", again: Code.FailedPrecondition },
        `after a ${first} on its own sidecar, the hold was captured again (store: ${ActionStatus[row!.status]}, captured ${row!.captured_value})`,
      );
    }
  });

  test("a capture answered on the placing sidecar counts, though a void through another sidecar reached the store before its report", async () => {
    const agent = "capture-then-void-elsewhere";
    // Reports only when flushed here (a 60 s interval): the capture is on its way meanwhile.
    const placing = await newSidecar(agent, 60_000);
    const other = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policyOf(placing).authorize({ sessionId, action: payment(USD(20)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await placing.reports.flush();
    const captured = await policyOf(placing).capture({ sessionId, authorizationId: held.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(15) } });
    assert.equal(captured.authorization?.status, ActionStatus.CAPTURED);
    // The agent (or a retry of a cleanup) voids it on another pod.
    const voided = await policyOf(other).void({ sessionId, authorizationId: held.authorizationId });
    assert.equal(voided.authorization?.status, ActionStatus.VOIDED);
    assert.equal(voided.authorization?.writtenOffAmount?.amountMicros, USD(20), "counted as spent until the placing sidecar's word");
    await placing.reports.flush();
    const row = await actionRow(held.authorizationId);
    assert.deepEqual(
      { status: ActionStatus[row!.status], captured: row!.captured_value, writtenOff: row!.written_off_value },
      { status: "CAPTURED", captured: String(USD(15)), writtenOff: null },
      "the money the agent was told it captured is in the ledger",
    );
    assert.equal((await admin.getSession({ sessionId })).session?.usage?.valueCommittedMicros, USD(15));
  });

  test("a hold voided through another sidecar comes back once the placing sidecar hears of it and says it had not settled it", async () => {
    const agent = "void-elsewhere";
    const placing = await newSidecar(agent);
    const other = await newSidecar(agent);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policyOf(placing).authorize({ sessionId, action: payment(USD(20)) });
    await until("the hold to reach the store", async () => (await actionRow(held.authorizationId))?.status === ActionStatus.HELD);
    const voided = await policyOf(other).void({ sessionId, authorizationId: held.authorizationId });
    assert.equal(voided.authorization?.status, ActionStatus.VOIDED);
    await until("the placing sidecar's word to give the write-off back", async () => (await actionRow(held.authorizationId))?.written_off_value === null, 5_000);
    assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.VOIDED);
    const usage = (await admin.getSession({ sessionId })).session?.usage;
    assert.deepEqual([usage?.valueCommittedMicros, usage?.valueWrittenOffMicros], [0n, 0n]);
    // And the placing sidecar refuses to settle it now.
    assert.equal((await code(policyOf(placing).capture({ sessionId, authorizationId: held.authorizationId }))).code, Code.FailedPrecondition);
  });

  test("an agent limit set while unlimited leases are out is not overspent by the agent's sessions", async () => {
    const agent = "agent-policy";
    const agents = createClient(AgentService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    // Sessions with no value limit of their own: leases of no fixed value.
    const s1 = (await admin.createSession(sessionRequest(agent, { maxPerTransactionMicros: USD(100) }))).session!.sessionId;
    const s2 = (await admin.createSession(sessionRequest(agent, { maxPerTransactionMicros: USD(100) }))).session!.sessionId;
    for (const sessionId of [s1, s2]) assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    // The person sets a daily limit of 10 USD on the agent.
    const updated = await agents.updateAgentPolicy({ agentId: agent, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(10) } } });
    await until("the sidecar to see the agent's policy", () => {
      const s = sc.cache.peek(s1);
      const scopes = s === undefined ? undefined : sc.cache.scopesOf(s);
      return scopes?.at(-1)?.policy.limits.day.maxValue === USD(10);
    });
    assert.ok(updated.agent !== undefined);
    let allowed = 2n;
    for (let i = 0; i < 15; i++) {
      for (const sessionId of [s1, s2]) {
        if ((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome === Outcome.ALLOW) allowed += 1n;
      }
    }
    await sleep(300);
    const { rows } = await cp.store.db.query<{ v: string }>("SELECT day_committed_value AS v FROM scope_usage WHERE scope_key = $1", [`a:${agent}`]);
    assert.ok(allowed <= 10n, `the agent's daily limit is 10 USD; the sidecar allowed ${allowed} USD (the store has ${BigInt(rows[0]!.v) / 1_000_000n} USD committed)`);
  });

  test("a capture through the sidecar is activity: it keeps a session with an idle timeout alive, as a capture through the control plane does", async () => {
    const agent = "idle-capture";
    const sc = await newSidecar(agent);
    const run = async (client: ReturnType<typeof policyOf>) => {
      const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }, { idleTimeout: durationFromMs(3000) }));
      const sessionId = session!.sessionId;
      const held = await client.authorize({ sessionId, action: payment(USD(10)) });
      assert.equal(held.decision?.outcome, Outcome.ALLOW);
      await sleep(2000);
      // The agent pays, 2 s into a 3 s idle timeout; 2 s later it asks again.
      await client.capture({ sessionId, authorizationId: held.authorizationId });
      await sleep(2000);
      const next = await client.check({ sessionId, action: payment(USD(1)) }).then(
        (r) => (r.decision!.outcome === Outcome.ALLOW ? "ALLOW" : `${Outcome[r.decision!.outcome]} (${r.decision!.message})`),
        (e: unknown) => Code[ConnectError.from(e).code],
      );
      const s = (await admin.getSession({ sessionId })).session!;
      return `${next}, session ${SessionStatus[s.status]}`;
    };
    const cpPolicy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    const [direct, sidecar] = await Promise.all([run(cpPolicy), run(policyOf(sc))]);
    assert.equal(direct, "ALLOW, session ACTIVE", "through the control plane, the capture counts as activity");
    assert.equal(sidecar, direct, "and through the sidecar too");
  });

  test("a paused parent takes its fork's lease back at once, not when the lease idles out", async () => {
    const agent = "paused-parent";
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    const parent = (await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const fork = (await admin.forkSession({ parentSessionId: parent, policy: { currencyCode: "USD", daily: { maxValueMicros: USD(500) } }, expiration: { case: "ttl", value: durationFromMs(600_000) } }))
      .session!.sessionId;
    assert.equal((await policy.check({ sessionId: fork, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    const activeLeases = async () =>
      (await cp.store.db.query<{ n: number }>("SELECT count(*)::int AS n FROM leases WHERE session_id = $1 AND status = 1", [fork])).rows[0]!.n;
    await until("the fork's lease to reach the store", async () => (await activeLeases()) === 1);
    await admin.pauseSession({ sessionId: parent, reason: "look" });
    // Well under the 5 s a lease nobody spends from takes to go back.
    await until("the fork's lease to go back", async () => (await activeLeases()) === 0, 2_000);
  });
});

/**
 * A control plane whose sweeper runs only once a minute: a session past its
 * expiry is then still ACTIVE in the store's rows and in every sidecar's
 * cache, as it is between sweeps.
 */
describe("holds of sessions past their expiry that the sweeper has not ended yet, on sidecars", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let cp: RunningServer;
  let sc: RunningSidecar;
  before(async () => {
    pgdb = await createPostgresDatabase();
    cp = await startServer({ grpcAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0", dataDir: "", databaseUrl: pgdb.url, sweepIntervalMs: 60_000, logger: createLogger("silent") });
    sc = await startTestSidecar(`http://127.0.0.1:${cp.grpcPort}`, "lapsed-hold");
  });
  after(async () => {
    await sc?.close(2000);
    await cp?.close(0);
    await pgdb?.drop();
  });

  test("a capture after the session's expiry is refused on the sidecar, as the store ends the session and closes the hold", async () => {
    const admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const { session } = await admin.createSession(
      sessionRequest("lapsed-hold", { daily: { maxValueMicros: USD(1000) }, holdTtl: durationFromMs(600_000) }, { expiration: { case: "ttl", value: durationFromMs(1500) } }),
    );
    const sessionId = session!.sessionId;
    const held = await policy.authorize({ sessionId, action: payment(USD(25)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    const row = async () => (await cp.store.db.query<{ status: number }>("SELECT status FROM actions WHERE action_id = $1", [held.authorizationId])).rows[0];
    await until("the hold to reach the store", async () => (await row())?.status === ActionStatus.HELD);
    const expiresAt = Number(session!.expireTime!.seconds) * 1000 + session!.expireTime!.nanos / 1e6;
    await sleep(Math.max(0, expiresAt - Date.now()) + 100);

    const captured = await code(policy.capture({ sessionId, authorizationId: held.authorizationId }));
    assert.deepEqual(captured, { code: Code.FailedPrecondition, message: `session_id: session "${sessionId}" has ended (EXPIRED)` });
    // What the store does with the same capture: the session ends, the hold goes back.
    const direct = await code(createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` })).capture({ sessionId, authorizationId: held.authorizationId }));
    assert.equal(direct.code, Code.FailedPrecondition);
    assert.equal((await row())?.status, ActionStatus.EXPIRED, "closed with the session's lapse");
    assert.equal((await admin.getSession({ sessionId })).session?.status, SessionStatus.EXPIRED);
    // Written off or released, the sidecar's word leaves nothing spent.
    await until("nothing to be counted spent", async () => (await admin.getSession({ sessionId })).session?.usage?.valueCommittedMicros === 0n);
  });
});
