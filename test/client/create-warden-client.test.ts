import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { createWardenClient, EVENT_ID_HEADER, SIGNATURE_HEADER, verifyWebhookSignature, WebhookSignatureError } from "../../src/client/index.js";
import { MalformedCredentialError } from "../../src/client/create-warden-client.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import { signWebhookBody } from "../../src/webhooks/verify-webhook-signature.js";
import { payment, USD } from "../helpers/fixtures.js";
import { tempDataDir } from "../helpers/server-process.js";

describe("the TypeScript client (src/client) against a real server", () => {
  let server: RunningServer;
  let dataDir: string;
  before(async () => {
    dataDir = tempDataDir();
    server = await startServer({ grpcAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0", dataDir, sweepIntervalMs: 60_000, logger: createLogger("silent"), requireAuth: true });
  });
  after(async () => {
    await server?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  for (const protocol of ["connect", "grpc-web", "grpc"] as const) {
    test(`${protocol}: an admin key creates a session; its session token decides; no credential is refused`, async () => {
      const baseUrl = protocol === "grpc" ? `http://127.0.0.1:${server.grpcPort}` : `http://127.0.0.1:${server.httpPort}`;
      const bootstrap = await createApiKeys({ db: server.store.db }).create({ role: "admin" });
      const admin = createWardenClient({ baseUrl, protocol, credential: bootstrap.secret, ...(protocol === "grpc" ? {} : { httpVersion: "1.1" as const }) });
      const created = await admin.sessions.createSession({
        agentId: `agent-client-${protocol}`,
        policy: { currencyCode: "USD", daily: { maxValueMicros: USD(10) } },
        expiration: { case: "ttl", value: durationFromMs(60_000) },
      });
      const agent = createWardenClient({ baseUrl, protocol, credential: created.sessionToken });
      const sessionId = created.session!.sessionId;
      const ok = await agent.policy.check({ sessionId, action: payment(USD(6)), idempotencyKey: "k1" });
      assert.equal(ok.decision!.outcome, Outcome.ALLOW);
      const no = await agent.policy.check({ sessionId, action: payment(USD(6)), idempotencyKey: "k2" });
      assert.equal(no.decision!.outcome, Outcome.DENY);
      const listed = await admin.events.listEvents({ filter: { sessionId } });
      assert.deepEqual(listed.events.map((e) => e.type), ["session.created", "session.limit_reached"]);
      const anonymous = createWardenClient({ baseUrl, protocol });
      await assert.rejects(anonymous.sessions.getSession({ sessionId }), (e) => ConnectError.from(e).code === Code.Unauthenticated);
    });
  }

  test("a malformed credential (two lines, a space, a non-ASCII character) throws at once, saying what is wrong but never repeating it", async () => {
    const baseUrl = `http://127.0.0.1:${server.httpPort}`;
    const { secret } = await createApiKeys({ db: server.store.db }).create({ role: "admin" });
    const secretPart = secret.slice(-43);
    const at = secret.length + 1;
    for (const [credential, why] of [
      [`${secret}\nold-key-below`, `it holds a line break at character ${at}`],
      [`${secret} ${secret}`, `it holds a space at character ${at}`],
      [`${secret}é`, `it holds a non-ASCII character at character ${at}`],
      [`${secret}\u0000`, `it holds a control character at character ${at}`],
      [" \n", "it is blank"],
    ] as const) {
      for (const protocol of ["connect", "grpc-web", "grpc"] as const) {
        assert.throws(
          () => createWardenClient({ baseUrl, protocol, credential }),
          (e: unknown) => {
            assert.ok(e instanceof MalformedCredentialError, String(e));
            assert.match(e.message, /^credential: not a usable API key or session token: only visible ASCII characters may appear in one, and /);
            assert.ok(e.message.endsWith(`, and ${why}`), e.message);
            assert.ok(!e.message.includes(secretPart) && !(e.stack ?? "").includes(secretPart), "the credential is not repeated");
            return true;
          },
        );
      }
    }
    // A file's trailing newline is no fault: Headers drops surrounding whitespace.
    const admin = createWardenClient({ baseUrl, credential: `${secret}\n` });
    await admin.sessions.listSessions({});
  });

  test("ships webhook verification: a signed body verifies, an altered one or an old one does not", () => {
    const body = JSON.stringify({ id: "evt_x", type: "session.revoked" });
    const t = Math.floor(Date.now() / 1000);
    const header = signWebhookBody("whsec_test_secret_1234", t, body);
    assert.equal(SIGNATURE_HEADER, "warden-signature");
    assert.equal(EVENT_ID_HEADER, "warden-event-id");
    assert.equal(verifyWebhookSignature({ header, body, secret: "whsec_test_secret_1234" }), true);
    assert.throws(() => verifyWebhookSignature({ header, body: `${body} `, secret: "whsec_test_secret_1234" }), WebhookSignatureError);
    assert.throws(() => verifyWebhookSignature({ header, body, secret: "whsec_test_secret_1234", now: (t + 3600) * 1000 }), /tolerance/);
  });
});
