import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { CreateWebhookEndpointRequestSchema, RotateWebhookSecretRequestSchema } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { SIGNATURE_HEADER, verifyWebhookSignature } from "../../src/webhooks/verify-webhook-signature.js";
import { createWebhookDispatcher } from "../../src/webhooks/webhook-dispatcher.js";
import { createWebhookStore } from "../../src/webhooks/webhook-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);
const HOUR = 3_600_000;
const secret = (name: string) => `whsec_${name.padEnd(16, "0")}`;

for (const driver of DRIVERS) {
  describe(`webhook secret rotation on ${driver}`, () => {
    let t: TestDatabase;
    let receiver: Server;
    let url: string;
    const received: { header: string; body: string }[] = [];
    before(async () => {
      t = await openTestDatabase(driver);
      receiver = createServer((req, res) => {
        let body = "";
        req.on("data", (c: Buffer) => (body += c.toString()));
        req.on("end", () => {
          received.push({ header: String(req.headers[SIGNATURE_HEADER]), body });
          res.writeHead(204).end();
        });
      });
      await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
      url = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hooks`;
    });
    after(async () => {
      await new Promise<void>((r) => receiver.close(() => r()));
      await t.drop();
    });

    test("a rotated secret signs at once; the old one signs too for its period, or not at all with a zero period", async () => {
      const clock = new ManualClock();
      const store = createWardenStore({ db: t.db, now: clock.now });
      const hooks = createWebhookStore({ db: t.db, now: clock.now });
      const dispatcher = createWebhookDispatcher({ store: hooks, logger: createLogger("silent"), intervalMs: 3_600_000 });
      let n = 0;
      /** Sends one event and says which secrets its delivery verifies under, as a receiver would check. */
      const verifiesUnder = async (...names: string[]) => {
        received.length = 0;
        await store.createSession(sessionRequest(`agent-rotate-${driver}-${++n}`, {}), NO_HASH);
        assert.equal(await dispatcher.tick(), 1);
        const [{ header, body }] = received as [{ header: string; body: string }];
        const ok = names.filter((s) => {
          try {
            return verifyWebhookSignature({ header, body, secret: secret(s), now: clock.ms });
          } catch {
            return false;
          }
        });
        return { ok, signatures: header.split(",").filter((p) => p.startsWith("v1=")).length };
      };
      try {
        const { endpoint } = await hooks.createEndpoint(create(CreateWebhookEndpointRequestSchema, { url, eventTypes: ["session.created"], secret: secret("a") }));
        const id = endpoint!.endpointId;
        const rotate = (s: string | undefined, ttlMs?: number) =>
          hooks.rotateSecret(create(RotateWebhookSecretRequestSchema, { endpointId: id, secret: s === undefined ? "" : secret(s), previousSecretTtl: ttlMs === undefined ? undefined : durationFromMs(ttlMs) }));
        assert.deepEqual(await verifiesUnder("a", "b"), { ok: ["a"], signatures: 1 });

        // Default: the old secret signs for 24 hours more.
        const b = await rotate("b");
        assert.equal(b.secret, secret("b"));
        assert.equal(timestampMs(b.endpoint.previousSecretsExpireTime!), clock.ms + 24 * HOUR);
        assert.deepEqual(await verifiesUnder("a", "b"), { ok: ["a", "b"], signatures: 2 });
        // Rotated again within the day (say the answer of the first was
        // lost): every secret a receiver may still hold signs.
        await rotate("c", HOUR);
        assert.deepEqual(await verifiesUnder("a", "b", "c"), { ok: ["a", "b", "c"], signatures: 3 });
        clock.advance(HOUR);
        assert.deepEqual(await verifiesUnder("a", "b", "c"), { ok: ["a", "c"], signatures: 2 }, "b's hour is over");
        clock.advance(23 * HOUR);
        assert.deepEqual(await verifiesUnder("a", "b", "c"), { ok: ["c"], signatures: 1 }, "and a's day");
        assert.equal((await hooks.getEndpoint(id)).previousSecretsExpireTime, undefined, "shown only while an old secret signs");

        // A leaked secret: rotated with a zero period, nothing old signs any more.
        await rotate("d", HOUR);
        const e = await rotate("e", 0);
        assert.equal(e.endpoint.previousSecretsExpireTime, undefined);
        assert.deepEqual(await verifiesUnder("c", "d", "e"), { ok: ["e"], signatures: 1 });

        // Generated when not given; at most four earlier secrets sign.
        const generated = await rotate(undefined);
        assert.match(generated.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
        for (const s of ["f", "g", "h", "i", "j"]) await rotate(s);
        assert.deepEqual(await verifiesUnder("e", "f", "g", "h", "i", "j"), { ok: ["f", "g", "h", "i", "j"], signatures: 5 });

        // Bad input changes nothing.
        const code = async (p: Promise<unknown>) => p.then(() => "ok", (err: unknown) => `${Code[ConnectError.from(err).code]}: ${ConnectError.from(err).rawMessage}`);
        assert.match(await code(rotate("j")), /^InvalidArgument: secret: is the endpoint's current secret/);
        assert.equal(await code(hooks.rotateSecret(create(RotateWebhookSecretRequestSchema, { endpointId: "whe_nope" }))), 'NotFound: endpoint_id: webhook endpoint "whe_nope" not found');
        assert.deepEqual(await verifiesUnder("j"), { ok: ["j"], signatures: 5 });
      } finally {
        await dispatcher.stop();
      }
    });
  });
}
