import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { ApiKeyRole, AuthService } from "../../src/gen/warden/v1/auth_service_pb.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { EventService } from "../../src/gen/warden/v1/event_service_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { bearer, startTestServer } from "../helpers/server-process.js";

describe("warden serve --require-auth: another agent's lease, a revoked key's open stream", () => {
  let server: RunningServer;
  let url: string;
  let adminKey: string;
  const clients = (key: string) => {
    const t = createConnectTransport({ baseUrl: url, httpVersion: "2", interceptors: [bearer(key)] });
    return {
      sessions: createClient(SessionService, t),
      policy: createClient(PolicyService, t),
      sync: createClient(SyncService, t),
      auth: createClient(AuthService, t),
      events: createClient(EventService, t),
    };
  };

  before(async () => {
    server = await startTestServer({ requireAuth: true });
    url = `http://127.0.0.1:${server.httpPort}`;
    adminKey = (await createApiKeys({ db: server.store.db }).create({ role: "admin" })).secret;
  });
  after(async () => {
    await server?.close(0);
  });

  test("an agent key cannot release another agent's budget lease through ReportLeases", async () => {
    const admin = clients(adminKey);
    const keyA = (await admin.auth.createApiKey({ role: ApiKeyRole.AGENT, agentId: "lease-a" })).secret;
    const keyB = (await admin.auth.createApiKey({ role: ApiKeyRole.AGENT, agentId: "lease-b" })).secret;
    const sa = (await admin.sessions.createSession(sessionRequest("lease-a", { lifetime: { maxValueMicros: USD(100) } }))).session!.sessionId;
    const sb = (await admin.sessions.createSession(sessionRequest("lease-b", { lifetime: { maxValueMicros: USD(100) } }))).session!.sessionId;

    // Agent A's sidecar leases part of A's budget, to spend it locally.
    const { lease } = await clients(keyA).sync.acquireLease({
      sessionId: sa,
      holder: "sidecar-a",
      desiredValueMicros: USD(100),
      desiredActions: 100n,
      minValueMicros: USD(1),
      ttl: durationFromMs(30_000),
    });
    assert.ok(lease !== undefined && (lease.valueMicros ?? 0n) > 0n, "A got a lease");
    const leased = lease.valueMicros!;

    // Agent B names its own session, but A's lease id, and asks for its release.
    let refused: Code | undefined;
    try {
      await clients(keyB).sync.reportLeases({ holder: "sidecar-b", reports: [{ sessionId: sb, leaseId: lease.leaseId, release: true }] });
    } catch (e) {
      refused = ConnectError.from(e).code;
    }

    const row = (
      await server.store.db.query<{ status: number; session_id: string }>("SELECT status, session_id FROM leases WHERE lease_id = $1", [lease.leaseId])
    ).rows[0]!;
    assert.equal(row.session_id, sa);
    // A still holds its lease and may spend all of it offline, so the
    // store must still count it: what is left for exact decisions is
    // 100 - leased.
    const over = await admin.policy.check({ sessionId: sa, action: payment(USD(100) - leased + 1n) });
    assert.equal(
      over.decision?.outcome,
      Outcome.DENY,
      `agent B's report (answered ${refused === undefined ? "OK" : Code[refused]}) released agent A's lease (status now ${row.status}): ` +
        `the store now allows ${USD(100) - leased + 1n} micros while A's sidecar still holds ${leased} micros of a 100 USD limit`,
    );
  });

  test("a revoked key's open WatchEvents stream ends at its next message", async () => {
    const admin = clients(adminKey);
    const created = await admin.auth.createApiKey({ role: ApiKeyRole.AUDITOR });
    const auditor = clients(created.secret);
    const ac = new AbortController();
    const seen: string[] = [];
    let streamError: Code | undefined;
    const reading = (async () => {
      try {
        for await (const r of auditor.events.watchEvents({ filter: { agentId: "" } }, { signal: ac.signal, timeoutMs: 0 })) {
          if (r.event !== undefined) seen.push(r.event.agentId);
        }
      } catch (e) {
        streamError = ConnectError.from(e).code;
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    await admin.sessions.createSession(sessionRequest("before-revoke", {}));
    const end = Date.now() + 5000;
    while (!seen.includes("before-revoke") && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.ok(seen.includes("before-revoke"), "the stream works while the key is valid");

    await admin.auth.revokeApiKey({ keyId: created.apiKey!.keyId });
    // The revoked key is refused on a new call at once...
    await assert.rejects(auditor.sessions.listSessions({}), (e: unknown) => ConnectError.from(e).code === Code.Unauthenticated);
    // ...but what about the stream it already has open?
    await admin.sessions.createSession(sessionRequest("after-revoke", {}));
    // The new session's event is the stream's next message: it ends there.
    const until = Date.now() + 5000;
    while (streamError === undefined && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    ac.abort();
    await reading;
    assert.ok(
      !seen.includes("after-revoke"),
      `a revoked key still received a new session's event on its open stream (stream ended with ${streamError === undefined ? "nothing" : Code[streamError]})`,
    );
    assert.equal(streamError === undefined ? undefined : Code[streamError], Code[Code.Unauthenticated], "the stream ended, saying why");
  });
});
