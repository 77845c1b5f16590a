import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, createServer, type Server, type Socket } from "node:net";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionStatus, PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import type { RunningSidecar } from "../../src/sidecar/start-sidecar.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { startTestSidecar, tempDataDir } from "../helpers/server-process.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const AGENT = "offline-capture-agent";
const BOUND_MS = 1_500;

/** A TCP proxy that can go silent: a partition (nothing forwarded, no RST). */
function silenceableProxy(targetPort: number) {
  let silent = false;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => undefined);
    }
    client.on("data", (d) => void (silent || upstream.write(d)));
    upstream.on("data", (d) => void (silent || client.write(d)));
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  return {
    listen: () => new Promise<number>((r) => server.listen(0, "127.0.0.1", () => r((server.address() as { port: number }).port))),
    silence: () => void (silent = true),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

test("past the staleness bound a Capture is refused UNAVAILABLE, as a Check is denied: the session may have been revoked unheard", async () => {
  const pgdb = await createPostgresDatabase();
  let cp: RunningServer | undefined;
  let sc: RunningSidecar | undefined;
  let proxy: ReturnType<typeof silenceableProxy> | undefined;
  try {
    cp = await startServer({ grpcAddress: "127.0.0.1:0", httpAddress: "127.0.0.1:0", dataDir: tempDataDir(), databaseUrl: pgdb.url, sweepIntervalMs: 60_000, logger: createLogger("silent") });
    const admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    const direct = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    proxy = silenceableProxy(cp.grpcPort);
    sc = await startTestSidecar(`http://127.0.0.1:${await proxy.listen()}`, AGENT, { stalenessBoundMs: BOUND_MS, leaseTtlMs: 30_000 });
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin.createSession(sessionRequest(AGENT, { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    const held = await policy.authorize({ sessionId, action: payment(USD(50)) });
    assert.equal(held.decision?.outcome, Outcome.ALLOW);
    const authorizationId = held.authorizationId;
    await sleep(300); // the hold reaches the store

    // A partition; meanwhile a person revokes the session.
    proxy.silence();
    await admin.revokeSession({ sessionId, reason: "compromised agent" });
    // What the system of record answers for that hold now:
    const inStore = await direct.capture({ sessionId, authorizationId, amount: { currencyCode: "USD", amountMicros: USD(1) } }).catch((e: unknown) => e);
    assert.ok(inStore instanceof Error && /has ended|voided/.test(inStore.message), `precondition: the store refuses the capture (${String(inStore)})`);

    const end = Date.now() + 10_000;
    while (sc.sync.fresh() && Date.now() < end) await sleep(50);
    await sleep(200);
    assert.ok(!sc.sync.fresh(), "precondition: past the staleness bound");
    const check = await policy.check({ sessionId, action: payment(USD(1)) });
    assert.deepEqual(check.decision?.reasons, [Reason.CONTROL_PLANE_UNAVAILABLE], "precondition: spending is denied past the bound");

    const capture = await policy.capture({ sessionId, authorizationId }).catch((e: unknown) => e);
    assert.ok(
      capture instanceof Error,
      `a capture of ${USD(50)} micros was answered CAPTURED ${sc.sync.staleness()} ms after the control plane was last heard from (bound ${BOUND_MS} ms), on a session revoked meanwhile`,
    );
    assert.equal(ConnectError.from(capture).code, Code.Unavailable);
    // Giving money back goes on.
    assert.equal((await policy.void({ sessionId, authorizationId })).authorization?.status, ActionStatus.VOIDED);
  } finally {
    await proxy?.close();
    await sc?.close(200);
    await cp?.close(0);
    await pgdb.drop();
  }
});
