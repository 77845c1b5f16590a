import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { HealthCheckResponse_ServingStatus, Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { ActionStatus, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { createApiKeys } from "../../src/auth/api-keys.js";
import type { Database } from "../../src/store/database.js";
import { newId } from "../../src/store/ids.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createLogger } from "../../src/server/logger.js";
import { startSidecar as startSidecarInProcess } from "../../src/sidecar/start-sidecar.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { payment, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { parseSamples, valueOf } from "../observability/scrape.js";
import { bearer, type GrpcClient, freePort, grpcClient, type ServerProcess, startWardenProcess, storeArgs } from "../helpers/server-process.js";

const AGENT = "agent-sidecar-e2e";
const SIDECARS = 4;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("sidecars and a control plane on PostgreSQL, as separate processes", () => {
  let pgdb: { url: string; drop(): Promise<void> };
  let db: Database;
  let cpPort: number;
  let cp: ServerProcess;
  let sidecars: ServerProcess[] = [];
  let admin: GrpcClient;
  let adminSecret: string;
  let agentSecret: string;
  let tokenFile: string;

  const startSidecar = (...extra: string[]) =>
    startWardenProcess("sidecar", [
      "--control-plane",
      `http://127.0.0.1:${cpPort}`,
      "--agent-id",
      AGENT,
      "--control-plane-token-file",
      tokenFile,
      "--report-interval",
      "20",
      "--lease-ttl",
      "2000",
      "--staleness-bound",
      "2500",
      ...extra,
    ]);

  before(async () => {
    pgdb = await createPostgresDatabase();
    db = createPgDatabase({ connectionString: pgdb.url });
    cpPort = await freePort();
    cp = await startOnPort();
    // The control plane always wants credentials: an admin key for the
    // test, an agent key (in a file) for the sidecars, made as
    // `warden keys bootstrap` makes them.
    const keys = createApiKeys({ db });
    const adminKey = await keys.create({ role: "admin" });
    const agentKey = await keys.create({ role: "agent", agentId: AGENT });
    tokenFile = join(mkdtempSync(join(tmpdir(), "warden-sidecar-")), "token");
    writeFileSync(tokenFile, agentKey.secret);
    agentSecret = agentKey.secret;
    adminSecret = adminKey.secret;
    admin = grpcClient(SessionService, `127.0.0.1:${cpPort}`, 0, { authorization: `Bearer ${adminKey.secret}` });
    sidecars = await Promise.all(Array.from({ length: SIDECARS }, () => startSidecar()));
  });
  after(async () => {
    admin?.close();
    await Promise.all(sidecars.map((s) => s.stop()));
    await cp?.stop();
    await assertLedgerConsistent(db);
    await db.close();
    await pgdb.drop();
  });

  async function startOnPort(): Promise<ServerProcess> {
    return startWardenProcess("control-plane", [
      ...storeArgs({ databaseUrl: pgdb.url }),
      "--lease-reconcile-grace",
      "500",
      "--grpc-listen",
      `127.0.0.1:${cpPort}`,
    ]);
  }

  /** A session and the headers its agent sends: its session token. */
  async function createSession(policy: Record<string, unknown>): Promise<{ sessionId: string; auth: Record<string, string> }> {
    const res = await admin.createSession(
      create(CreateSessionRequestSchema, { agentId: AGENT, policy: { currencyCode: "USD", ...policy }, expiration: { case: "ttl", value: durationFromMs(3_600_000) } }),
    );
    return { sessionId: res.session.sessionId as string, auth: { authorization: `Bearer ${res.sessionToken as string}` } };
  }

  /** `n` Checks of `amount` through one sidecar, `concurrency` at a time; returns the allowed count. */
  async function spend(
    client: GrpcClient,
    { sessionId, auth }: { sessionId: string; auth: Record<string, string> },
    n: number,
    amount: bigint,
    concurrency = 8,
  ): Promise<{ allowed: number; errors: number; why: string }> {
    let next = 0;
    let allowed = 0;
    let errors = 0;
    /** Why calls were not allowed (denial messages, errors), for assertion messages. */
    const why = new Set<string>();
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < n) {
          next++;
          try {
            const res = await client.check({ sessionId, action: payment(amount) }, {}, auth);
            if (res.decision.outcome === Outcome.ALLOW) allowed++;
            else why.add(res.decision.message);
          } catch (e) {
            errors++;
            why.add((e as Error).message.slice(0, 120));
          }
        }
      }),
    );
    return { allowed, errors, why: [...why].join("; ") };
  }

  async function committed(sessionId: string): Promise<{ value: bigint; ledger: bigint; writtenOff: bigint }> {
    const u = await db.query<{ v: string }>("SELECT lifetime_committed_value AS v FROM scope_usage WHERE scope_key = $1", [`s:${sessionId}`]);
    const l = await db.query<{ v: string | null }>("SELECT sum(captured_value) AS v FROM actions WHERE session_id = $1 AND status = 2", [sessionId]);
    const w = await db.query<{ v: string | null }>("SELECT sum(written_off_value) AS v FROM leases WHERE session_id = $1", [sessionId]);
    return { value: BigInt(u.rows[0]?.v ?? "0"), ledger: BigInt(l.rows[0]!.v ?? "0"), writtenOff: BigInt(w.rows[0]!.v ?? "0") };
  }

  /** Every sidecar ready (watch in step, control plane fresh): after an outage they fail closed until then. */
  async function allReady(): Promise<void> {
    for (const s of sidecars) {
      const h = grpcClient(Health, s.grpcAddress);
      try {
        await until("sidecars to be ready", async () => (await h.check({ service: "" })).status === HealthCheckResponse_ServingStatus.SERVING);
      } finally {
        h.close();
      }
    }
  }

  async function settled(sessionId: string): Promise<void> {
    await until("every lease to be settled", async () => {
      const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM leases WHERE session_id = $1 AND status = 1", [sessionId]);
      return rows[0]!.n === "0";
    });
  }

  test("concurrent clients on 4 sidecars never spend past the limit, and every allowed amount is in the ledger", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(300) } });
    const clients = sidecars.map((s) => grpcClient(PolicyService, s.grpcAddress));
    try {
      const results = await Promise.all(clients.map((c) => spend(c, session, 120, USD(1))));
      const allowed = results.reduce((n, r) => n + r.allowed, 0);
      assert.equal(results.reduce((n, r) => n + r.errors, 0), 0);
      assert.ok(allowed <= 300, `allowed ${allowed}`);
      assert.ok(allowed >= 150, `leases should let most of the budget be spent, allowed ${allowed}`);
      await until("records to reach the store", async () => (await committed(session.sessionId)).ledger === USD(allowed));
      // Idle leases go back within seconds: nothing stays reserved.
      await settled(session.sessionId);
      const c = await committed(session.sessionId);
      assert.equal(c.value, USD(allowed));
      assert.equal(c.writtenOff, 0n);
      await assertLedgerConsistent(db);
    } finally {
      for (const c of clients) c.close();
    }
  });

  test("one sidecar SIGKILLed mid-run: its unreported rest is written off, nothing is overspent", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(400) } });
    const clients = sidecars.map((s) => grpcClient(PolicyService, s.grpcAddress));
    try {
      const running = clients.map((c) => spend(c, session, 120, USD(1), 4));
      await sleep(150);
      await sidecars[0]!.kill();
      const results = await Promise.all(running);
      const allowed = results.reduce((n, r) => n + r.allowed, 0);
      assert.ok(results[0]!.errors > 0 || results[0]!.allowed < 120, "the killed sidecar stopped answering");
      // Its lease expires (2 s) and is reconciled after the grace (0.5 s).
      await settled(session.sessionId);
      const c = await committed(session.sessionId);
      assert.ok(c.value <= USD(400), `committed ${c.value}`);
      // What any sidecar allowed is either recorded or written off.
      assert.ok(c.ledger + c.writtenOff >= USD(allowed), `allowed ${allowed}, ledger ${c.ledger}, written off ${c.writtenOff}`);
      assert.equal(c.value, c.ledger + c.writtenOff);
      await assertLedgerConsistent(db);
    } finally {
      for (const c of clients) c.close();
      sidecars[0] = await startSidecar();
    }
  });

  test("a sidecar SIGKILLed right after answering a capture: the store writes the hold off when its session ends, so that money is not spent again", async () => {
    await allReady();
    // Reports every 1.5 s: the capture is answered, then lost with the process.
    const placing = await startSidecar("--report-interval", "1500");
    const parent = await createSession({ lifetime: { maxValueMicros: USD(100) } });
    const forked = await admin.forkSession({ parentSessionId: parent.sessionId, policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(100) } } });
    const fork = { sessionId: forked.session.sessionId as string, auth: { authorization: `Bearer ${forked.sessionToken as string}` } };
    const onPlacing = grpcClient(PolicyService, placing.grpcAddress);
    const elsewhere = grpcClient(PolicyService, sidecars[1]!.grpcAddress);
    try {
      // From a lease (the store grants at most half of what is left: 50).
      const held = await onPlacing.authorize({ sessionId: fork.sessionId, action: payment(USD(30)) }, {}, fork.auth);
      assert.equal(held.decision.outcome, Outcome.ALLOW);
      const row = async () => (await db.query<{ status: number; written_off_value: string | null }>("SELECT status, written_off_value FROM actions WHERE action_id = $1", [held.authorizationId])).rows[0];
      await until("the hold to reach the store", async () => (await row()) !== undefined);
      const captured = await onPlacing.capture({ sessionId: fork.sessionId, authorizationId: held.authorizationId }, {}, fork.auth);
      assert.equal(captured.authorization.status, ActionStatus.CAPTURED, "the agent was told its 30 USD were captured");
      await placing.kill();
      assert.equal((await row())!.status, ActionStatus.HELD, "the capture died with the sidecar, unreported");
      // The fork ends; its hold must not go back to the parent.
      await admin.endSession({ sessionId: fork.sessionId, reason: "done" });
      assert.equal((await row())!.written_off_value, String(USD(30)));
      // The parent then spends what it has left, through another sidecar.
      // The dead sidecar's lease keeps its unspent 20 until it is
      // reconciled, and then writes it off: the parent has 50 left.
      const rest = await spend(elsewhere, parent, 12, USD(10), 1);
      assert.ok(rest.allowed * 10 + 30 <= 100, `the parent's lifetime is 100 USD: 30 captured on the killed sidecar, then ${rest.allowed * 10} more allowed`);
      assert.equal(rest.allowed, 5, rest.why);
      await settled(parent.sessionId);
      await assertLedgerConsistent(db);
    } finally {
      onPlacing.close();
      elsewhere.close();
    }
  });

  test("control plane restarted mid-run: sidecars reconnect and catch up, nothing lost or overspent", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(300) } });
    const clients = sidecars.map((s) => grpcClient(PolicyService, s.grpcAddress));
    try {
      const running = clients.map((c) => spend(c, session, 100, USD(1), 4));
      await sleep(100);
      await cp.stop();
      cp = await startOnPort();
      const results = await Promise.all(running);
      const allowed = results.reduce((n, r) => n + r.allowed, 0);
      assert.ok(allowed <= 300);
      await until("records to reach the store", async () => (await committed(session.sessionId)).ledger >= USD(allowed));
      await settled(session.sessionId);
      const c = await committed(session.sessionId);
      assert.equal(c.value, c.ledger + c.writtenOff);
      assert.ok(c.value <= USD(300));
      assert.equal(c.ledger, USD(allowed), "every allowed amount reached the ledger");
      await assertLedgerConsistent(db);
    } finally {
      for (const c of clients) c.close();
    }
  });

  test("offline: sidecars allow within their leases, deny past the staleness bound, recover when it returns", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(100_000) } });
    const client = grpcClient(PolicyService, sidecars[1]!.grpcAddress);
    const health = grpcClient(Health, sidecars[1]!.grpcAddress);
    try {
      // Warm: a lease in hand. The test before restarted the control plane:
      // wait for a first ALLOW, so the sidecar's calls to it are back too.
      await until("the sidecar to allow", async () => (await client.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth).catch(() => undefined))?.decision.outcome === Outcome.ALLOW);
      const warm = await spend(client, session, 20, USD(1), 1);
      assert.equal(warm.allowed, 20, warm.why);
      // Another agent's session, with its valid token: this sidecar does
      // not serve it, offline either, so it never queues a record the store
      // would refuse (with every record sent alongside).
      const other = await admin.createSession(
        create(CreateSessionRequestSchema, { agentId: "another-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: durationFromMs(3_600_000) } }),
      );
      const otherAuth = { authorization: `Bearer ${other.sessionToken as string}` };
      await cp.stop();
      const offline = await client.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth);
      assert.equal(offline.decision.outcome, Outcome.ALLOW, "still within the lease and the staleness bound");
      // Its record waits in the sidecar, and the metrics say so: what a
      // crash now would lose, and for how long it has waited.
      const scrape = async () => parseSamples(await (await fetch(`${sidecars[1]!.httpUrl}/metrics`)).text());
      await until("the report to fail and stay queued", async () => (valueOf(await scrape(), "warden_reports_total", { result: "failed" }) ?? 0) >= 1);
      const waiting = await scrape();
      assert.ok((valueOf(waiting, "warden_report_backlog") ?? 0) >= 1, "the offline record is in the backlog");
      assert.ok((valueOf(waiting, "warden_report_backlog_age_seconds") ?? 0) > 0);
      assert.equal(valueOf(waiting, "warden_control_plane_connected"), 0);
      // Past the staleness bound readiness drops, and spending is denied.
      await until("the staleness bound to pass", async () => (await health.check({ service: "" })).status === HealthCheckResponse_ServingStatus.NOT_SERVING);
      const denied = await client.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth);
      assert.equal(denied.decision.outcome, Outcome.DENY);
      assert.deepEqual(denied.decision.reasons, [Reason.CONTROL_PLANE_UNAVAILABLE]);
      const foreign = await client.check({ sessionId: other.session.sessionId, action: payment(USD(1)) }, {}, otherAuth).catch((e: { code: number; details: string }) => e);
      assert.ok(!("decision" in foreign), "refused, not decided");
      assert.equal(foreign.code, 7, foreign.details);
      cp = await startOnPort();
      await until("the sidecar to recover", async () => (await client.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth)).decision.outcome === Outcome.ALLOW);
      await until("readiness", async () => (await health.check({ service: "" })).status === HealthCheckResponse_ServingStatus.SERVING);
      await until("the backlog to reach the store", async () => valueOf(await scrape(), "warden_report_backlog") === 0);
      // What was decided offline reaches the store (the denial above, and
      // any while it recovered).
      await until("the offline denials to reach the store", async () => {
        const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM actions WHERE session_id = $1 AND outcome = $2", [session.sessionId, Outcome.DENY]);
        return Number(rows[0]!.n) >= 1;
      });
    } finally {
      client.close();
      health.close();
    }
  });

  test("a sidecar wants the session's own token: none, another session's, or a forged one is UNAUTHENTICATED", async () => {
    await allReady();
    const a = await createSession({ daily: { maxValueMicros: USD(10) } });
    const b = await createSession({ daily: { maxValueMicros: USD(10) } });
    const client = grpcClient(PolicyService, sidecars[2]!.grpcAddress);
    try {
      const call = (headers: Record<string, string>) =>
        client.check({ sessionId: a.sessionId, action: payment(USD(1)) }, {}, headers).catch((e: { code: number; details: string }) => e);
      const token = a.auth.authorization!;
      const forged = token.slice(0, -4) + (token.endsWith("AAAA") ? "BBBB" : "AAAA");
      for (const [headers, why] of [
        [{}, /missing|session token/],
        [b.auth, /another session/],
        [{ authorization: forged }, /invalid token/],
      ] as const) {
        const r = await call(headers);
        assert.ok(!("decision" in r), "refused");
        assert.equal(r.code, 16, r.details);
        assert.match(r.details, why);
      }
      assert.equal((await call(a.auth)).decision.outcome, Outcome.ALLOW);
    } finally {
      client.close();
    }
  });

  test("a sidecar serves only its own agent: another agent's session token is PERMISSION_DENIED, even when its credential (an admin key) could read that session", async () => {
    // Its watch covers only its agent: a session of another agent served
    // here would never hear of its revocation, and its lease would keep
    // spending after it.
    const adminFile = join(mkdtempSync(join(tmpdir(), "warden-sidecar-admin-")), "token");
    writeFileSync(adminFile, adminSecret);
    const own = await createSession({ daily: { maxValueMicros: USD(10) } });
    const res = await admin.createSession(
      create(CreateSessionRequestSchema, { agentId: "another-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: durationFromMs(3_600_000) } }),
    );
    const foreign = res.session.sessionId as string;
    const sidecar = await startSidecar("--control-plane-token-file", adminFile);
    const client = grpcClient(PolicyService, sidecar.grpcAddress);
    const health = grpcClient(Health, sidecar.grpcAddress);
    try {
      await until("the sidecar to be ready", async () => (await health.check({ service: "" })).status === HealthCheckResponse_ServingStatus.SERVING);
      for (const call of [
        () => client.check({ sessionId: foreign, action: payment(USD(1)) }, {}, { authorization: `Bearer ${res.sessionToken as string}` }),
        () => client.authorize({ sessionId: foreign, action: payment(USD(1)), idempotencyKey: "k-foreign-agent" }, {}, { authorization: `Bearer ${res.sessionToken as string}` }),
      ]) {
        const r = await call().catch((e: { code: number; details: string }) => e);
        assert.ok(!("decision" in r), "refused");
        assert.equal(r.code, 7, r.details);
        assert.equal(r.details, `session_id: session "${foreign}" belongs to agent "another-agent"; this sidecar serves agent "${AGENT}"`);
      }
      const leases = await db.query<{ n: string }>("SELECT count(*) AS n FROM leases WHERE session_id = $1", [foreign]);
      assert.equal(leases.rows[0]!.n, "0", "no lease taken on another agent's budget");
      assert.equal((await client.check({ sessionId: own.sessionId, action: payment(USD(1)) }, {}, own.auth)).decision.outcome, Outcome.ALLOW);
    } finally {
      client.close();
      health.close();
      await sidecar.stop();
    }
  });

  test("holds placed from a lease: captured and voided through the sidecar, settled in the store", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(1000) } });
    const client = grpcClient(PolicyService, sidecars[3]!.grpcAddress, 0, session.auth);
    try {
      const holds: string[] = [];
      for (let i = 0; i < 6; i++) {
        const r = await client.authorize({ sessionId: session.sessionId, action: payment(USD(10)) });
        assert.equal(r.decision.outcome, Outcome.ALLOW);
        holds.push(r.authorizationId as string);
      }
      for (const id of holds.slice(0, 3)) {
        const r = await client.capture({ sessionId: session.sessionId, authorizationId: id, amount: { currencyCode: "USD", amountMicros: USD(7) } });
        assert.equal(r.authorization.capturedAmount.amountMicros, USD(7));
      }
      for (const id of holds.slice(3)) await client.void({ sessionId: session.sessionId, authorizationId: id });
      // A second capture of a settled hold fails, as in the store, and is
      // never passed on to a control plane that may not have heard yet.
      const again = await client.capture({ sessionId: session.sessionId, authorizationId: holds[0] }).catch((e: { code: number; details: string }) => e);
      assert.equal((again as { code: number }).code, 9);
      assert.match((again as { details: string }).details, /already captured/);
      // Captures and voids are reported within the report interval, not
      // necessarily in the same batch: wait for both.
      const statuses = async () => {
        const { rows } = await db.query<{ status: number; n: string }>(
          "SELECT status, count(*) AS n FROM actions WHERE session_id = $1 GROUP BY status ORDER BY status",
          [session.sessionId],
        );
        return rows.map((r) => [Number(r.status), Number(r.n)]);
      };
      await until("captures and voids to reach the store", async () => JSON.stringify(await statuses()) === JSON.stringify([[2, 3], [3, 3]]));
      assert.deepEqual(await statuses(), [[2, 3], [3, 3]], "3 captured, 3 voided");
      assert.equal((await committed(session.sessionId)).ledger, USD(21));
      await settled(session.sessionId);
      await assertLedgerConsistent(db);
    } finally {
      client.close();
    }
  });

  test("a hold placed on one sidecar is captured through another before the first has reported it, and the first then refuses to settle it again", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(1000) } });
    // Reports 700 ms after a decision: the capture elsewhere comes first.
    const placing = await startSidecar("--report-interval", "700");
    const here = grpcClient(PolicyService, placing.grpcAddress, 0, session.auth);
    const elsewhere = grpcClient(PolicyService, sidecars[1]!.grpcAddress, 0, session.auth);
    try {
      const held = await here.authorize({ sessionId: session.sessionId, action: payment(USD(10)) });
      assert.equal(held.decision.outcome, Outcome.ALLOW);
      const unreported = await db.query("SELECT 1 FROM actions WHERE action_id = $1", [held.authorizationId]);
      assert.equal(unreported.rows.length, 0, "not in the store yet");
      const captured = await elsewhere.capture({
        sessionId: session.sessionId,
        authorizationId: held.authorizationId,
        amount: { currencyCode: "USD", amountMicros: USD(4) },
      });
      assert.equal(captured.authorization.capturedAmount.amountMicros, USD(4));
      const { rows } = await db.query<{ status: number; captured_value: string }>("SELECT status, captured_value FROM actions WHERE action_id = $1", [
        held.authorizationId,
      ]);
      assert.deepEqual(rows.map((r) => [Number(r.status), BigInt(r.captured_value)]), [[2, USD(4)]]);
      // The placing sidecar is told by its watch stream (within the bound
      // revocations have): a second capture there is refused, not answered
      // as if it were the first, and so is a void.
      await sleep(1000);
      const twice = await here.capture({ sessionId: session.sessionId, authorizationId: held.authorizationId }).catch((e: { code: number; details: string }) => e);
      assert.equal((twice as { code: number }).code, 9, "FAILED_PRECONDITION");
      assert.match((twice as { details: string }).details, /was already captured/);
      const voided = await here.void({ sessionId: session.sessionId, authorizationId: held.authorizationId }).catch((e: { code: number }) => e);
      assert.equal((voided as { code: number }).code, 9);
      // An authorization nobody placed is still NOT_FOUND: at once when its
      // id is old, after the wait for a report when it looks new.
      const old = await elsewhere.capture({ sessionId: session.sessionId, authorizationId: "act_00000000000000000000000000" }).catch((e: { code: number }) => e);
      assert.equal((old as { code: number }).code, 5);
      const t0 = Date.now();
      const young = await elsewhere.capture({ sessionId: session.sessionId, authorizationId: newId("act", Date.now()) }).catch((e: { code: number; details: string }) => e);
      assert.equal((young as { code: number }).code, 5);
      assert.match((young as { details: string }).details, /^authorization_id: /);
      assert.ok(Date.now() - t0 >= 1000, "waited for a report that never came");
      here.close();
      await placing.stop();
      await settled(session.sessionId);
      assert.equal((await committed(session.sessionId)).ledger, USD(4));
      await assertLedgerConsistent(db);
    } finally {
      here.close();
      elsewhere.close();
      await placing.stop();
    }
  });

  test("a retry with an idempotency key gets the first answer on any sidecar, restarted or not, and is charged once", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(1000) } });
    const clients = sidecars.map((s) => grpcClient(PolicyService, s.grpcAddress, 0, session.auth));
    try {
      const check = { sessionId: session.sessionId, action: payment(USD(5)), idempotencyKey: "order-1" };
      const first = await clients[0]!.check(check);
      assert.equal(first.decision.outcome, Outcome.ALLOW);
      // Calls with one key at once on one sidecar: one decision, one answer.
      const burst = await Promise.all(Array.from({ length: 20 }, () => clients[2]!.check({ ...check, idempotencyKey: "burst-1" })));
      assert.equal(new Set(burst.map((r) => r.actionId as string)).size, 1);
      // Once the first sidecar's record is in the store (the report
      // interval), every other sidecar answers a retry with its answer.
      await until("the records to reach the store", async () => (await committed(session.sessionId)).ledger === USD(10));
      for (const c of clients.slice(1)) {
        const again = await c.check(check);
        assert.equal(again.actionId, first.actionId, "the first answer, not a second decision");
      }
      const auth = { sessionId: session.sessionId, action: payment(USD(20)), idempotencyKey: "hold-1" };
      const hold = await clients[1]!.authorize(auth);
      assert.equal(hold.decision.outcome, Outcome.ALLOW);
      // A sidecar that restarts loses what it remembered; the store has it.
      const restarted = await startSidecar();
      const old = sidecars[1]!;
      sidecars[1] = restarted;
      await old.stop();
      await allReady();
      const fresh = grpcClient(PolicyService, restarted.grpcAddress, 0, session.auth);
      try {
        const again = await fresh.authorize(auth);
        assert.equal(again.authorizationId, hold.authorizationId);
        const captured = await fresh.capture({ sessionId: session.sessionId, authorizationId: hold.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(20) } });
        assert.equal(captured.authorization.capturedAmount.amountMicros, USD(20));
        // The same key for another request is refused, as in the store.
        const reused = await fresh.check({ ...check, action: payment(USD(6)) }).catch((e: { code: number; details: string }) => e);
        assert.equal((reused as { code: number }).code, 3);
        assert.match((reused as { details: string }).details, /idempotency_key: "order-1" was already used for a different request/);
      } finally {
        fresh.close();
      }
      await until("the capture to reach the store", async () => (await committed(session.sessionId)).ledger === USD(30));
      const { rows } = await db.query<{ n: string }>("SELECT count(*) AS n FROM actions WHERE session_id = $1", [session.sessionId]);
      assert.equal(rows[0]!.n, "3", "one action per key");
      await settled(session.sessionId);
      assert.equal((await committed(session.sessionId)).value, USD(30), "charged once each");
    } finally {
      for (const c of clients) c.close();
    }
  });

  test("a retry that reaches another sidecar before the first answer is stored is told it is in progress, never decided twice", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(1000) } });
    // A sidecar that reports only when it stops: its answer stays unstored
    // for as long as the test wants.
    const slow = await startSidecar("--report-interval", "600000");
    const first = grpcClient(PolicyService, slow.grpcAddress, 0, session.auth);
    const other = grpcClient(PolicyService, sidecars[0]!.grpcAddress, 0, session.auth);
    try {
      const check = { sessionId: session.sessionId, action: payment(USD(7)), idempotencyKey: "order-slow" };
      const answer = await first.check(check);
      assert.equal(answer.decision.outcome, Outcome.ALLOW);
      const during = await other.check(check).catch((e: { code: number; details: string }) => e);
      assert.equal((during as { code: number }).code, 10, "ABORTED: retry later");
      assert.match((during as { details: string }).details, /idempotency_key: a call with "order-slow" is still being decided; retry it/);
      const scrape = async () => parseSamples(await (await fetch(`${sidecars[0]!.httpUrl}/metrics`)).text());
      assert.ok((valueOf(await scrape(), "warden_idempotency_claims_total", { result: "in_progress" }) ?? 0) >= 1, "counted");
      // Another request under the key is refused as such even now.
      const reused = await other.check({ ...check, action: payment(USD(8)) }).catch((e: { code: number; details: string }) => e);
      assert.equal((reused as { code: number }).code, 3);
      // The first sidecar stops (its records go to the store): the retry
      // gets the first answer.
      first.close();
      await slow.stop();
      const after = await other.check(check);
      assert.equal(after.actionId, answer.actionId, "the first answer, not a second decision");
      await settled(session.sessionId);
      assert.equal((await committed(session.sessionId)).value, USD(7), "charged once");

      // A keyed call no lease can cover (the store leases at most half of
      // what is left) goes through the control plane: the sidecar gives its
      // claim back first, or the store would answer "in progress" to it.
      const tight = await createSession({ lifetime: { maxValueMicros: USD(10) } });
      const near = grpcClient(PolicyService, sidecars[1]!.grpcAddress, 0, tight.auth);
      const elsewhere = grpcClient(PolicyService, sidecars[2]!.grpcAddress, 0, tight.auth);
      try {
        const big = { sessionId: tight.sessionId, action: payment(USD(6)), idempotencyKey: "order-big" };
        const exact = await near.check(big);
        assert.equal(exact.decision.outcome, Outcome.ALLOW);
        assert.equal((await elsewhere.check(big)).actionId, exact.actionId, "stored with the decision: replayed at once");
        assert.equal((await near.check({ ...big, idempotencyKey: "order-big-2" })).decision.outcome, Outcome.DENY);
        assert.equal((await committed(tight.sessionId)).value, USD(6));
      } finally {
        near.close();
        elsewhere.close();
      }
    } finally {
      first.close();
      other.close();
    }
  });

  test("a keyed call the control plane refuses (another agent's session) fails alone, not the calls claimed with it", async () => {
    // A sidecar that checks session tokens refuses another agent's session
    // itself, before any claim. One that does not (in process, tokens off)
    // claims the key first, and the control plane refuses that claim for
    // the sidecar's agent key: the case of a claim refused in a batch.
    const own = await createSession({ daily: { maxValueMicros: USD(1000) } });
    const res = await admin.createSession(
      create(CreateSessionRequestSchema, { agentId: "another-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: durationFromMs(3_600_000) } }),
    );
    const foreign = res.session.sessionId as string;
    const sidecar = await startSidecarInProcess({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      controlPlaneUrl: `http://127.0.0.1:${cpPort}`,
      agentId: AGENT,
      stalenessBoundMs: 2500,
      leaseTtlMs: 2000,
      reportIntervalMs: 20,
      cacheMaxSessions: 1000,
      cacheMaxBytes: 1 << 24,
      logger: createLogger("silent"),
      requireSessionTokens: false,
      controlPlaneTransport: { interceptors: [bearer(agentSecret)] },
    });
    const client = grpcClient(PolicyService, `127.0.0.1:${sidecar.grpcPort}`);
    try {
      await until("the sidecar to sync", async () => sidecar.sync.synced && sidecar.sync.fresh());
      // Fired together, so their key claims go to the control plane in
      // the same batches.
      const calls = Array.from({ length: 21 }, (_, i) =>
        i === 10
          ? client.check({ sessionId: foreign, action: payment(USD(1)), idempotencyKey: "k-foreign" }).then(
              () => "allowed",
              (e: { code: number; details: string }) => `${e.code} ${e.details}`,
            )
          : client.check({ sessionId: own.sessionId, action: payment(USD(1)), idempotencyKey: `k-${i}` }).then(
              (r: { decision: { outcome: number } }) => r.decision.outcome,
              (e: { code: number; details: string }) => e.details,
            ),
      );
      const results = await Promise.all(calls);
      // PERMISSION_DENIED from the control plane (the claim went there), not the sidecar's own refusal.
      assert.equal(results[10], `7 session "${foreign}" belongs to another agent`);
      assert.deepEqual(
        results.filter((_, i) => i !== 10),
        Array.from({ length: 20 }, () => Outcome.ALLOW),
      );
    } finally {
      client.close();
      await sidecar.close(2000);
    }
  });

  test("a burst on a cold session is decided from leases, not call by call through the control plane", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(100_000) } });
    const sidecar = sidecars[2]!;
    const exactSoFar = async () =>
      valueOf(parseSamples(await (await fetch(`${sidecar.httpUrl}/metrics`)).text()), "warden_decision_duration_seconds_count", { path: "exact" }) ?? 0;
    const before = await exactSoFar();
    const client = grpcClient(PolicyService, sidecar.grpcAddress, 0, session.auth);
    try {
      // More calls at once than a first lease covers (it is sized before
      // any rate is known): those it leaves out wait for the next grant.
      const r = await spend(client, session, 200, USD(1), 200);
      assert.equal(r.allowed, 200, r.why);
      assert.equal((await exactSoFar()) - before, 0, "no call went through the control plane");
    } finally {
      client.close();
    }
    await until("the burst to reach the store", async () => (await committed(session.sessionId)).ledger === USD(200));
  });

  test("the circuit breaker pauses a session over denials a sidecar made itself, and every sidecar then refuses it", async () => {
    await allReady();
    const session = await createSession({ maxPerTransactionMicros: USD(10), circuitBreaker: { pauseAfterDenialsInARow: 3 } });
    const [one, two] = [grpcClient(PolicyService, sidecars[0]!.grpcAddress, 0, session.auth), grpcClient(PolicyService, sidecars[1]!.grpcAddress, 0, session.auth)];
    try {
      // Over the per-transaction limit: denied in the sidecar, no store call.
      for (let i = 0; i < 3; i++) {
        const d = (await one.check({ sessionId: session.sessionId, action: payment(USD(20)) })).decision;
        assert.deepEqual(d.reasons, [Reason.LIMIT_PER_TRANSACTION]);
      }
      // Reported, counted, paused; the change reaches the other sidecar.
      await until("the other sidecar to see the pause", async () =>
        (await two.check({ sessionId: session.sessionId, action: payment(USD(20)) })).decision.reasons.includes(Reason.SESSION_PAUSED),
      );
      const s = (await admin.getSession({ sessionId: session.sessionId })).session;
      assert.equal(s.status, SessionStatus.PAUSED);
      assert.equal(s.statusReason, "circuit breaker: 3 denials in a row");
    } finally {
      one.close();
      two.close();
    }
  });

  test("revocation through another control-plane replica reaches every sidecar within a second", async () => {
    await allReady();
    const session = await createSession({ daily: { maxValueMicros: USD(100_000) } });
    const clients = sidecars.map((s) => grpcClient(PolicyService, s.grpcAddress));
    try {
      for (const c of clients) assert.equal((await c.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth)).decision.outcome, Outcome.ALLOW);
      // A second replica on the same PostgreSQL: its change reaches the
      // sidecars, which watch the first, through LISTEN/NOTIFY.
      const replica = await startWardenProcess("control-plane", storeArgs({ databaseUrl: pgdb.url }));
      const other = grpcClient(SessionService, replica.grpcAddress, 0, { authorization: `Bearer ${adminSecret}` });
      const t0 = Date.now();
      await other.revokeSession({ sessionId: session.sessionId, reason: "stop" });
      const seen = await Promise.all(
        clients.map(async (c) => {
          // As with `warden serve`, a call on an ended session fails
          // FAILED_PRECONDITION ("has ended (REVOKED)"): it is no decision.
          for (;;) {
            const r = await c.check({ sessionId: session.sessionId, action: payment(USD(1)) }, {}, session.auth).catch((e: { code: number; details: string }) => e);
            if (!("decision" in r)) {
              assert.equal(r.code, 9, r.details);
              assert.match(r.details, /has ended \(REVOKED\)/);
              return Date.now() - t0;
            }
            assert.equal(r.decision.outcome, Outcome.ALLOW);
            await sleep(5);
          }
        }),
      );
      other.close();
      await replica.stop();
      assert.ok(Math.max(...seen) < 1000, `revocation took ${Math.max(...seen)} ms`);
    } finally {
      for (const c of clients) c.close();
    }
  });

  test("a sidecar whose port is taken exits 1 with the reason, though its watch stream and health listener had already started", async () => {
    // The watch starts before the listeners bind (it overlaps the bind),
    // and the health listener binds before the gRPC one. A bind that fails
    // must stop both, or either would keep the process running with
    // nothing served.
    const taken = sidecars[0]!.grpcAddress;
    const proc = spawn(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "sidecar", "--control-plane", `http://127.0.0.1:${cpPort}`, "--agent-id", AGENT,
        "--control-plane-token-file", tokenFile, "--health-listen", "127.0.0.1:0", "--grpc-listen", taken, "--http-listen", "127.0.0.1:0"],
      { cwd: join(import.meta.dirname, "../.."), stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    let stdout = "";
    proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    proc.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
    const [code, signal] = (await once(proc, "exit")) as [number | null, string | null];
    clearTimeout(timer);
    assert.equal(signal, null, `the sidecar did not exit on its own; stderr: ${stderr}`);
    assert.equal(code, 1, stderr);
    // One line: grpc-js's own report of the failed bind goes to the JSON log on stdout.
    assert.match(stderr, /^warden: .*EADDRINUSE[^\n]*\n?$/, stderr);
    assert.match(stdout, /"component":"grpc-js"/, stdout);
  });
});
