import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CreateWebhookEndpointRequestSchema } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { createWebhookStore } from "../../src/webhooks/webhook-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`webhook claims of two replicas, on ${driver}`, () => {
    let t: TestDatabase;
    before(async () => {
      t = await openTestDatabase(driver);
    });
    after(async () => {
      await t.drop();
    });

    test("a settlement from a claim that lapsed (another replica claimed the delivery since) changes nothing", async () => {
      const clock = new ManualClock();
      // Two replicas' webhook stores on one database.
      const [a, b] = [createWebhookStore({ db: t.db, now: clock.now }), createWebhookStore({ db: t.db, now: clock.now })];
      const { endpoint } = await a.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/hook", eventTypes: ["session.created"] }));
      const store = createWardenStore({ db: t.db, now: clock.now });
      const delivery = async () =>
        (
          await t.db.query<{ status: number; attempts: number }>("SELECT status, attempts FROM webhook_deliveries WHERE endpoint_id = $1", [endpoint!.endpointId])
        ).rows.map((r) => [r.status, r.attempts]);
      const failures = async () => (await a.getEndpoint(endpoint!.endpointId)).consecutiveFailures;

      await store.createSession(sessionRequest(`claims-${driver}-1`, {}), NO_HASH);
      // A claims it (a 30 s lease) and stalls past the lease; B claims it again and delivers it.
      const [byA] = await a.claimDue(10, 30_000);
      clock.advance(31_000);
      const [byB] = await b.claimDue(10, 30_000);
      assert.equal(byB?.eventId, byA!.eventId);
      await b.markDelivered(byB!);
      // A's attempt then fails: the delivered event is not queued again, nor counted against the endpoint.
      assert.equal(await a.markFailed(byA!, "HTTP 503", clock.now() + 1_000, 1), undefined);
      assert.deepEqual(await delivery(), [[2, 1]]);
      assert.equal(await failures(), 0);

      // The other way round: B's claim is in flight when A's stale success lands; B's failure decides.
      await store.createSession(sessionRequest(`claims-${driver}-2`, {}), NO_HASH);
      const [second] = await a.claimDue(10, 30_000);
      clock.advance(31_000);
      const [again] = await b.claimDue(10, 30_000);
      await a.markDelivered(second!);
      await b.markFailed(again!, "HTTP 503", clock.now() + 1_000, 20);
      const { rows } = await t.db.query<{ status: number; attempts: number }>("SELECT status, attempts FROM webhook_deliveries WHERE event_id = $1", [again!.eventId]);
      assert.deepEqual(rows.map((r) => [r.status, r.attempts]), [[1, 1]], "pending, to be sent again: at least once");
    });
  });
}
