import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CreateWebhookEndpointRequestSchema, WebhookEndpointStatus } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { createWebhookDispatcher } from "../../src/webhooks/webhook-dispatcher.js";
import { createWebhookStore } from "../../src/webhooks/webhook-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`webhook retry period on ${driver}`, () => {
    let t: TestDatabase;
    let receiver: Server;
    let url: string;
    let requests = 0;
    before(async () => {
      t = await openTestDatabase(driver);
      // A real receiver that is down for good: every delivery fails.
      receiver = createServer((req, res) => {
        requests++;
        req.resume();
        req.on("end", () => res.writeHead(503).end());
      });
      await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
      url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hooks`;
    });
    after(async () => {
      await new Promise<void>((r) => receiver.close(() => r()));
      await t.drop();
    });

    /** A store, a dispatcher ticked by hand (jitter pinned) and an endpoint at the receiver, for session.created. */
    async function setUp(o: Partial<Parameters<typeof createWebhookDispatcher>[0]>) {
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      const dispatcher = createWebhookDispatcher({ store: hooks, logger: createLogger("silent"), intervalMs: 3_600_000, random: () => 1, ...o });
      const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
      return { clock, store, hooks, dispatcher, endpoint };
    }

    test("a delivery still failing when the retry period runs out is abandoned, and its endpoint disabled saying so", async () => {
      // Failures in a row alone would not disable it: only the retry period can.
      const { clock, store, hooks, dispatcher, endpoint } = await setUp({ retryPeriodMs: 60_000, backoffBaseMs: 10_000, maxBackoffMs: 10_000, maxConsecutiveFailures: 1000 });
      try {
        await store.createSession(sessionRequest("agent-abandon", {}), NO_HASH);
        let attempts = 0;
        // Retries every 10 s (jitter pinned), until the next one would fall past 60 s after the event.
        for (let i = 0; i < 20; i++) {
          attempts += await dispatcher.tick();
          clock.advance(10_000);
        }
        assert.equal(attempts, requests, "every claimed delivery was sent to the receiver");
        assert.ok(attempts >= 5 && attempts <= 7, `attempts within the period: ${attempts}`);
        const { rows } = await t.db.query<{ status: number; attempts: number; last_error: string }>(
          "SELECT status, attempts, last_error FROM webhook_deliveries WHERE endpoint_id = $1",
          [endpoint!.endpointId],
        );
        assert.deepEqual(rows.map((r) => [r.status, r.attempts, r.last_error]), [[3, attempts, "HTTP 503"]]);
        const after = await hooks.getEndpoint(endpoint!.endpointId);
        assert.equal(after.status, WebhookEndpointStatus.DISABLED);
        assert.match(after.disabledReason, /was abandoned after \d+ attempts over the retry period; last error: HTTP 503/);
        // Abandoned stays abandoned: nothing is sent again, even once re-enabled.
        await hooks.enableEndpoint(endpoint!.endpointId);
        assert.equal(await dispatcher.tick(), 0);
      } finally {
        await dispatcher.stop();
      }
    });

    test("the deliveries one tick sends together count as one failure in a row: a short outage with many events queued does not disable the endpoint", async () => {
      const { clock, store, hooks, dispatcher, endpoint } = await setUp({ backoffBaseMs: 1_000, maxBackoffMs: 1_000, maxConsecutiveFailures: 3 });
      try {
        for (let i = 0; i < 10; i++) await store.createSession(sessionRequest(`agent-burst-${driver}-${i}`, {}), NO_HASH);
        // Ten deliveries to this endpoint, sent together, all failing.
        assert.ok((await dispatcher.tick()) >= 10);
        let ep = await hooks.getEndpoint(endpoint!.endpointId);
        assert.deepEqual([WebhookEndpointStatus[ep.status], ep.consecutiveFailures], ["ACTIVE", 1]);
        // Still down at the next two rounds: three failures in a row.
        for (let i = 0; i < 2; i++) {
          clock.advance(2_000);
          await dispatcher.tick();
        }
        ep = await hooks.getEndpoint(endpoint!.endpointId);
        assert.deepEqual([WebhookEndpointStatus[ep.status], ep.consecutiveFailures], ["DISABLED", 3]);
      } finally {
        await dispatcher.stop();
      }
    });
  });
}
