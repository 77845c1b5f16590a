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
  describe(`webhook endpoints under outages and re-enabling, on ${driver}`, () => {
    let t: TestDatabase;
    let receiver: Server;
    let url: string;
    let up = false;
    const got: string[] = [];
    let n = 0;
    const agent = () => `hook-outage-${driver}-${++n}`;
    before(async () => {
      t = await openTestDatabase(driver);
      receiver = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on("data", (c: Buffer) => chunks.push(c));
        req.on("end", () => {
          got.push(String(req.headers["warden-event-id"]));
          res.writeHead(up ? 204 : 503).end();
        });
      });
      await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
      url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hooks`;
    });
    after(async () => {
      await new Promise<void>((r) => receiver.close(() => r()));
      await t.drop();
    });

    test("EnableWebhookEndpoint while a delivery is in flight leaves it to the dispatcher sending it: no second dispatcher sends it at once", async () => {
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
      const id = endpoint!.endpointId;
      await store.createSession(sessionRequest(agent(), {}), NO_HASH);
      // Replica A claims the delivery and is sending it (lease: 30 s).
      const a = await hooks.claimDue(10, 30_000);
      assert.equal(a.length, 1);
      // An admin (re-)enables the endpoint meanwhile (IDEMPOTENT RPC; e.g. after a sibling's failure disabled it).
      await hooks.enableEndpoint(id);
      // Replica B's next tick, one second later, must not take the leased delivery.
      clock.advance(1000);
      const b = await hooks.claimDue(10, 30_000);
      assert.deepEqual(
        b.map((d) => d.eventId),
        [],
        "a delivery another dispatcher holds under its claim's lease was claimed again (sent twice concurrently)",
      );
      await hooks.deleteEndpoint(id);
    });

    test("a 25-second receiver outage under steady traffic (one event a second) does not disable the endpoint: its deliveries are retried and arrive", async () => {
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      // Defaults: 1 s backoff base, 1 h cap, 20 failures in a row, 3 day retry period, 1 s ticks.
      const dispatcher = createWebhookDispatcher({ store: hooks, logger: createLogger("silent"), intervalMs: 3_600_000, random: () => 0.5 });
      const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
      const id = endpoint!.endpointId;
      try {
        up = false;
        for (let s = 0; s < 25; s++) {
          await store.createSession(sessionRequest(agent(), {}), NO_HASH);
          await dispatcher.tick();
          clock.advance(1000);
        }
        const ep = await hooks.getEndpoint(id);
        assert.deepEqual(
          [WebhookEndpointStatus[ep.status], ep.disabledReason],
          ["ACTIVE", ""],
          `after a 25 s outage the endpoint is ${WebhookEndpointStatus[ep.status]} (${ep.consecutiveFailures} failures in a row)`,
        );
        // The receiver is back: each delivery arrives at its next retry.
        up = true;
        for (let i = 0; i < 10; i++) {
          clock.advance(60_000);
          await dispatcher.tick();
        }
        const { rows } = await t.db.query<{ n: string }>("SELECT count(*) AS n FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 2", [id]);
        assert.equal(rows[0]!.n, "25");
      } finally {
        up = true;
        await dispatcher.stop();
        await hooks.deleteEndpoint(id);
      }
    });
  });
}
