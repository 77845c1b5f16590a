import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { AUTHENTICATED_KEY_TTL_MS, createApiKeys, parseApiKey, type ApiKeys } from "../../src/auth/api-keys.js";
import { createAuth } from "../../src/auth/create-auth.js";
import { ACTIVE_CACHE_MS, createSigningKeys } from "../../src/auth/signing-keys.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock } from "../helpers/fixtures.js";

async function rejectsWith(p: Promise<unknown>, code: Code, message: RegExp): Promise<ConnectError> {
  let caught: ConnectError | undefined;
  await assert.rejects(p, (e: unknown) => {
    caught = ConnectError.from(e);
    assert.equal(Code[caught.code], Code[code], caught.rawMessage);
    assert.match(caught.rawMessage, message);
    return true;
  });
  return caught!;
}

for (const driver of DRIVERS) {
  describe(`API keys and signing keys on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let keys: ApiKeys;
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      keys = createApiKeys({ db: t.db, now: clock.now });
    });
    after(() => t.drop());

    test("a created key authenticates as its role; only a hash of its secret is stored", async () => {
      const { key, secret } = await keys.create({ role: "auditor", description: "nightly audit" });
      assert.match(secret, /^wdn_key_[0-9a-z]{26}_[A-Za-z0-9_-]{43}$/);
      assert.equal(parseApiKey(secret)?.keyId, key.keyId);
      assert.deepEqual(await keys.authenticate(secret), { keyId: key.keyId, role: "auditor", agentId: undefined, via: "api-key" });
      const { rows } = await t.db.query<Record<string, unknown>>("SELECT * FROM api_keys WHERE key_id = $1", [key.keyId]);
      const stored = JSON.stringify(rows[0], (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v));
      assert.ok(!stored.includes(parseApiKey(secret)!.secret), "the secret is not stored");
    });

    test("agent keys carry their agent; other roles cannot have one", async () => {
      const { secret } = await keys.create({ role: "agent", agentId: "shopper-1" });
      assert.equal((await keys.authenticate(secret)).agentId, "shopper-1");
      await rejectsWith(keys.create({ role: "agent" }), Code.InvalidArgument, /agent_id/);
      await rejectsWith(keys.create({ role: "admin", agentId: "shopper-1" }), Code.InvalidArgument, /agent_id/);
    });

    test("malformed, unknown, wrong-secret and revoked keys are refused alike, without echoing the key", async () => {
      const { key, secret } = await keys.create({ role: "admin" });
      const parsed = parseApiKey(secret)!;
      const wrongSecret = `wdn_${parsed.keyId}_${"A".repeat(43)}`;
      const unknownId = `wdn_key_${"0".repeat(26)}_${parsed.secret}`;
      for (const bad of ["", "Bearer x", "wdn_short", wrongSecret, unknownId, `${secret}x`]) {
        const err = await rejectsWith(keys.authenticate(bad), Code.Unauthenticated, /^invalid API key$/);
        assert.ok(bad === "" || !err.rawMessage.includes(bad));
      }
      const revoked = await keys.revoke(key.keyId);
      assert.equal(revoked.revokeTime, clock.ms);
      await rejectsWith(keys.authenticate(secret), Code.Unauthenticated, /^invalid API key$/);
      // Revoking again keeps the first revoke time.
      clock.advance(5000);
      assert.equal((await keys.revoke(key.keyId)).revokeTime, revoked.revokeTime);
      await rejectsWith(keys.revoke(`key_${"1".repeat(26)}`), Code.NotFound, /key_id/);
    });

    test("a key that authenticated is read again after a second; revoked here it stops at once, elsewhere within that second", async () => {
      const { key, secret } = await keys.create({ role: "agent", agentId: "agent-memo" });
      const principal = await keys.authenticate(secret);
      // Another replica (or `warden keys revoke`): its own instance on the same store.
      const elsewhere = createApiKeys({ db: t.db, now: clock.now });
      await elsewhere.revoke(key.keyId);
      assert.deepEqual(await keys.authenticate(secret), principal, "believed for up to AUTHENTICATED_KEY_TTL_MS");
      // A wrong secret under the same id is still read, and refused.
      await rejectsWith(keys.authenticate(`wdn_${key.keyId}_${"B".repeat(43)}`), Code.Unauthenticated, /^invalid API key$/);
      clock.advance(AUTHENTICATED_KEY_TTL_MS);
      await rejectsWith(keys.authenticate(secret), Code.Unauthenticated, /^invalid API key$/);

      const second = await keys.create({ role: "admin" });
      await keys.authenticate(second.secret);
      await keys.revoke(second.key.keyId);
      await rejectsWith(keys.authenticate(second.secret), Code.Unauthenticated, /^invalid API key$/);
    });

    test("a revocation while the key's row is being read is not undone by that read's memo", async () => {
      // The read of the key row is held until the revocation has run here.
      let read!: () => void;
      const readDone = new Promise<void>((r) => (read = r));
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const db = new Proxy(t.db, {
        get(target, prop, receiver) {
          if (prop !== "query") return Reflect.get(target, prop, receiver);
          return async (sql: string, params?: unknown[]) => {
            const res = await target.query(sql, params);
            if (sql.startsWith("SELECT key_id, secret_sha256")) {
              read();
              await gate;
            }
            return res;
          };
        },
      });
      const racing = createApiKeys({ db, now: clock.now });
      const { key, secret } = await racing.create({ role: "auditor" });
      const first = racing.authenticate(secret);
      await readDone;
      await racing.revoke(key.keyId);
      release();
      await first; // read before the revocation: answered as read
      await rejectsWith(racing.authenticate(secret), Code.Unauthenticated, /^invalid API key$/);
    });

    test("list pages newest first and hides revoked keys unless asked", async () => {
      const fresh = await openTestDatabase(driver);
      try {
        const k = createApiKeys({ db: fresh.db, now: clock.now });
        const made: string[] = [];
        for (let i = 0; i < 5; i++) {
          clock.advance(1000);
          made.push((await k.create({ role: "approver", description: `k${i}` })).key.keyId);
        }
        await k.revoke(made[0]!);
        const first = await k.list({ pageSize: 2 });
        assert.deepEqual(first.keys.map((x) => x.keyId), [made[4], made[3]]);
        const second = await k.list({ pageSize: 2, pageToken: first.nextPageToken });
        assert.deepEqual(second.keys.map((x) => x.keyId), [made[2], made[1]]);
        assert.equal(second.nextPageToken, "");
        const all = await k.list({ showRevoked: true });
        assert.equal(all.keys.length, 5);
        assert.ok(all.keys.at(-1)!.revokeTime !== undefined);
        await rejectsWith(k.list({ pageToken: "nonsense" }), Code.InvalidArgument, /page_token/);
      } finally {
        await fresh.drop();
      }
    });

    test("last_used_time is recorded, at most once a minute", async () => {
      const { key, secret } = await keys.create({ role: "admin" });
      const firstUse = clock.ms;
      await keys.authenticate(secret);
      const lastUsed = async () => {
        // The write is off the call path: poll until it lands.
        for (let i = 0; i < 100; i++) {
          const { keys: page } = await keys.list({ pageSize: 1000 });
          const found = page.find((x) => x.keyId === key.keyId)?.lastUsedTime;
          if (found !== undefined) return found;
          await new Promise((r) => setImmediate(r));
        }
        return undefined;
      };
      assert.equal(await lastUsed(), firstUse);
      clock.advance(10_000);
      await keys.authenticate(secret);
      assert.equal(await lastUsed(), firstUse);
    });

    test("replicas starting together share one signing key; rotation keeps the old key published", async () => {
      const fresh = await openTestDatabase(driver);
      try {
        const replicas = await Promise.all([1, 2, 3, 4].map(() => createAuth({ db: fresh.db, now: clock.now })));
        const kids = await Promise.all(replicas.map(async (a) => (await a.signingKeys.active()).kid));
        assert.equal(new Set(kids).size, 1);
        const jwks = await replicas[0]!.jwks();
        assert.equal(jwks.keys.length, 1);
        assert.equal(jwks.keys[0]!.kid, kids[0]);
        assert.equal(jwks.keys[0]!.crv, "Ed25519");
        assert.equal(jwks.keys[0]!.d, undefined, "no private part is published");

        const ttl = 60_000;
        const keys2 = createSigningKeys({ db: fresh.db, now: clock.now, retiredKeyLifetimeMs: ttl });
        const newKid = await keys2.rotate();
        assert.notEqual(newKid, kids[0]);
        assert.deepEqual((await keys2.jwks()).keys.map((k) => k.kid), [newKid, kids[0]]);
        // A replica that has not yet re-read the active key signs with the
        // old one for up to ACTIVE_CACHE_MS more: those tokens live a TTL too.
        clock.advance(ttl + ACTIVE_CACHE_MS - 1);
        assert.deepEqual((await keys2.jwks()).keys.map((k) => k.kid), [newKid, kids[0]]);
        // Once every token the old key signed has expired, it is withdrawn.
        clock.advance(1);
        assert.deepEqual((await keys2.jwks()).keys.map((k) => k.kid), [newKid]);
      } finally {
        await fresh.drop();
      }
    });
  });
}
