// A sidecar resumes its watch from the last revision it saw. A store that
// is not the one that revision came from (a promoted replica that lagged, a
// restore from a copy, another database) may have given out that number
// too, for other changes: the watch's store_epoch tells them apart, and
// the sidecar is told to reset.
import assert from "node:assert/strict";
import { test } from "node:test";
import pg from "pg";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import type { RunningSidecar } from "../../src/sidecar/start-sidecar.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { freePort, startTestSidecar, tempDataDir } from "../helpers/server-process.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const AGENT = "restored-store-agent";
const AGENT_REPLACED = "replaced-store-agent";

function start(url: string, port: number): Promise<RunningServer> {
  return startServer({
    grpcAddress: `127.0.0.1:${port}`,
    httpAddress: "127.0.0.1:0",
    dataDir: tempDataDir(),
    databaseUrl: url,
    sweepIntervalMs: 60_000,
    logger: createLogger("silent"),
  });
}

test("a store restored from an earlier copy, whose revision then passed the sidecar's, resets the sidecar: a revocation made there is honoured", async () => {
  const a = await createPostgresDatabase();
  const bName = `warden_test_restored_${Date.now()}`;
  const bUrl = new URL(a.url);
  bUrl.pathname = `/${bName}`;
  const adminUrl = new URL(a.url);
  adminUrl.pathname = "/postgres";
  const aName = new URL(a.url).pathname.slice(1);
  const port = await freePort();
  let cp: RunningServer | undefined;
  let sc: RunningSidecar | undefined;
  try {
    cp = await start(a.url, port);
    const admin = () => createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    sc = await startTestSidecar(`http://127.0.0.1:${port}`, AGENT, { stalenessBoundMs: 10_000, leaseTtlMs: 60_000 });
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin().createSession(sessionRequest(AGENT, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.ok(sc.engine.leaseCount > 0, "precondition: a lease in hand");
    await sleep(1500);

    // A snapshot of the store now: what a lagging replica (or a backup) has.
    await cp.close(0);
    const c = new pg.Client({ connectionString: adminUrl.toString() });
    await c.connect();
    await c.query(`CREATE DATABASE ${bName} TEMPLATE ${aName}`);
    await c.end();

    // The primary goes on a little: the sidecar sees a few more revisions.
    cp = await start(a.url, port);
    for (let i = 0; i < 5; i++) await admin().createSession(sessionRequest(AGENT, { daily: { maxValueMicros: USD(10) } }));
    await sleep(1500);
    const seen = sc.sync.currentRevision;

    // Failover to the snapshot: there a person revokes the session, and more
    // changes follow before the sidecar reconnects (here: before the
    // replica takes the address), so its revision passes the sidecar's.
    await cp.close(0);
    const other = await start(bUrl.toString(), 0);
    const otherAdmin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${other.grpcPort}` }));
    await otherAdmin.revokeSession({ sessionId, reason: "stop this agent" });
    for (let i = 0; i < 10; i++) await otherAdmin.createSession(sessionRequest("someone-else", { daily: { maxValueMicros: USD(10) } }));
    const restoredRevision = await other.store.revision();
    await other.close(0);
    // Offline, inside the staleness bound, the sidecar spends from its lease
    // (as designed); this also keeps the lease from idling out (5 s).
    assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.ok(restoredRevision > seen, `precondition: the restored store (${restoredRevision}) is past the sidecar's revision (${seen})`);

    cp = await start(bUrl.toString(), port);
    assert.equal((await cp.store.sessionState(sessionId)).sessions[0]!.status, SessionStatus.REVOKED, "precondition: revoked in the store");
    const end = Date.now() + 10_000;
    while (!(sc.sync.connected && sc.sync.currentRevision >= restoredRevision) && Date.now() < end) await sleep(50);
    assert.ok(sc.sync.connected && sc.sync.fresh(), "precondition: the sidecar is connected to the control plane and fresh");
    await sleep(500);

    const res = await policy.check({ sessionId, action: payment(USD(5)) }).catch((e: unknown) => e);
    const outcome = res instanceof Error ? `error: ${res.message}` : Outcome[(res as { decision: { outcome: Outcome } }).decision.outcome];
    assert.notEqual(
      outcome,
      "ALLOW",
      `session ${sessionId} is REVOKED in the store the sidecar has caught up with, yet the sidecar still allows spending on it (cached status ${SessionStatus[sc.cache.peek(sessionId)?.status ?? 0]})`,
    );
  } finally {
    await sc?.close(200);
    await cp?.close(0);
    await a.drop();
    const c = new pg.Client({ connectionString: adminUrl.toString() });
    await c.connect();
    await c.query(`DROP DATABASE IF EXISTS ${bName} WITH (FORCE)`);
    await c.end();
  }
});

test("a control plane replaced by one on another store, whose revision is past the sidecar's, resets the sidecar: it no longer decides from the old store's state", async () => {
  const a = await createPostgresDatabase();
  const b = await createPostgresDatabase();
  const port = await freePort();
  let cp: RunningServer | undefined;
  let sc: RunningSidecar | undefined;
  try {
    // Store B already has a history: more revisions than A will reach.
    const warm = await start(b.url, 0);
    const warmAdmin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${warm.grpcPort}` }));
    for (let i = 0; i < 30; i++) await warmAdmin.createSession(sessionRequest("someone-else", { daily: { maxValueMicros: USD(10) } }));
    const revisionB = await warm.store.revision();
    await warm.close(0);

    cp = await start(a.url, port);
    const admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    sc = await startTestSidecar(`http://127.0.0.1:${port}`, AGENT_REPLACED, { stalenessBoundMs: 3_000, leaseTtlMs: 30_000 });
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin.createSession(sessionRequest(AGENT_REPLACED, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.ok(sc.engine.leaseCount > 0, "precondition: a lease from store A in hand");
    // Let the watch reach A's newest revision.
    await sleep(1500);
    const revisionA = sc.sync.currentRevision;
    assert.ok(revisionB > revisionA, `precondition: store B (revision ${revisionB}) is ahead of what the sidecar saw of A (${revisionA})`);

    // The control plane is replaced: same address, another store.
    await cp.close(0);
    cp = await start(b.url, port);
    const end = Date.now() + 10_000;
    while (!(sc.sync.connected && sc.sync.currentRevision >= revisionB) && Date.now() < end) await sleep(50);
    assert.ok(sc.sync.connected && sc.sync.fresh(), "precondition: the sidecar is connected to the new control plane, and fresh");
    // Store B has never heard of the session.
    const known = await cp.store.sessionState(sessionId).then(
      () => true,
      () => false,
    );
    assert.equal(known, false, "precondition: the new store does not have the session");

    const res = await policy.check({ sessionId, action: payment(USD(5)) }).catch((e: unknown) => e);
    const outcome = res instanceof Error ? `error: ${res.message}` : Outcome[(res as { decision: { outcome: Outcome } }).decision.outcome];
    assert.notEqual(
      outcome,
      "ALLOW",
      `the sidecar allowed spending on session ${sessionId}, which the store it now syncs with does not have (it still caches store A's state and lease; no reset was sent because ${revisionA} < ${revisionB})`,
    );
  } finally {
    await sc?.close(200);
    await cp?.close(0);
    await a.drop();
    await b.drop();
  }
});
