import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import pg from "pg";
import { CreateWebhookEndpointRequestSchema } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { createWebhookStore, type WebhookStore } from "../../src/webhooks/webhook-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

/** Waits until a backend of this database runs a statement matching `like` and waits on a lock. */
async function waitingOnLock(c: pg.Client, like: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const { rows } = await c.query(
      "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1",
      [like],
    );
    if (rows.length > 0) return;
    await sleep(10);
  }
  assert.fail(`no statement like ${like} waited on a lock`);
}

/**
 * DeleteWebhookEndpoint while a state change records an event of the
 * endpoint's type: the state change (here CreateSession) must not fail.
 * The endpoint is gone; the event simply has no delivery for it.
 */
describe("deleting a webhook endpoint concurrently with a state change (postgres)", () => {
  let t: TestDatabase;
  let store: WardenStore;
  let hooks: WebhookStore;
  let side: pg.Client;
  let observer: pg.Client;
  before(async () => {
    t = await openTestDatabase("postgres");
    const clock = new ManualClock();
    store = createWardenStore({ db: t.db, now: clock.now });
    hooks = createWebhookStore({ db: t.db, now: clock.now });
    side = new pg.Client({ connectionString: t.url });
    await side.connect();
    observer = new pg.Client({ connectionString: t.url });
    await observer.connect();
  });
  after(async () => {
    await side.end();
    await observer.end();
    await t.drop();
  });

  test("a session created while the endpoint's delete is in progress is created, not failed with a foreign-key error", async () => {
    const ep = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: "http://127.0.0.1:9/x", eventTypes: ["session.created"] }));
    const id = ep.endpoint.endpointId;
    // One queued delivery, held by a dispatcher's claim transaction (as claimDue holds it, FOR UPDATE).
    await store.createSession(sessionRequest("hook-race-a", {}), NO_HASH);
    await side.query("BEGIN");
    await side.query("SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 FOR UPDATE", [id]);
    // The delete takes the endpoint's row, then waits on the claimed delivery (its cascade).
    const deleting = hooks.deleteEndpoint(id);
    await waitingOnLock(observer, "DELETE FROM webhook_endpoints%");
    // Meanwhile a session is created: its session.created event joins the (still visible) endpoint.
    const creating = store.createSession(sessionRequest("hook-race-b", {}), NO_HASH).then(
      (s) => ({ ok: true as const, s }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    await waitingOnLock(observer, "%INSERT INTO events%");
    await side.query("COMMIT");
    await deleting;
    const r = await creating;
    assert.ok(r.ok, `CreateSession failed: ${r.ok ? "" : String((r as { err: unknown }).err)}`);
  });
});
