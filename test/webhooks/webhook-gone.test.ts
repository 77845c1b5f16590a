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
  describe(`a receiver that answers 410 Gone, on ${driver}`, () => {
    let t: TestDatabase;
    let receiver: Server;
    let url: string;
    let answer = 410;
    const received: string[] = [];
    before(async () => {
      t = await openTestDatabase(driver);
      receiver = createServer((req, res) => {
        let body = "";
        req.on("data", (c: Buffer) => (body += c.toString()));
        req.on("end", () => {
          received.push(`${answer} ${(JSON.parse(body) as { type: string }).type}`);
          res.writeHead(answer).end();
        });
      });
      await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
      url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hooks`;
    });
    after(async () => {
      await new Promise<void>((r) => receiver.close(() => r()));
      await t.drop();
    });

    test("is disabled at once, not retried for days; its delivery is kept and sent once it is enabled again", async () => {
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      const dispatcher = createWebhookDispatcher({ store: hooks, logger: createLogger("silent"), intervalMs: 3_600_000, random: () => 1, backoffBaseMs: 1_000, maxBackoffMs: 1_000 });
      try {
        const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
        await store.createSession(sessionRequest("agent-gone", {}), NO_HASH);
        assert.equal(await dispatcher.tick(), 1);
        const ep = await hooks.getEndpoint(endpoint!.endpointId);
        assert.equal(WebhookEndpointStatus[ep.status], "DISABLED", "one 410 is enough");
        assert.match(ep.disabledReason, /^the receiver answered HTTP 410 Gone \(event evt_\w+\): it asked for no more deliveries$/);
        // Nothing more is sent, however long one waits.
        for (let i = 0; i < 5; i++) {
          clock.advance(2_000);
          assert.equal(await dispatcher.tick(), 0);
        }
        assert.deepEqual(received, ["410 session.created"]);
        // The receiver is back (a person re-enabled it): the kept delivery goes out.
        answer = 200;
        await hooks.enableEndpoint(endpoint!.endpointId);
        assert.equal(await dispatcher.tick(), 1);
        assert.deepEqual(received, ["410 session.created", "200 session.created"]);
        const { rows } = await t.db.query<{ status: number }>("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1", [endpoint!.endpointId]);
        assert.deepEqual(rows.map((r) => r.status), [2], "delivered");
        // The next test's events are its own endpoint's.
        await hooks.deleteEndpoint(endpoint!.endpointId);
      } finally {
        await dispatcher.stop();
      }
    });

    test("the delivery that got the 410 is kept even when its retry period is about over", async () => {
      answer = 410;
      received.length = 0;
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      // A retry period shorter than one backoff: the first failure is the
      // delivery's last attempt, as for one that meets the 410 late in its three days.
      const dispatcher = createWebhookDispatcher({
        store: hooks,
        logger: createLogger("silent"),
        intervalMs: 3_600_000,
        random: () => 1,
        backoffBaseMs: 1_000,
        maxBackoffMs: 1_000,
        retryPeriodMs: 500,
      });
      try {
        const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
        await store.createSession(sessionRequest("agent-gone-last", {}), NO_HASH);
        assert.equal(await dispatcher.tick(), 1);
        assert.equal(WebhookEndpointStatus[(await hooks.getEndpoint(endpoint!.endpointId)).status], "DISABLED");
        answer = 200;
        await hooks.enableEndpoint(endpoint!.endpointId);
        await dispatcher.tick();
        const { rows } = await t.db.query<{ status: number }>("SELECT status FROM webhook_deliveries WHERE endpoint_id = $1", [endpoint!.endpointId]);
        assert.deepEqual({ received, status: rows.map((r) => r.status) }, { received: ["410 session.created", "200 session.created"], status: [2] });
      } finally {
        await dispatcher.stop();
      }
    });
  });
}
