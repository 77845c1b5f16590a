import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { CreateWebhookEndpointRequestSchema } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { redactUrl } from "../../src/server/redact-url.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { createWebhookDispatcher } from "../../src/webhooks/webhook-dispatcher.js";
import { createWebhookStore } from "../../src/webhooks/webhook-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);
const PASSWORD = "hunter2-receiver-password";

/**
 * CreateWebhookEndpoint accepts an http(s) URI with credentials
 * (https://user:pass@host/…, the usual way to put a receiver behind basic
 * auth). fetch() refuses such URLs, so the dispatcher sends the
 * credentials as an Authorization header; the password is a secret, kept
 * out of logs, stored errors and what the API shows.
 */
describe("webhook receivers behind basic auth", () => {
  let t: TestDatabase;
  let receiver: Server;
  let port = 0;
  const seen: { authorization: string | undefined }[] = [];
  before(async () => {
    t = await openTestDatabase("pglite");
    receiver = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        seen.push({ authorization: req.headers.authorization });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    port = (receiver.address() as { port: number }).port;
  });
  after(async () => {
    await new Promise<void>((r) => receiver.close(() => r()));
    await t.drop();
  });

  async function run(target = `127.0.0.1:${port}`) {
    const clock = new ManualClock();
    const store = createWardenStore({ db: t.db, now: clock.now });
    const hooks = createWebhookStore({ db: t.db, now: clock.now });
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString("utf8"));
        cb();
      },
    });
    const dispatcher = createWebhookDispatcher({
      store: hooks,
      logger: createLogger("debug", sink),
      intervalMs: 3_600_000,
      backoffBaseMs: 1000,
      maxBackoffMs: 1000,
      maxConsecutiveFailures: 3,
      random: () => 1,
    });
    const url = `http://hookuser:${PASSWORD}@${target}/hooks`;
    const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"] }));
    await store.createSession(sessionRequest(`agent-userinfo-${Math.random()}`, {}), NO_HASH);
    try {
      for (let i = 0; i < 4; i++) {
        await dispatcher.tick();
        clock.advance(2000);
      }
    } finally {
      await dispatcher.stop();
    }
    const ep = await hooks.getEndpoint(endpoint!.endpointId);
    const { rows } = await t.db.query<{ last_error: string }>("SELECT last_error FROM webhook_deliveries WHERE endpoint_id = $1", [endpoint!.endpointId]);
    return { ep, lines, lastErrors: rows.map((r) => r.last_error) };
  }

  test("a receiver behind basic auth (user:password@ in the URL the API accepted) gets its event, the credentials as an Authorization header", async () => {
    seen.length = 0;
    const { ep } = await run();
    assert.deepEqual(seen, [{ authorization: `Basic ${Buffer.from(`hookuser:${PASSWORD}`).toString("base64")}` }]);
    assert.equal(ep.url, `http://hookuser:***@127.0.0.1:${port}/hooks`, "the API never shows the password back");
  });

  test("a token given as the URL's user name alone is shown back and logged as ***, as a password is", async () => {
    const hooks = createWebhookStore({ db: t.db });
    const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: `https://sk_live_token@127.0.0.1:${port}/hooks`, eventTypes: ["session.created"] }));
    assert.equal(endpoint!.url, `https://***@127.0.0.1:${port}/hooks`);
    assert.equal((await hooks.getEndpoint(endpoint!.endpointId)).url, `https://***@127.0.0.1:${port}/hooks`);
    assert.equal(redactUrl(`https://sk_live_token@example.test/x`), "https://***@example.test/x");
    // A token in the query (Slack-style hooks, ?token=) is not shown back either.
    const { endpoint: queried } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url: `https://127.0.0.1:${port}/hooks?token=sk_live_q&team=ops`, eventTypes: ["session.created"] }));
    assert.equal(queried!.url, `https://127.0.0.1:${port}/hooks?token=***&team=ops`);
    assert.equal((await hooks.getEndpoint(queried!.endpointId)).url, `https://127.0.0.1:${port}/hooks?token=***&team=ops`);
    await hooks.deleteEndpoint(queried!.endpointId);
    assert.equal(redactUrl("postgres://postgres@127.0.0.1:5432/test"), "postgres://postgres@127.0.0.1:5432/test", "a database user name is not a secret");
    await hooks.deleteEndpoint(endpoint!.endpointId);
  });

  test("the password of a receiver that cannot be reached never reaches a log line, a delivery's last_error or the endpoint's disabled_reason", async () => {
    // Nothing listens on port 1: every attempt fails, and the endpoint is disabled.
    const { ep, lines, lastErrors } = await run("127.0.0.1:1");
    assert.ok(lastErrors.length > 0 && ep.disabledReason !== "", "it failed, and was disabled");
    const logged = lines.filter((l) => l.includes(PASSWORD));
    assert.deepEqual(logged, [], "password logged in the error field, next to the redacted url");
    assert.ok(!lastErrors.some((e) => e.includes(PASSWORD)), `stored in last_error: ${lastErrors.join(" | ")}`);
    assert.ok(!ep.disabledReason.includes(PASSWORD), `served by GetWebhookEndpoint as disabled_reason: ${ep.disabledReason}`);
  });
});
