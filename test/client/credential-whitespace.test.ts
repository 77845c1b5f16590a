import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { createWardenClient } from "../../src/client/index.js";
import { MalformedCredentialError } from "../../src/client/create-warden-client.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { startTestServer } from "../helpers/server-process.js";

describe("a credential with surrounding whitespace, against a real server", () => {
  let server: RunningServer;
  let secret: string;
  before(async () => {
    server = await startTestServer({ requireAuth: true });
    secret = (await createApiKeys({ db: server.store.db }).create({ role: "admin" })).secret;
  });
  after(async () => {
    await server?.close();
  });

  // Surrounding whitespace is allowed (a file's trailing newline, say). A
  // leading line break inside "Bearer <credential>" would fail Headers.set
  // on every call, with a TypeError that repeats the header, secret and all.
  for (const protocol of ["connect", "grpc-web", "grpc"] as const) {
    test(`${protocol}: a credential with a leading line break either works or is refused at once, and never leaks the secret`, async () => {
      const baseUrl = protocol === "grpc" ? `http://127.0.0.1:${server.grpcPort}` : `http://127.0.0.1:${server.httpPort}`;
      for (const credential of [`\n${secret}`, `\r\n${secret}`]) {
        let client: ReturnType<typeof createWardenClient>;
        try {
          client = createWardenClient({ baseUrl, protocol, credential });
        } catch (e) {
          // Refusing it up front, as MalformedCredentialError without the secret, would be fine too.
          assert.ok(e instanceof MalformedCredentialError, String(e));
          assert.ok(!e.message.includes(secret));
          continue;
        }
        try {
          await client.sessions.listSessions({});
        } catch (e) {
          const text = `${String(e)} ${(e as Error).stack ?? ""}`;
          assert.ok(!text.includes(secret), `the call failed with a ${(e as Error).name} whose message repeats the whole header, secret included`);
          assert.fail(`a credential the client accepted failed on the call (${(e as Error).name})`);
        }
      }
    });
  }

  // A leading tab is surrounding whitespace too. Connect and gRPC-Web would
  // accept "Bearer \t<key>", but the gRPC listener (grpc-js) drops a
  // metadata value holding a tab: the same client would be UNAUTHENTICATED
  // over gRPC only.
  test("grpc: a credential with a leading tab authenticates on the gRPC listener as it does on Connect and gRPC-Web", async () => {
    const outcomes: Record<string, string> = {};
    for (const protocol of ["connect", "grpc-web", "grpc"] as const) {
      const baseUrl = protocol === "grpc" ? `http://127.0.0.1:${server.grpcPort}` : `http://127.0.0.1:${server.httpPort}`;
      const client = createWardenClient({ baseUrl, protocol, credential: `\t${secret}` });
      try {
        await client.sessions.listSessions({});
        outcomes[protocol] = "ok";
      } catch (e) {
        const c = ConnectError.from(e);
        outcomes[protocol] = `${Code[c.code]}: ${c.rawMessage}`;
      }
    }
    assert.deepEqual(outcomes, { connect: "ok", "grpc-web": "ok", grpc: "ok" });
  });
});
