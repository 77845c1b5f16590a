import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { redactGrpcJsMessage } from "../../src/transport/grpc-server.js";
import { startTestServer } from "../helpers/server-process.js";

describe("grpc-js's own log lines", () => {
  test("a metadata entry grpc-js refuses is logged without its value", () => {
    const line =
      'Failed to add metadata entry authorization: Bearer \twdn_k_s3cret. Metadata string value "Bearer \twdn_k_s3cret" contains illegal characters. For more information see https://github.com/grpc/grpc-node/issues/1173';
    const out = redactGrpcJsMessage(line);
    assert.ok(!out.includes("s3cret"), out);
    assert.match(out, /^Failed to add metadata entry authorization: \*\*\*/);
    assert.equal(redactGrpcJsMessage("Server bind failed: EADDRINUSE"), "Server bind failed: EADDRINUSE", "other lines pass as they are");
  });

  test("an API key in a header value grpc-js refuses (a tab in it, from any client) never lands in the server's log", async () => {
    const lines: string[] = [];
    const server = await startTestServer({ requireAuth: true, logger: createLogger("info", { write: (s: string) => void lines.push(s) }) });
    try {
      const { secret } = await createApiKeys({ db: server.store.db }).create({ role: "admin" });
      // Not through our client, which trims: a raw HTTP/2 gRPC call, as another language's client might send it.
      const sessions = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.grpcPort}` }));
      await sessions.listSessions({}, { headers: { authorization: `Bearer \t${secret}` } }).catch(() => undefined);
      assert.ok(lines.some((l) => l.includes("Failed to add metadata entry authorization")), "grpc-js logged the refused entry");
      const leaked = lines.filter((l) => l.includes(secret));
      assert.equal(leaked.length, 0, `${leaked.length} log line(s) hold the API key`);
    } finally {
      await server.close();
    }
  });
});
