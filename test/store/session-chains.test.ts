import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ForkSessionRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import type { Queryable } from "../../src/store/database.js";
import { SessionChains } from "../../src/store/session-chains.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, sessionRequest } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);

for (const driver of DRIVERS) {
  describe(`SessionChains on ${driver}`, () => {
    let t: TestDatabase;
    let store: WardenStore;
    /** The database, counting the statements sent through it. */
    let sent = 0;
    const counted: Queryable = {
      query: ((sql: string, params?: unknown[]) => {
        sent++;
        return t.db.query(sql, params);
      }) as Queryable["query"],
    };
    before(async () => {
      t = await openTestDatabase(driver);
      store = createWardenStore({ db: t.db, now: new ManualClock().now });
    });
    after(() => t.drop());

    test("a fork's chain is its parents and agent, in lock order, with their usage scopes; unknown sessions are left out", async () => {
      const parent = await store.createSession(sessionRequest("chain-agent-b", {}), NO_HASH);
      const fork = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: parent.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const grandchild = await store.forkSession(create(ForkSessionRequestSchema, { parentSessionId: fork.sessionId, policy: { currencyCode: "USD" } }), NO_HASH);
      const other = await store.createSession(sessionRequest("chain-agent-a", {}), NO_HASH);
      const chains = new SessionChains();
      const asked = [grandchild.sessionId, other.sessionId, "ses_00000000000000000000000000"];
      await chains.resolve(counted, asked);
      assert.deepEqual(chains.get(grandchild.sessionId), { agentId: "chain-agent-b", ancestorIds: [fork.sessionId, parent.sessionId] });
      assert.equal(chains.get(asked[2]!), undefined);
      const scopes = chains.scopesOf(asked);
      assert.deepEqual(scopes.sessionIds, [grandchild.sessionId, fork.sessionId, parent.sessionId, other.sessionId].sort());
      assert.deepEqual(scopes.agentIds, ["chain-agent-a", "chain-agent-b"]);
      assert.deepEqual(
        [...scopes.scopeKeys].sort(),
        [...scopes.sessionIds.map((id) => `s:${id}`), "a:chain-agent-a", "a:chain-agent-b"].sort(),
      );
    });

    test("a chain is read once; an unknown session is asked again, and found once it exists", async () => {
      const chains = new SessionChains();
      const s = await store.createSession(sessionRequest("chain-agent-c", {}), NO_HASH);
      const before = sent;
      await chains.resolve(counted, [s.sessionId]);
      await chains.resolve(counted, [s.sessionId]);
      assert.equal(sent - before, 1, "the second resolve is answered from the cache");
      const later = "ses_01kzzzzzzzzzzzzzzzzzzzzzzz";
      await chains.resolve(counted, [s.sessionId, later]);
      assert.equal(sent - before, 2, "a session not found is not cached as missing");
      assert.deepEqual(chains.scopesOf([later]).sessionIds, []);
      const created = await store.createSession(sessionRequest("chain-agent-c", {}, { sessionId: later }), NO_HASH);
      assert.equal(created.sessionId, later);
      await chains.resolve(counted, [later]);
      assert.deepEqual(chains.scopesOf([later]).sessionIds, [later]);
      chains.forget(later);
      await chains.resolve(counted, [later]);
      assert.equal(sent - before, 4, "a forgotten chain is read again");
    });
  });
}
