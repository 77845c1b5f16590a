import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { type Approval, ApprovalService, ApprovalStatus } from "../../src/gen/warden/v1/approval_service_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { startSidecar } from "../../src/sidecar/start-sidecar.js";
import type { Database } from "../../src/store/database.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { freePort, type GrpcClient, grpcClient, type ServerProcess, startTestServer, startWardenCli, startWardenProcess, storeArgs } from "../helpers/server-process.js";

const AGENT = "agent-approvals-e2e";

/** Rejects with a gRPC status whose message matches. */
async function rejectsWith(p: Promise<unknown>, code: grpc.status, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(grpc.status[e.code], grpc.status[code], e.details);
    assert.match(e.details, message);
    return true;
  });
}

/** Every message of a WatchApproval stream, until it ends. */
async function collect(stream: AsyncIterable<{ approval: Approval }>): Promise<ApprovalStatus[]> {
  return (await watch(stream)).all;
}

/**
 * Reads a watch stream; `first` resolves with its first status, the one
 * it had when the watch reached the control plane. A test decides only
 * after that, or the decision may come first and the watch open on it.
 */
function watch(stream: AsyncIterable<{ approval: Approval }>): { first: Promise<ApprovalStatus>; all: Promise<ApprovalStatus[]> } {
  let onFirst: (s: ApprovalStatus) => void = () => {};
  const first = new Promise<ApprovalStatus>((resolve) => (onFirst = resolve));
  const all = (async () => {
    const seen: ApprovalStatus[] = [];
    for await (const m of stream) {
      seen.push(m.approval.status);
      if (seen.length === 1) onFirst(m.approval.status);
    }
    // Ended without a message: fail the test's assertion rather than hang it.
    if (seen.length === 0) onFirst(ApprovalStatus.UNSPECIFIED);
    return seen;
  })();
  return { first, all };
}

/**
 * The approval flow end to end over gRPC (@grpc/grpc-js clients): a
 * control plane on PostgreSQL that requires credentials, and a sidecar
 * process in front of the agent. The agent asks and waits through the
 * sidecar with its session token; a person decides at the control plane
 * with an approver key.
 */
describe("approvals end to end: agent through a sidecar, approver at the control plane", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let db: Database;
  let cp: ServerProcess;
  let sidecar: ServerProcess;
  let admin: GrpcClient;
  let approver: GrpcClient;
  let auditor: GrpcClient;
  let agentPolicy: GrpcClient;
  let agentApprovals: GrpcClient;
  let cpApprovals: GrpcClient;

  before(async () => {
    pgdb = await createPostgresDatabase();
    db = createPgDatabase({ connectionString: pgdb.url });
    const cpPort = await freePort();
    cp = await startWardenProcess("control-plane", [...storeArgs({ databaseUrl: pgdb.url }), "--grpc-listen", `127.0.0.1:${cpPort}`]);
    const keys = createApiKeys({ db });
    const bearer = async (role: "admin" | "approver" | "auditor") => ({ authorization: `Bearer ${(await keys.create({ role })).secret}` });
    const agentKey = await keys.create({ role: "agent", agentId: AGENT });
    const tokenFile = join(mkdtempSync(join(tmpdir(), "warden-approvals-")), "token");
    writeFileSync(tokenFile, agentKey.secret);
    const cpAddress = `127.0.0.1:${cpPort}`;
    admin = grpcClient(SessionService, cpAddress, 0, await bearer("admin"));
    approver = grpcClient(ApprovalService, cpAddress, 0, await bearer("approver"));
    auditor = grpcClient(ApprovalService, cpAddress, 0, await bearer("auditor"));
    cpApprovals = grpcClient(ApprovalService, cpAddress, 1);
    sidecar = await startWardenProcess("sidecar", ["--control-plane", `http://${cpAddress}`, "--agent-id", AGENT, "--control-plane-token-file", tokenFile]);
    agentPolicy = grpcClient(PolicyService, sidecar.grpcAddress);
    agentApprovals = grpcClient(ApprovalService, sidecar.grpcAddress);
  });
  after(async () => {
    for (const c of [admin, approver, auditor, agentPolicy, agentApprovals, cpApprovals]) c?.close();
    await sidecar?.stop();
    await cp?.stop();
    await assertLedgerConsistent(db);
    await db.close();
    await pgdb.drop();
  });

  /** A session needing approval above 100 USD, with 1000 USD a day; and its agent's headers. */
  async function session(policy: Record<string, unknown> = {}): Promise<{ sessionId: string; auth: Record<string, string> }> {
    const res = await admin.createSession(
      create(CreateSessionRequestSchema, {
        agentId: AGENT,
        policy: { currencyCode: "USD", requireApprovalAboveMicros: USD(100), daily: { maxValueMicros: USD(1000) }, ...policy },
        expiration: { case: "ttl", value: durationFromMs(3_600_000) },
      }),
    );
    return { sessionId: res.session.sessionId as string, auth: { authorization: `Bearer ${res.sessionToken as string}` } };
  }

  const usage = async (sessionId: string) => (await admin.getSession({ sessionId })).session.usage;

  test("approve: the agent waits on WatchApproval, an approver approves, the agent captures", async () => {
    const s = await session();
    const r = await agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(150)) }, {}, s.auth);
    assert.equal(r.decision.outcome, Outcome.NEEDS_APPROVAL);
    assert.deepEqual(r.decision.reasons, [Reason.APPROVAL_REQUIRED]);
    assert.match(r.approvalId, /^apr_/);
    assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(150), "held while pending");

    const watching = watch(agentApprovals.watchApproval({ approvalId: r.approvalId, sessionId: s.sessionId }, {}, s.auth));
    assert.equal(await watching.first, ApprovalStatus.PENDING);
    // The approver's queue shows it.
    const queue = await approver.listApprovals({ agentId: AGENT, status: ApprovalStatus.PENDING });
    assert.ok(queue.approvals.some((a: Approval) => a.approvalId === r.approvalId));
    const approved = await approver.approveApproval({ approvalId: r.approvalId, comment: "fine" });
    assert.equal(approved.approval.status, ApprovalStatus.APPROVED);
    assert.match(approved.approval.decidedBy, /^key_/, "the approver's key id, never its secret");
    assert.deepEqual(await watching.all, [ApprovalStatus.PENDING, ApprovalStatus.APPROVED]);

    const cap = await agentPolicy.capture({ sessionId: s.sessionId, authorizationId: approved.approval.actionId }, {}, s.auth);
    assert.equal(cap.authorization.status, ActionStatus.CAPTURED);
    const u = await usage(s.sessionId);
    assert.equal(u.valueCommittedMicros, USD(150));
    assert.equal(u.valueHeldMicros, 0n);
  });

  test("deny: the watcher hears DENIED and the hold is released", async () => {
    const s = await session();
    const r = await agentPolicy.check({ sessionId: s.sessionId, action: payment(USD(500)) }, {}, s.auth);
    assert.equal(r.decision.outcome, Outcome.NEEDS_APPROVAL);
    const watching = watch(agentApprovals.watchApproval({ approvalId: r.approvalId, sessionId: s.sessionId }, {}, s.auth));
    assert.equal(await watching.first, ApprovalStatus.PENDING);
    await approver.denyApproval({ approvalId: r.approvalId, reason: "too much" });
    assert.deepEqual(await watching.all, [ApprovalStatus.PENDING, ApprovalStatus.DENIED]);
    assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);
    await rejectsWith(agentPolicy.capture({ sessionId: s.sessionId, authorizationId: r.actionId }, {}, s.auth), grpc.status.FAILED_PRECONDITION, /denied/);
  });

  test("approve a lower amount: capture is capped at it", async () => {
    const s = await session();
    const r = await agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(400)) }, {}, s.auth);
    const approve = { approvalId: r.approvalId, amount: { currencyCode: "USD", amountMicros: USD(250) }, idempotencyKey: "approve-1" };
    const a = await approver.approveApproval(approve);
    assert.equal(a.approval.approvedAmount.amountMicros, USD(250));
    assert.equal((await usage(s.sessionId)).valueHeldMicros, USD(250));
    // A retry after a lost answer (the console's double click) gets the first answer.
    assert.deepEqual((await approver.approveApproval(approve)).approval, a.approval);
    await rejectsWith(approver.approveApproval({ ...approve, idempotencyKey: "" }), grpc.status.FAILED_PRECONDITION, /already APPROVED/);
    await rejectsWith(
      agentPolicy.capture({ sessionId: s.sessionId, authorizationId: a.approval.actionId, amount: { currencyCode: "USD", amountMicros: USD(251) } }, {}, s.auth),
      grpc.status.FAILED_PRECONDITION,
      /above the held/,
    );
    await agentPolicy.capture({ sessionId: s.sessionId, authorizationId: a.approval.actionId }, {}, s.auth);
    assert.equal((await usage(s.sessionId)).valueCommittedMicros, USD(250));
  });

  test("time out: nobody decides, the stream ends with EXPIRED at the deadline", async () => {
    const s = await session({ approvalTtl: durationFromMs(1000) });
    const r = await agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(300)) }, {}, s.auth);
    const started = Date.now();
    assert.deepEqual(
      await collect(agentApprovals.watchApproval({ approvalId: r.approvalId, sessionId: s.sessionId }, {}, s.auth)),
      [ApprovalStatus.PENDING, ApprovalStatus.EXPIRED],
    );
    assert.ok(Date.now() - started >= 900, "not before its deadline");
    const got = await approver.getApproval({ approvalId: r.approvalId });
    assert.equal(got.approval.decidedBy, "timeout");
    assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);
    await rejectsWith(approver.approveApproval({ approvalId: r.approvalId }), grpc.status.FAILED_PRECONDITION, /already EXPIRED/);
  });

  test("the agent cancels through its sidecar; the hold is released", async () => {
    const s = await session();
    const r = await agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(200)) }, {}, s.auth);
    const c = await agentApprovals.cancelApproval({ approvalId: r.approvalId, sessionId: s.sessionId, reason: "no longer needed" }, {}, s.auth);
    assert.equal(c.approval.status, ApprovalStatus.CANCELED);
    // The sidecar calls with its agent credential: the record names the agent.
    assert.equal(c.approval.decidedBy, `agent:${AGENT}`);
    assert.equal((await usage(s.sessionId)).valueHeldMicros, 0n);
    await rejectsWith(approver.approveApproval({ approvalId: r.approvalId }), grpc.status.FAILED_PRECONDITION, /already CANCELED/);
  });

  test("who may do what: an agent never decides; tokens and keys only reach their own sessions", async () => {
    const s = await session();
    const other = await session();
    const r = await agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(150)) }, {}, s.auth);
    // The agent's session token cannot approve, at the sidecar or at the control plane.
    await rejectsWith(agentApprovals.approveApproval({ approvalId: r.approvalId }, {}, s.auth), grpc.status.PERMISSION_DENIED, /ApproveApproval/);
    await rejectsWith(cpApprovals.approveApproval({ approvalId: r.approvalId }, {}, s.auth), grpc.status.PERMISSION_DENIED, /ApproveApproval/);
    // Nor can an auditor.
    await rejectsWith(auditor.approveApproval({ approvalId: r.approvalId }), grpc.status.PERMISSION_DENIED, /auditor/);
    // Another session's token cannot watch or cancel it; naming the wrong session finds nothing.
    await rejectsWith(
      agentApprovals.cancelApproval({ approvalId: r.approvalId, sessionId: s.sessionId }, {}, other.auth),
      grpc.status.UNAUTHENTICATED,
      /another session/,
    );
    await rejectsWith(agentApprovals.getApproval({ approvalId: r.approvalId, sessionId: other.sessionId }, {}, other.auth), grpc.status.NOT_FOUND, /approval_id/);
    // Malformed ids are named.
    await rejectsWith(approver.getApproval({ approvalId: "nope" }), grpc.status.INVALID_ARGUMENT, /approval_id/);
    assert.equal((await auditor.getApproval({ approvalId: r.approvalId })).approval.status, ApprovalStatus.PENDING, "auditors read");
  });

  test("concurrent approvals on one session never overspend", async () => {
    const s = await session({ requireApprovalAboveMicros: USD(10) });
    const asks = await Promise.all(
      Array.from({ length: 16 }, () => agentPolicy.authorize({ sessionId: s.sessionId, action: payment(USD(100)) }, {}, s.auth)),
    );
    const pending = asks.filter((r) => r.decision.outcome === Outcome.NEEDS_APPROVAL);
    assert.equal(pending.length, 10, "1000 a day holds ten pending 100s, no more");
    const results = await Promise.all([
      ...pending.map((r) => approver.approveApproval({ approvalId: r.approvalId })),
      ...Array.from({ length: 6 }, () => agentPolicy.check({ sessionId: s.sessionId, action: payment(USD(5)) }, {}, s.auth)),
    ]);
    assert.ok(results.slice(pending.length).every((r) => r.decision.outcome === Outcome.DENY), "no room for anything else");
    const approved: Approval[] = results.slice(0, pending.length).map((r) => r.approval);
    await Promise.all(approved.map((a) => agentPolicy.capture({ sessionId: s.sessionId, authorizationId: a.actionId }, {}, s.auth)));
    const u = await usage(s.sessionId);
    assert.equal(u.valueCommittedMicros, USD(1000));
    assert.ok(u.valueCommittedMicros + u.valueHeldMicros <= USD(1000), "never over the limit");
  });
});

/**
 * A control plane that shuts down (a rolling restart) while an approval is
 * still PENDING: nobody decided, so no watch may end as if it were over.
 */
describe("WatchApproval when the control plane shuts down while the approval is pending", () => {
  /** A running control plane and an approval pending on it. */
  async function pendingApproval(agentId: string) {
    const cp = await startTestServer();
    const t = createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` });
    const { session } = await createClient(SessionService, t).createSession(sessionRequest(agentId, { requireApprovalAboveMicros: USD(10) }));
    const r = await createClient(PolicyService, t).authorize({ sessionId: session!.sessionId, action: payment(USD(50)) });
    assert.equal(r.decision?.outcome, Outcome.NEEDS_APPROVAL);
    // Closed once, by the test or else after it.
    let closing: Promise<void> | undefined;
    const close = (graceMs: number) => (closing ??= cp.close(graceMs));
    return { cp, close, sessionId: session!.sessionId, approvalId: r.approvalId };
  }

  /** How a watch stream ended: "OK" after `statuses`, or `CODE: message`. */
  async function ending(stream: AsyncIterable<{ approval?: Approval }>, first: () => void): Promise<{ statuses: ApprovalStatus[]; end: string }> {
    const statuses: ApprovalStatus[] = [];
    try {
      for await (const m of stream) {
        statuses.push(m.approval!.status);
        if (statuses.length === 1) first();
      }
      return { statuses, end: "OK" };
    } catch (e) {
      const c = ConnectError.from(e);
      return { statuses, end: `${Code[c.code]}: ${c.rawMessage}` };
    }
  }

  test("a watch at the control plane and one through a sidecar end UNAVAILABLE (shutting down), not OK", async () => {
    const agentId = "agent-approvals-shutdown";
    const { cp, close, sessionId, approvalId } = await pendingApproval(agentId);
    const sc = await startSidecar({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      controlPlaneUrl: `http://127.0.0.1:${cp.grpcPort}`,
      agentId,
      stalenessBoundMs: 5_000,
      leaseTtlMs: 10_000,
      reportIntervalMs: 20,
      cacheMaxSessions: 100,
      cacheMaxBytes: 1 << 24,
      logger: createLogger("silent"),
      requireSessionTokens: false,
    });
    try {
      const direct = createClient(ApprovalService, createConnectTransport({ baseUrl: `http://127.0.0.1:${cp.httpPort}`, httpVersion: "1.1" }));
      const viaSidecar = createClient(ApprovalService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
      let opened = 0;
      let onBothOpen = () => {};
      const bothOpen = new Promise<void>((resolve) => (onBothOpen = resolve));
      const one = () => ++opened === 2 && onBothOpen();
      const watches = [
        ending(direct.watchApproval({ approvalId, sessionId }, { timeoutMs: 0 }), one),
        ending(viaSidecar.watchApproval({ approvalId, sessionId }, { timeoutMs: 0 }), one),
      ];
      // Shut down only once both are watching (or one already ended: the assertions say how).
      await Promise.race([bothOpen, Promise.all(watches)]);
      await close(5_000);
      const [atControlPlane, throughSidecar] = await Promise.all(watches);
      for (const w of [atControlPlane!, throughSidecar!]) {
        assert.deepEqual(w.statuses, [ApprovalStatus.PENDING]);
        assert.match(w.end, /^Unavailable: .*shutting down.*watch/, `the stream ended ${w.end} while the approval was still pending`);
      }
    } finally {
      await sc.close(200);
      await close(0);
    }
  });

  test("warden approvals watch exits 1 with one line, not 2 as if denied", async () => {
    const { cp, close, approvalId } = await pendingApproval("agent-approvals-shutdown-cli");
    try {
      const cli = startWardenCli(`http://127.0.0.1:${cp.httpPort}`, "approvals", "watch", approvalId);
      await cli.printed(/status\s+pending/);
      const [run] = await Promise.all([cli.done, close(5_000)]);
      assert.equal(run.code, 1, `exit ${run.code}; stderr: ${run.stderr}`);
      assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
      assert.match(run.stderr, /^warden: unavailable: .*shutting down/);
    } finally {
      await close(0);
    }
  });
});
