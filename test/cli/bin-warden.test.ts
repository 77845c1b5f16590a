import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";

const BIN = fileURLToPath(new URL("../../bin/warden.js", import.meta.url));

interface Exit {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs bin/warden.js as a child process with the Node that runs the tests. */
async function warden(args: string[], env: Record<string, string> = {}): Promise<Exit> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout: string; stderr: string; killed?: boolean };
    assert.ok(!e.killed, "the CLI must exit on its own");
    return { code: e.code ?? -1, stdout: e.stdout, stderr: e.stderr };
  }
}

// A plain Connect HTTP/1.1 server with stand-in handlers: it tests the
// launcher, the real transport and the process exit codes, not Warden's
// server (the end-to-end tests against `warden serve` cover that).
describe("bin/warden.js", () => {
  let server: Server;
  let url: string;
  before(async () => {
    const handler = connectNodeAdapter({
      routes(router) {
        router.service(SessionService, {
          getSession(req) {
            if (req.sessionId !== "ses-1") throw new ConnectError(`session ${req.sessionId} not found`, Code.NotFound);
            return { session: { sessionId: "ses-1", agentId: "a", policy: { currencyCode: "GBP" } } };
          },
        });
        router.service(PolicyService, {
          check(req) {
            const micros = req.action?.amount?.amountMicros ?? 0n;
            return micros > 100_000_000n
              ? { decision: { outcome: Outcome.DENY, reasons: [Reason.LIMIT_PER_TRANSACTION] }, actionId: "act_d" }
              : { decision: { outcome: Outcome.ALLOW }, actionId: `act_${req.action?.amount?.currencyCode}` };
          },
        });
      },
    });
    server = createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  test("ALLOW exits 0, and the amount is in the session's currency", async () => {
    const r = await warden(["check", "ses-1", "--amount", "5"], { WARDEN_SERVER: url });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^outcome +ALLOW\naction +act_GBP\n$/);
    assert.equal(r.stderr, "");
  });

  test("DENY exits 2 with the answer on stdout", async () => {
    const r = await warden(["check", "ses-1", "--amount", "150", "--server", url]);
    assert.equal(r.code, 2);
    assert.match(r.stdout, /^outcome +DENY\nreasons +LIMIT_PER_TRANSACTION\n/);
    assert.equal(r.stderr, "");
  });

  test("a server error exits 1 with one line on stderr", async () => {
    const r = await warden(["sessions", "get", "nope", "--server", url]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "warden: not_found: session nope not found\n");
    assert.equal(r.stdout, "");
  });

  test("a bad flag exits 1 naming the flag", async () => {
    const r = await warden(["sessions", "create", "--agent", "a", "--max-per-day", "abc"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^warden: --max-per-day: "abc" is not a decimal amount/);
  });
});
