import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createServer, connect, type Server, type Socket } from "node:net";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import type { RunningSidecar } from "../../src/sidecar/start-sidecar.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { startTestServer, startTestSidecar } from "../helpers/server-process.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A TCP proxy that can go silent: connections stay open but nothing is
 * forwarded either way (a partitioned network, a hung control plane).
 */
function createSilenceableProxy(targetPort: number) {
  let silent = false;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => undefined);
    const upstream = connect(targetPort, "127.0.0.1");
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    upstream.on("error", () => undefined);
    client.on("data", (d) => {
      if (!silent) upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (!silent) client.write(d);
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  return {
    listen: () => new Promise<number>((r) => server.listen(0, "127.0.0.1", () => r((server.address() as { port: number }).port))),
    silence: () => {
      silent = true;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

const BOUND_MS = 2_000;

describe("sidecar: the staleness bound", () => {
  let cp: RunningServer;
  let sc: RunningSidecar;
  let proxy: ReturnType<typeof createSilenceableProxy>;
  let admin: Client<typeof SessionService>;

  before(async () => {
    cp = await startTestServer();
    admin = createClient(SessionService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${cp.grpcPort}` }));
    proxy = createSilenceableProxy(cp.grpcPort);
    const port = await proxy.listen();
    sc = await startTestSidecar(`http://127.0.0.1:${port}`, "stale-agent", { stalenessBoundMs: BOUND_MS, leaseTtlMs: 30_000 });
  });
  after(async () => {
    await proxy?.close();
    await sc?.close(200);
    await cp?.close(0);
  });

  test("a keyed call whose claim waits out the staleness bound is denied, not allowed from the lease", async () => {
    const policy = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${sc.grpcPort}` }));
    const sessionId = (await admin.createSession(sessionRequest("stale-agent", { daily: { maxValueMicros: USD(1000) } }))).session!.sessionId;
    // A lease in hand: later calls are decided in process.
    assert.equal((await policy.check({ sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    assert.ok(sc.engine.leaseCount > 0, "the sidecar holds a lease");

    // The control plane goes silent (a partition: no RST, nothing answers).
    proxy.silence();
    const end = Date.now() + 5_000;
    while (sc.sync.staleness() < BOUND_MS - 700 && Date.now() < end) await sleep(10);
    assert.ok(sc.sync.fresh(), "still inside the bound when the call arrives");

    const res = await policy.authorize({ sessionId, action: payment(USD(5)), idempotencyKey: "pay-after-partition" });
    const stalenessAtAnswer = sc.sync.staleness();
    assert.ok(stalenessAtAnswer > BOUND_MS, `precondition: answered ${stalenessAtAnswer} ms after the last contact`);
    assert.deepEqual(
      { outcome: Outcome[res.decision!.outcome], reasons: res.decision!.reasons.map((r) => Reason[r]) },
      { outcome: "DENY", reasons: ["CONTROL_PLANE_UNAVAILABLE"] },
      `spending allowed from the lease ${stalenessAtAnswer} ms after the control plane was last heard from (bound ${BOUND_MS} ms)`,
    );
  });
});
