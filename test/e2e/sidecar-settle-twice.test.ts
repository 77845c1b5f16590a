import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningSidecar, startSidecar } from "../../src/sidecar/start-sidecar.js";
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

async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    return Code[ConnectError.from(e).code]!;
  }
}

/**
 * A hold settled on the sidecar that placed it goes into settledHolds; a
 * later keyed Capture with another key (a new request: the agent's code
 * captures again, or a second worker) finds it there and, being keyed, is
 * passed to the control plane (settleElsewhere), which has not heard of the
 * local settlement yet (it waits for the next report) and captures the hold
 * again. Both calls are acknowledged.
 */
describe("a hold settled on its own sidecar, then settled there again with another key", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let cp: RunningServer;
  const sidecars: RunningSidecar[] = [];
  let admin: ReturnType<typeof createClient<typeof SessionService>>;

  // A long report interval: reports go only when the test flushes them, so
  // "the local settlement has not reached the store yet" is deterministic
  // (with the default 50 ms it is merely a window).
  const newSidecar = async (agentId: string) => {
    const s = await startSidecar({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      controlPlaneUrl: `http://127.0.0.1:${cp.grpcPort}`,
      agentId,
      stalenessBoundMs: 5_000,
      leaseTtlMs: 10_000,
      reportIntervalMs: 60_000,
      cacheMaxSessions: 1000,
      cacheMaxBytes: 1 << 24,
      logger: createLogger("silent"),
      requireSessionTokens: false,
    });
    sidecars.push(s);
    await until("the sidecar to sync", () => s.sync.synced && s.sync.fresh());
    return s;
  };
  const policyOf = (s: RunningSidecar) => createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${s.grpcPort}` }));
  const actionRow = async (id: string) =>
    (await cp.store.db.query<{ status: number; captured_value: string }>("SELECT status, captured_value FROM actions WHERE action_id = $1", [id])).rows[0];

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

  test("a second keyed capture of a hold captured on its own sidecar is refused, not captured again through the control plane", async () => {
    const agent = "capture-twice";
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policy.authorize({ sessionId, action: payment(USD(20)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    // The hold's record reaches the store (as it does within 50 ms by default).
    await sc.reports.flush();
    assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.HELD);

    const first = await outcome(policy.capture({ sessionId, authorizationId: held.authorizationId, idempotencyKey: "cap-a" }));
    // Before the next report (--report-interval), the agent captures again with another key.
    const second = await outcome(policy.capture({ sessionId, authorizationId: held.authorizationId, idempotencyKey: "cap-b" }));
    await sc.reports.flush();
    const row = await actionRow(held.authorizationId);
    assert.deepEqual(
      { first, second },
      { first: "OK", second: "FailedPrecondition" },
      `one hold acknowledged as captured twice on the sidecar that placed it (store: ${ActionStatus[row!.status]}, captured ${row!.captured_value})`,
    );
  });

  test("a keyed capture of a hold voided on its own sidecar is refused, not captured through the control plane", async () => {
    const agent = "void-then-capture";
    const sc = await newSidecar(agent);
    const policy = policyOf(sc);
    const { session } = await admin.createSession(sessionRequest(agent, { daily: { maxValueMicros: USD(1000) } }));
    const sessionId = session!.sessionId;
    const held = await policy.authorize({ sessionId, action: payment(USD(20)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    await sc.reports.flush();
    assert.equal((await actionRow(held.authorizationId))?.status, ActionStatus.HELD);

    const voided = await outcome(policy.void({ sessionId, authorizationId: held.authorizationId, idempotencyKey: "void-a" }));
    const captured = await outcome(policy.capture({ sessionId, authorizationId: held.authorizationId, idempotencyKey: "cap-b" }));
    await sc.reports.flush();
    const row = await actionRow(held.authorizationId);
    assert.deepEqual(
      { voided, captured },
      { voided: "OK", captured: "FailedPrecondition" },
      `the agent was told the hold was voided, yet it was captured (store: ${ActionStatus[row!.status]}, captured ${row!.captured_value})`,
    );
  });
});
