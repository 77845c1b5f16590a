import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { WebhookEndpointStatus, WebhookService } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { startServer, type RunningServer } from "../../src/server/start-server.js";
import { verifyWebhookSignature } from "../../src/webhooks/verify-webhook-signature.js";
import { DRIVERS } from "../helpers/databases.js";
import { createStoreLocation, grpcClient, type GrpcClient } from "../helpers/server-process.js";

/** One request as the receiver saw it. */
interface Received {
  readonly eventId: string;
  readonly type: string;
  readonly verified: boolean;
  readonly answered: number;
}

/**
 * A real HTTP receiver: verifies every signature with the shipped function
 * and answers with `answer(eventId, attempt)`.
 */
async function startReceiver(secret: () => string, answer: (eventId: string, attempt: number) => number) {
  const received: Received[] = [];
  const attempts = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      let verified = false;
      try {
        verified = verifyWebhookSignature({ header: req.headers["warden-signature"] as string | undefined, body, secret: secret() });
      } catch {
        verified = false;
      }
      const event = JSON.parse(body.toString("utf8")) as { id: string; type: string };
      assert.equal(req.headers["warden-event-id"], event.id);
      assert.equal(req.headers["content-type"], "application/json");
      const attempt = (attempts.get(event.id) ?? 0) + 1;
      attempts.set(event.id, attempt);
      const status = verified ? answer(event.id, attempt) : 401;
      received.push({ eventId: event.id, type: event.type, verified, answered: status });
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/hooks`,
    received,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Waits (polling, no timing asserted) until `done()` holds; fails after a generous bound. */
async function until(done: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 1500; i++) {
    if (await done()) return;
    await sleep(20);
  }
  assert.fail(`gave up waiting: ${what}`);
}

for (const driver of DRIVERS) {
  describe(`webhook delivery end to end on ${driver}`, () => {
    let server: RunningServer;
    let drop: () => Promise<void>;
    let hooks: GrpcClient;
    let sessions: GrpcClient;
    before(async () => {
      const loc = await createStoreLocation(driver);
      drop = loc.drop;
      const location = loc.location;
      server = await startServer({
        grpcAddress: "127.0.0.1:0",
        httpAddress: "127.0.0.1:0",
        ..."dataDir" in location ? { dataDir: location.dataDir } : { dataDir: "", databaseUrl: location.databaseUrl },
        sweepIntervalMs: 60_000,
        logger: createLogger("silent"),
        // Fast ticks and a small backoff base, so retries happen within the test.
        webhooks: { intervalMs: 20, backoffBaseMs: 20, maxBackoffMs: 200, maxConsecutiveFailures: 3 },
      });
      hooks = grpcClient(WebhookService, `127.0.0.1:${server.grpcPort}`);
      sessions = grpcClient(SessionService, `127.0.0.1:${server.grpcPort}`);
    });
    after(async () => {
      hooks.close();
      sessions.close();
      await server.close(0);
      await drop();
    });

    test("every lifecycle event arrives signed, retried after failures, exactly once after dedupe", async () => {
      let secret = "";
      // Every other event's first attempt fails, so retries are exercised.
      let failFirst = false;
      const failing = new Set<string>();
      const receiver = await startReceiver(
        () => secret,
        (eventId, attempt) => {
          if (attempt === 1) {
            failFirst = !failFirst;
            if (failFirst) failing.add(eventId);
          }
          return attempt === 1 && failing.has(eventId) ? 500 : 204;
        },
      );
      try {
        const created = await hooks.createWebhookEndpoint({
          url: receiver.url,
          eventTypes: ["session.created", "session.paused", "session.resumed", "session.revoked"],
        });
        secret = created.secret;
        assert.match(secret, /^whsec_[A-Za-z0-9_-]{43}$/);
        const endpointId: string = created.endpoint.endpointId;
        const got = await hooks.getWebhookEndpoint({ endpointId });
        assert.equal(got.endpoint.status, WebhookEndpointStatus.ACTIVE);
        assert.equal(got.endpoint.url, receiver.url);

        const { session } = await sessions.createSession({
          agentId: "hooked-agent",
          policy: { currencyCode: "USD" },
          expiration: { case: "ttl", value: { seconds: 3600n } },
        });
        const sessionId: string = session.sessionId;
        await sessions.pauseSession({ sessionId, reason: "look" });
        await sessions.resumeSession({ sessionId, reason: "fine" });
        await sessions.revokeSession({ sessionId, reason: "stop" });

        const { rows } = await server.store.db.query<{ event_id: string; type: string }>(
          "SELECT event_id, type FROM events WHERE session_id = $1 ORDER BY seq",
          [sessionId],
        );
        assert.deepEqual(rows.map((r) => r.type), ["session.created", "session.paused", "session.resumed", "session.revoked"]);
        const expected = rows.map((r) => r.event_id);
        const accepted = () => receiver.received.filter((r) => r.answered === 204);
        await until(() => expected.every((id) => accepted().some((r) => r.eventId === id)), "every event accepted");

        assert.ok(receiver.received.every((r) => r.verified), "every request carried a valid signature");
        assert.ok(failing.size >= 2, "some first attempts failed");
        for (const id of failing) {
          assert.ok(receiver.received.filter((r) => r.eventId === id).length >= 2, `${id} was retried`);
        }
        // At least once; deduplicated by event id, exactly once each, and nothing else.
        assert.deepEqual([...new Set(receiver.received.map((r) => r.eventId))].sort(), [...expected].sort());
        assert.deepEqual(accepted().map((r) => r.eventId).sort(), [...expected].sort());
        // The receiver answers before the server records the answer: wait for the store to settle.
        await until(async () => {
          const r = await server.store.db.query("SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 AND status <> 2", [endpointId]);
          return r.rows.length === 0;
        }, "every delivery settled");
        const after = await hooks.getWebhookEndpoint({ endpointId });
        assert.equal(after.endpoint.status, WebhookEndpointStatus.ACTIVE);
        assert.equal(after.endpoint.consecutiveFailures, 0);

        const listed = await hooks.listWebhookEndpoints({ pageSize: 10 });
        assert.ok(listed.endpoints.some((e: { endpointId: string }) => e.endpointId === endpointId));
        // The secret is shown once, on create, and never again.
        assert.ok(!JSON.stringify(listed, (_k, v) => (typeof v === "bigint" ? String(v) : v)).includes(secret));
        await hooks.deleteWebhookEndpoint({ endpointId });
        await assert.rejects(hooks.getWebhookEndpoint({ endpointId }), (e: { code: number }) => e.code === 5);
      } finally {
        await receiver.close();
      }
    });

    test("an endpoint whose receiver always fails is disabled, says why, and can be re-enabled", async () => {
      const receiver = await startReceiver(() => created.secret, () => 503);
      const created = await hooks.createWebhookEndpoint({ url: receiver.url, eventTypes: ["session.created"], secret: "whsec_given-by-the-user-1234" });
      assert.equal(created.secret, "whsec_given-by-the-user-1234");
      const endpointId: string = created.endpoint.endpointId;
      try {
        for (let i = 0; i < 2; i++) {
          await sessions.createSession({ agentId: "failing-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: { seconds: 3600n } } });
        }
        await until(
          async () => (await hooks.getWebhookEndpoint({ endpointId })).endpoint.status === WebhookEndpointStatus.DISABLED,
          "endpoint disabled",
        );
        const { endpoint } = await hooks.getWebhookEndpoint({ endpointId });
        assert.match(endpoint.disabledReason, /^\d+ consecutive failed deliveries; last error: HTTP 503$/);
        // Deliveries sent together may all fail past the threshold.
        assert.ok(endpoint.consecutiveFailures >= 3);
        assert.ok(receiver.received.every((r) => r.verified && r.answered === 503));

        const enabled = await hooks.enableWebhookEndpoint({ endpointId });
        assert.equal(enabled.endpoint.status, WebhookEndpointStatus.ACTIVE);
        assert.equal(enabled.endpoint.disabledReason, "");
        assert.equal(enabled.endpoint.consecutiveFailures, 0);
      } finally {
        await hooks.deleteWebhookEndpoint({ endpointId });
        await receiver.close();
      }
    });

    test("after RotateWebhookSecret, receivers holding the old secret and the new one both verify, until the old one's period ends", async () => {
      let secrets: string[] = [];
      // Two receivers at one URL would be one; here one receiver checks each delivery against both secrets.
      const byOld = await startReceiver(() => secrets[0]!, () => 204);
      try {
        const created = await hooks.createWebhookEndpoint({ url: byOld.url, eventTypes: ["session.created"] });
        const endpointId: string = created.endpoint.endpointId;
        const rotated = await hooks.rotateWebhookSecret({ endpointId, previousSecretTtl: { seconds: 3600n } });
        assert.match(rotated.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
        assert.notEqual(rotated.secret, created.secret);
        assert.ok(rotated.endpoint.previousSecretsExpireTime !== undefined);
        secrets = [created.secret];
        await sessions.createSession({ agentId: "rotation-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: { seconds: 60n } } });
        await until(() => byOld.received.length > 0, "a delivery");
        assert.equal(byOld.received[0]!.verified, true, "a receiver not yet switched still verifies");
        secrets = [rotated.secret];
        await sessions.createSession({ agentId: "rotation-agent", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: { seconds: 60n } } });
        await until(() => byOld.received.length > 1, "a second delivery");
        assert.equal(byOld.received[1]!.verified, true, "a receiver switched verifies");
        // Validated like the rest: a period over 7 days names the field.
        await assert.rejects(
          hooks.rotateWebhookSecret({ endpointId, previousSecretTtl: { seconds: 8n * 86_400n } }),
          (e: { code: number; details: string }) => e.code === 3 && /previous_secret_ttl/.test(e.details),
        );
      } finally {
        await byOld.close();
      }
    });

    test("CreateWebhookEndpoint validates its url and event types", async () => {
      for (const req of [
        { url: "not a url", eventTypes: ["session.created"] },
        { url: "ftp://example.com/x", eventTypes: ["session.created"] },
        { url: "https://example.com/x", eventTypes: [] },
        { url: "https://example.com/x", eventTypes: ["approval.created"] },
        { url: "https://example.com/x", eventTypes: ["session.created"], secret: "short" },
      ]) {
        await assert.rejects(hooks.createWebhookEndpoint(req), (e: { code: number }) => e.code === 3, JSON.stringify(req));
      }
    });
  });
}
