import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { base64url, calculateJwkThumbprint, exportJWK, generateKeyPair, type JSONWebKeySet, SignJWT } from "jose";
import { createAuth, type Auth } from "../../src/auth/create-auth.js";
import { createSessionTokenIssuer, createSessionTokenVerifier, SESSION_TOKEN_TYPE } from "../../src/auth/session-tokens.js";
import { withSessionTokenAuth } from "../../src/auth/with-session-token-auth.js";
import { withBearer } from "../../src/client/create-warden-client.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { ApprovalService, type WatchApprovalRequest, WatchApprovalResponseSchema } from "../../src/gen/warden/v1/approval_service_pb.js";
import { createPolicyService } from "../../src/services/policy-service.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { mountService } from "../../src/transport/grpc-server.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { connectTransports, startStacks } from "../transport/harness.js";

const DAY = 24 * 60 * 60 * 1000;

async function refused(p: Promise<unknown>, code: Code, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    const err = ConnectError.from(e);
    assert.equal(Code[err.code], Code[code], err.rawMessage);
    assert.match(err.rawMessage, message);
    return true;
  });
}

for (const driver of DRIVERS) {
  describe(`session tokens on ${driver}`, () => {
    let t: TestDatabase;
    let clock: ManualClock;
    let auth: Auth;
    let fetches: number;
    const verifier = (o: { cooldownMs?: number; maxAgeMs?: number; fetchJwks?: () => Promise<JSONWebKeySet> } = {}) =>
      createSessionTokenVerifier({
        fetchJwks:
          o.fetchJwks ??
          (() => {
            fetches++;
            return auth.jwks();
          }),
        now: clock.now,
        refetchCooldownMs: o.cooldownMs ?? 5_000,
        maxAgeMs: o.maxAgeMs,
      });
    /** A verifier on a 1 s refetch cooldown and a 60 s max age, and how many key-set fetches it made. */
    const counted = (fetchJwks: () => Promise<JSONWebKeySet>) => {
      const c = {
        fetched: 0,
        v: verifier({
          cooldownMs: 1_000,
          maxAgeMs: 60_000,
          fetchJwks: () => {
            c.fetched++;
            return fetchJwks();
          },
        }),
      };
      return c;
    };
    /**
     * A well-formed token under a key id no key set has: verifying it waits
     * for the key set fetch in flight (or starts one), then fails.
     */
    const unknownKid = async (): Promise<string> => {
      const stranger = await generateKeyPair("EdDSA", { crv: "Ed25519" });
      return new SignJWT({ agent_id: "x" })
        .setProtectedHeader({ alg: "EdDSA", kid: "no-such-kid", typ: SESSION_TOKEN_TYPE })
        .setIssuer("warden")
        .setSubject("s-x")
        .setIssuedAt()
        .setExpirationTime("1h")
        .sign(stranger.privateKey);
    };
    before(async () => {
      t = await openTestDatabase(driver);
      clock = new ManualClock();
      auth = await createAuth({ db: t.db, now: clock.now, tokenTtlMs: 30 * DAY });
    });
    after(() => t.drop());

    test("a token names its session and agent, and expires after its TTL", async () => {
      fetches = 0;
      const v = verifier();
      const { token, expireTime } = await auth.issuer.issue({ sessionId: "s-1", agentId: "shopper-1" });
      assert.equal(expireTime, Math.floor(clock.ms / 1000) * 1000 + 30 * DAY);
      const claims = await v.verify(token);
      assert.equal(claims.sessionId, "s-1");
      assert.equal(claims.agentId, "shopper-1");
      assert.equal(claims.expiresAt, expireTime);
      // Verified offline from then on: one fetch of the key set.
      await v.verify(token);
      assert.equal(fetches, 1);

      clock.advance(30 * DAY - 1000);
      await v.verify(token);
      clock.advance(2000);
      await refused(v.verify(token), Code.Unauthenticated, /^token expired$/);
    });

    test("forged, tampered, unsigned and mistyped tokens are refused", async () => {
      const v = verifier();
      const { token } = await auth.issuer.issue({ sessionId: "s-2", agentId: "shopper-1" });
      const [header, payload, signature] = token.split(".") as [string, string, string];
      const kid = (await auth.signingKeys.active()).kid;
      const claims = JSON.parse(Buffer.from(payload, "base64url").toString()) as Record<string, unknown>;

      // Signed by another Ed25519 key that claims the real key's id.
      const other = await generateKeyPair("EdDSA", { crv: "Ed25519" });
      const forged = await new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid, typ: SESSION_TOKEN_TYPE }).sign(other.privateKey);
      await refused(v.verify(forged), Code.Unauthenticated, /^invalid token$/);

      // The real signature over a changed payload (another session).
      const tampered = `${header}.${base64url.encode(JSON.stringify({ ...claims, sub: "s-other" }))}.${signature}`;
      await refused(v.verify(tampered), Code.Unauthenticated, /^invalid token$/);

      // alg "none", with and without the signature part.
      const none = base64url.encode(JSON.stringify({ alg: "none", kid, typ: SESSION_TOKEN_TYPE }));
      await refused(v.verify(`${none}.${payload}.`), Code.Unauthenticated, /^invalid token$/);
      await refused(v.verify(`${none}.${payload}.${signature}`), Code.Unauthenticated, /^invalid token$/);

      // HMAC keyed with the public key (the classic RS/HS confusion).
      const publicX = Buffer.from((await auth.jwks()).keys[0]!.x!, "base64url");
      const hmac = await new SignJWT(claims).setProtectedHeader({ alg: "HS256", kid, typ: SESSION_TOKEN_TYPE }).sign(publicX);
      await refused(v.verify(hmac), Code.Unauthenticated, /^invalid token$/);

      // A JWT of another type signed by the real key is not a session token.
      const signingKey = await auth.signingKeys.active();
      const otherType = await new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid, typ: "JWT" }).sign(signingKey.privateKey);
      await refused(v.verify(otherType), Code.Unauthenticated, /^invalid token$/);

      for (const junk of ["", "abc", "a.b.c", `${header}.${payload}`]) await refused(v.verify(junk), Code.Unauthenticated, /^invalid token$/);
      // The real one still passes.
      assert.equal((await v.verify(token)).sessionId, "s-2");
    });

    test("a rotated-in key is fetched once; made-up key ids cannot make the verifier hammer the store", async () => {
      fetches = 0;
      const v = verifier({ cooldownMs: 5_000 });
      const before = await auth.issuer.issue({ sessionId: "s-3", agentId: "shopper-1" });
      await v.verify(before.token);
      assert.equal(fetches, 1);

      // Tokens with unknown kids inside the cooldown of the last fetch fetch nothing.
      const stranger = await generateKeyPair("EdDSA", { crv: "Ed25519" });
      const strangerKid = await calculateJwkThumbprint(await exportJWK(stranger.publicKey));
      for (let i = 0; i < 5; i++) {
        const bogus = await new SignJWT({ agent_id: "x" })
          .setProtectedHeader({ alg: "EdDSA", kid: `${strangerKid}${i}`, typ: SESSION_TOKEN_TYPE })
          .setIssuer("warden")
          .setSubject("s-3")
          .setIssuedAt()
          .setExpirationTime("1h")
          .sign(stranger.privateKey);
        await refused(v.verify(bogus), Code.Unauthenticated, /^invalid token$/);
      }
      assert.equal(fetches, 1);

      clock.advance(5_000);
      await auth.signingKeys.rotate();
      const issuer = createSessionTokenIssuer({ signingKeys: auth.signingKeys, now: clock.now });
      const after = await issuer.issue({ sessionId: "s-3", agentId: "shopper-1" });
      assert.notEqual(after.token.split(".")[0], before.token.split(".")[0]);
      assert.equal((await v.verify(after.token)).sessionId, "s-3");
      assert.equal(fetches, 2);
      // The retired key's tokens keep working until they expire.
      assert.equal((await v.verify(before.token)).sessionId, "s-3");
      assert.equal(fetches, 2);
    });

    test("a refresh that finds the key set unchanged keeps verified tokens recognised without checking them again", async () => {
      const c = counted(() => auth.jwks());
      const { token } = await auth.issuer.issue({ sessionId: "s-refresh", agentId: "shopper-1" });
      const first = await c.v.verify(token);
      assert.equal(c.fetched, 1);
      clock.advance(60_000);
      // Served from the cache (the same claims object), and the stale key
      // set is fetched again meanwhile; a token under an unknown key id
      // waits for that fetch rather than starting another.
      assert.equal(await c.v.verify(token), first);
      assert.equal(c.fetched, 2);
      await refused(c.v.verify(await unknownKid()), Code.Unauthenticated, /^invalid token$/);
      assert.equal(c.fetched, 2);
      // The key is unchanged, so the token is still the one verified: no
      // second signature check (which would return new claims).
      assert.equal(await c.v.verify(token), first);
    });

    test("after a refresh, a key withdrawn from the set, or replaced under its key id, no longer vouches for tokens it verified", async () => {
      const jwks = await auth.jwks();
      const other = await exportJWK((await generateKeyPair("EdDSA", { crv: "Ed25519" })).publicKey);
      const { token } = await auth.issuer.issue({ sessionId: "s-withdrawn", agentId: "shopper-1" });
      const kid = JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()).kid as string;
      for (const [what, later] of [
        ["withdrawn", { keys: jwks.keys.filter((k) => k.kid !== kid) }],
        ["replaced", { keys: jwks.keys.map((k) => (k.kid === kid ? { ...other, kid, alg: "EdDSA" } : k)) }],
      ] as const) {
        let served: JSONWebKeySet = jwks;
        const c = counted(async () => structuredClone(served));
        assert.equal((await c.v.verify(token)).sessionId, "s-withdrawn", what);
        served = later;
        clock.advance(60_000);
        // Still cached, but the key set is stale: this call starts its
        // refresh, even though every token this agent sends is cached.
        await c.v.verify(token);
        assert.equal(c.fetched, 2, what);
        await refused(c.v.verify(await unknownKid()), Code.Unauthenticated, /^invalid token$/);
        await refused(c.v.verify(token), Code.Unauthenticated, /^invalid token$/);
      }
    });

    test("while the key set cannot be fetched, cached tokens past its max age cause one fetch per cooldown, not one per call", async () => {
      let up = true;
      const c = counted(async () => {
        if (!up) throw new Error("control plane unreachable");
        return auth.jwks();
      });
      const { token } = await auth.issuer.issue({ sessionId: "s-down", agentId: "shopper-1" });
      await c.v.verify(token);
      up = false;
      clock.advance(60_000);
      for (let i = 0; i < 10; i++) {
        assert.equal((await c.v.verify(token)).sessionId, "s-down");
        // Each failed fetch is over before the next call.
        await new Promise((r) => setImmediate(r));
      }
      assert.equal(c.fetched, 2);
      clock.advance(1_000);
      await c.v.verify(token);
      assert.equal(c.fetched, 3);
    });

    test("a token a lagging replica signs with the just-retired key verifies until its own expiry, on a replica that loads the key set then", async () => {
      // A replica re-reads the active key once a minute: after a rotation
      // elsewhere it signs with the retired key for up to that long.
      const fresh = await openTestDatabase(driver);
      try {
        const at = new ManualClock();
        const ttl = DAY;
        const rotating = await createAuth({ db: fresh.db, now: at.now, tokenTtlMs: ttl });
        const lagging = await createAuth({ db: fresh.db, now: at.now, tokenTtlMs: ttl });
        const retiredKid = (await lagging.signingKeys.active()).kid;
        await rotating.signingKeys.rotate();
        at.advance(59_999); // the last moment the lagging replica still signs with it
        const { token, expireTime } = await lagging.issuer.issue({ sessionId: "s-lagging", agentId: "shopper-1" });
        assert.equal(JSON.parse(Buffer.from(token.split(".")[0]!, "base64url").toString()).kid, retiredKid, "signed with the retired key");
        at.ms = expireTime - 1;
        const late = await createAuth({ db: fresh.db, now: at.now, tokenTtlMs: ttl });
        assert.equal((await late.verifier.verify(token)).sessionId, "s-lagging");
        at.ms = expireTime;
        await refused(late.verifier.verify(token), Code.Unauthenticated, /^token expired$/);
      } finally {
        await fresh.drop();
      }
    });

    test("a sidecar's PolicyService behind withSessionTokenAuth takes session tokens only", async () => {
      const store = createWardenStore({ db: t.db, now: clock.now });
      const stacks = await startStacks([mountService(PolicyService, withSessionTokenAuth(PolicyService, createPolicyService(store), { verifier: verifier() }))]);
      try {
        const a = await store.createSession(sessionRequest("sidecar-agent", {}), new Uint8Array(0));
        const b = await store.createSession(sessionRequest("sidecar-agent", {}), new Uint8Array(0));
        const tokenA = (await auth.issuer.issue(a)).token;
        const tokenB = (await auth.issuer.issue(b)).token;
        const { secret } = await auth.apiKeys.create({ role: "admin" });
        for (const { name, transport } of connectTransports(stacks)) {
          // Sends "authorization: Bearer <credential>" when there is one.
          const as = (credential?: string) => createClient(PolicyService, withBearer(transport, credential));
          const check = { sessionId: a.sessionId, action: payment(USD(1)) };
          assert.equal((await as(tokenA).check(check)).decision?.outcome, Outcome.ALLOW, name);
          await refused(as(tokenB).check(check), Code.Unauthenticated, /^token is for another session$/);
          await refused(as().check(check), Code.Unauthenticated, /^missing credentials: send authorization: Bearer <session token>$/);
          await refused(as(secret).check(check), Code.Unauthenticated, /^a session token is required here, not an API key$/);
        }
      } finally {
        await stacks.close();
      }
    });

    test("a stream opened with a session token ends UNAUTHENTICATED at its first message past the token's expiry", async () => {
      // A watch that sends a message each time the test says so.
      let send!: () => void;
      const impl = {
        async *watchApproval(req: WatchApprovalRequest) {
          for (;;) {
            await new Promise<void>((r) => (send = r));
            yield create(WatchApprovalResponseSchema, { approval: { approvalId: req.approvalId, sessionId: req.sessionId } });
          }
        },
      };
      const guarded = withSessionTokenAuth(ApprovalService, impl, { verifier: verifier(), tokenMethods: ["watchApproval"], now: clock.now });
      const stacks = await startStacks([mountService(ApprovalService, guarded)]);
      try {
        const { token, expireTime } = await auth.issuer.issue({ sessionId: "s-watch", agentId: "shopper-1" });
        for (const { name, transport } of connectTransports(stacks)) {
          const start = clock.ms;
          const stream = createClient(ApprovalService, withBearer(transport, token)).watchApproval({ sessionId: "s-watch", approvalId: `apr_${"a".repeat(26)}` });
          const it = stream[Symbol.asyncIterator]();
          const next = async () => {
            const n = it.next();
            while (send === undefined) await new Promise((r) => setImmediate(r));
            await new Promise((r) => setTimeout(r, 20));
            send();
            return n;
          };
          assert.equal((await next()).value?.approval?.sessionId, "s-watch", name);
          clock.ms = expireTime;
          await refused(next(), Code.Unauthenticated, /^token expired$/);
          clock.ms = start;
        }
      } finally {
        await stacks.close();
      }
    });

    test("known keys verify offline when the key set cannot be fetched; unknown ones are UNAVAILABLE", async () => {
      let up = true;
      const v = verifier({
        cooldownMs: 0,
        fetchJwks: async () => {
          if (!up) throw new Error("control plane unreachable");
          return auth.jwks();
        },
      });
      const { token } = await auth.issuer.issue({ sessionId: "s-4", agentId: "shopper-1" });
      await v.verify(token);
      up = false;
      assert.equal((await v.verify(token)).sessionId, "s-4");
      await auth.signingKeys.rotate();
      const fresh = await createSessionTokenIssuer({ signingKeys: auth.signingKeys, now: clock.now }).issue({ sessionId: "s-4", agentId: "shopper-1" });
      await refused(v.verify(fresh.token), Code.Unavailable, /signing keys are unavailable/);
      up = true;
      assert.equal((await v.verify(fresh.token)).sessionId, "s-4");
    });
  });
}
