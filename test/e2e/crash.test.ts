import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import type { Database } from "../../src/store/database.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPgliteDatabase } from "../../src/store/pglite-database.js";
import { DRIVERS } from "../helpers/databases.js";
import { USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent, assertNoStaleHolds } from "../helpers/ledger.js";
import { createStoreLocation, grpcClient, startServerProcess } from "../helpers/server-process.js";

const HOLD_TTL_MS = 1500;

for (const driver of DRIVERS) {
  describe(`crash on ${driver}`, () => {
    test("SIGKILL under load, restart: the ledger balances and no hold outlives its TTL", async () => {
      const { location, drop } = await createStoreLocation(driver);
      try {
        let server = await startServerProcess(location);
        const sessions = createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" }));
        const { session } = await sessions.createSession(
          create(CreateSessionRequestSchema, {
            agentId: "crash-agent",
            policy: { currencyCode: "USD", lifetime: { maxValueMicros: USD(500) }, holdTtl: durationFromMs(HOLD_TTL_MS) },
            expiration: { case: "ttl", value: durationFromMs(3_600_000) },
          }),
        );
        const id = session!.sessionId;
        // Load: authorize, capture half of what was held, check; stop at the first failure (the kill).
        const clients = Array.from({ length: 4 }, (_, i) => grpcClient(PolicyService, server.grpcAddress, i));
        let acknowledged = 0n;
        let stop = false;
        const worker = async (w: number) => {
          const c = clients[w % 4]!;
          for (let i = 0; !stop; i++) {
            try {
              const action = { type: "payment", amount: { currencyCode: "USD", amountMicros: USD(1) }, merchant: "m" };
              if (i % 3 === 2) {
                const r = await c.check({ sessionId: id, action });
                if (r.decision.outcome === Outcome.ALLOW) acknowledged += USD(1);
              } else {
                const a = await c.authorize({ sessionId: id, action });
                if (a.decision.outcome === Outcome.ALLOW && i % 3 === 0) {
                  await c.capture({ sessionId: id, authorizationId: a.authorizationId, amount: { currencyCode: "USD", amountMicros: USD(1) / 2n } });
                  acknowledged += USD(1) / 2n;
                }
              }
            } catch {
              return;
            }
          }
        };
        const load = Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
        await sleep(1500);
        await server.kill();
        stop = true;
        await load;
        for (const c of clients) c.close();
        assert.ok(acknowledged > 0n, "the load made progress before the kill");

        server = await startServerProcess(location);
        // Holds placed before the kill expire within TTL plus a sweep.
        const deadline = Date.now() + HOLD_TTL_MS + 5000;
        let s = (await createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" })).getSession({ sessionId: id })).session!;
        while (s.usage!.valueHeldMicros > 0n && Date.now() < deadline) {
          await sleep(100);
          s = (await createClient(SessionService, createConnectTransport({ baseUrl: server.httpUrl, httpVersion: "1.1" })).getSession({ sessionId: id })).session!;
        }
        assert.equal(s.usage!.valueHeldMicros, 0n, "holds from before the crash were released");
        // Everything acknowledged is committed; nothing beyond the limit.
        assert.ok(s.usage!.valueCommittedMicros >= acknowledged, `committed ${s.usage!.valueCommittedMicros} < acknowledged ${acknowledged}`);
        assert.ok(s.usage!.valueCommittedMicros <= USD(500));
        assert.equal(await server.stop(), 0);

        const db: Database = "dataDir" in location ? await createPgliteDatabase(location.dataDir) : createPgDatabase({ connectionString: location.databaseUrl });
        try {
          await assertLedgerConsistent(db);
          await assertNoStaleHolds(db, Date.now());
        } finally {
          await db.close();
        }
      } finally {
        await drop();
      }
    });
  });
}
