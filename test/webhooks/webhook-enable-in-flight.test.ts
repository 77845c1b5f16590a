import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CreateWebhookEndpointRequestSchema, WebhookEndpointStatus } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { createWebhookStore } from "../../src/webhooks/webhook-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

// Disabling an endpoint parks its waiting deliveries (EnableWebhookEndpoint
// makes them due again). It parked the ones other dispatchers were sending
// right then too, so re-enabling sent those a second time, at once, while
// the first send ran (migration 025).
for (const driver of DRIVERS) describe(`EnableWebhookEndpoint after a sibling delivery's failure disabled the endpoint, on ${driver}`, () => {
  let t: TestDatabase;
  before(async () => {
    t = await openTestDatabase(driver);
  });
  after(async () => {
    await t.drop();
  });

  test("a delivery still in flight (claimed in the same round) is not claimed again at once after re-enabling", async () => {
    const clock = new ManualClock();
    const store = createWardenStore({ db: t.db, now: clock.now });
    const hooks = createWebhookStore({ db: t.db, now: clock.now });
    const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/h", eventTypes: ["session.created"] }));
    const id = endpoint!.endpointId;
    await store.createSession(sessionRequest("hook-enable-1", {}), NO_HASH);
    await store.createSession(sessionRequest("hook-enable-2", {}), NO_HASH);
    // Replica A claims both deliveries of this round and sends them (lease: 30 s).
    const claimed = await hooks.claimDue(10, 30_000);
    assert.equal(claimed.length, 2);
    const [first, second] = claimed as [(typeof claimed)[0], (typeof claimed)[0]];
    // The first fails for good (its retry period ran out): the endpoint is disabled.
    const reason = await hooks.markFailed(first, "HTTP 503", undefined, 20, true);
    assert.ok(reason !== undefined, "the abandoned delivery disabled the endpoint");
    assert.equal((await hooks.getEndpoint(id)).status, WebhookEndpointStatus.DISABLED);
    // The second is still being sent by replica A. An admin re-enables the endpoint.
    await hooks.enableEndpoint(id);
    // Replica B's tick a second later must leave the delivery replica A is still sending
    // (README: EnableWebhookEndpoint retries what was pending, "not a delivery being sent right then").
    clock.advance(1000);
    const again = await hooks.claimDue(10, 30_000);
    assert.deepEqual(
      again.map((d) => d.eventId),
      [],
      `delivery ${second.eventId}, still under replica A's claim, was claimed again and is sent twice at once`,
    );
    // Replica A's send of it fails: it is retried after its backoff, not lost.
    await hooks.markFailed(second, "HTTP 503", clock.now() + 5_000, 20, true);
    clock.advance(5_000);
    assert.deepEqual((await hooks.claimDue(10, 30_000)).map((d) => d.eventId), [second.eventId]);
  });
});
