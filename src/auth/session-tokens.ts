import { LRUCache } from "lru-cache";
import { Code, ConnectError } from "@connectrpc/connect";
import { calculateJwkThumbprint, type CryptoKey, decodeProtectedHeader, errors, importJWK, type JSONWebKeySet, jwtVerify, SignJWT } from "jose";
import { SESSION_TOKEN_ALG, type SigningKeys } from "./signing-keys.js";

/** The default lifetime of a session token: 30 days. */
export const DEFAULT_SESSION_TOKEN_TTL_MS = 30 * 24 * 60 * 60 * 1000;

/** The default `iss` claim. */
export const DEFAULT_TOKEN_ISSUER = "warden";

/**
 * The `typ` header of session tokens (explicit typing, RFC 8725 §3.11): a
 * JWT made for something else, even one signed by the same key, is not a
 * session token.
 */
export const SESSION_TOKEN_TYPE = "warden-session+jwt";

/** The claim that carries the agent id. */
const AGENT_CLAIM = "agent_id";

/** What a verified session token says. */
export interface SessionTokenClaims {
  /** `sub`: the only session the token is good for. */
  readonly sessionId: string;
  /** The session's agent. */
  readonly agentId: string;
  /** Epoch ms (whole seconds). */
  readonly issuedAt: number;
  /** Epoch ms (whole seconds). */
  readonly expiresAt: number;
}

/** Signs session tokens. */
export interface SessionTokenIssuer {
  /** A signed token for one session of one agent, and when it expires (epoch ms). */
  issue(session: { readonly sessionId: string; readonly agentId: string }): Promise<{ token: string; expireTime: number }>;
}

/** Options of {@link createSessionTokenIssuer}. */
export interface SessionTokenIssuerOptions {
  readonly signingKeys: Pick<SigningKeys, "active">;
  /** Epoch ms; the wall clock by default. */
  readonly now?: () => number;
  /** Token lifetime; {@link DEFAULT_SESSION_TOKEN_TTL_MS} by default. */
  readonly ttlMs?: number;
  /** `iss`; {@link DEFAULT_TOKEN_ISSUER} by default. */
  readonly issuer?: string;
}

/**
 * Creates the issuer of session tokens: EdDSA (Ed25519) JWTs with `sub` =
 * session id, an `agent_id` claim, `iat`, `exp` = `iat` + TTL, `iss`, and
 * the signing key's `kid` in the header.
 *
 * A token's expiry is independent of its session's: the token only proves
 * "the bearer may act for session S"; whether S is still active (not
 * expired, ended, revoked, paused) is checked on every call from the
 * session itself. So extending a session needs no new token, and ending
 * one needs no token revocation list. A token that expires before its
 * session is replaced with AuthService.CreateSessionToken.
 */
export function createSessionTokenIssuer(options: SessionTokenIssuerOptions): SessionTokenIssuer {
  const now = options.now ?? Date.now;
  const ttlSeconds = Math.max(1, Math.floor((options.ttlMs ?? DEFAULT_SESSION_TOKEN_TTL_MS) / 1000));
  const issuer = options.issuer ?? DEFAULT_TOKEN_ISSUER;
  return {
    async issue({ sessionId, agentId }) {
      const key = await options.signingKeys.active();
      const iat = Math.floor(now() / 1000);
      const exp = iat + ttlSeconds;
      const token = await new SignJWT({ [AGENT_CLAIM]: agentId })
        .setProtectedHeader({ alg: SESSION_TOKEN_ALG, kid: key.kid, typ: SESSION_TOKEN_TYPE })
        .setIssuer(issuer)
        .setSubject(sessionId)
        .setIssuedAt(iat)
        .setExpirationTime(exp)
        .sign(key.privateKey);
      return { token, expireTime: exp * 1000 };
    },
  };
}

/** Verifies session tokens offline. */
export interface SessionTokenVerifier {
  /**
   * The claims of a valid token. Throws UNAUTHENTICATED "token expired" or
   * "invalid token" (bad shape, unknown key, bad signature, wrong
   * algorithm, issuer or type), or UNAVAILABLE when the token names a key
   * this verifier does not have and the key set cannot be fetched.
   */
  verify(token: string): Promise<SessionTokenClaims>;
}

/** Options of {@link createSessionTokenVerifier}. */
export interface SessionTokenVerifierOptions {
  /**
   * Fetches the issuer's public keys, e.g. AuthService.GetSigningKeys on
   * the control plane (its JSON form is a JWK Set).
   */
  readonly fetchJwks: () => Promise<JSONWebKeySet>;
  /** Epoch ms; the wall clock by default. */
  readonly now?: () => number;
  /** Expected `iss`; {@link DEFAULT_TOKEN_ISSUER} by default. */
  readonly issuer?: string;
  /**
   * Least time between two fetches caused by unknown `kid`s, so tokens with
   * made-up key ids cannot make the verifier hammer the control plane.
   * Default 5 s.
   */
  readonly refetchCooldownMs?: number;
  /**
   * Age after which the key set is refreshed in the background (so a key
   * withdrawn from the set stops being trusted). Default 10 minutes.
   */
  readonly maxAgeMs?: number;
  /** Allowed clock skew for `exp`; default 0 (tokens live for weeks). */
  readonly clockToleranceMs?: number;
}

const invalidToken = () => new ConnectError("invalid token", Code.Unauthenticated);

/**
 * Creates an offline verifier of session tokens: a sidecar checks every
 * agent call without asking the control plane. The key set is fetched on
 * first use and cached; a token signed by a key the cache does not know
 * (a key rotated in since) triggers one refetch, at most once per
 * `refetchCooldownMs`. Only EdDSA is accepted, so `alg: none` and
 * HMAC-with-the-public-key tricks fail.
 */
export function createSessionTokenVerifier(options: SessionTokenVerifierOptions): SessionTokenVerifier {
  const now = options.now ?? Date.now;
  const issuer = options.issuer ?? DEFAULT_TOKEN_ISSUER;
  const cooldownMs = options.refetchCooldownMs ?? 5_000;
  const maxAgeMs = options.maxAgeMs ?? 10 * 60_000;
  const toleranceSeconds = Math.floor((options.clockToleranceMs ?? 0) / 1000);
  /** The key set by `kid`: each key and its JWK thumbprint (RFC 7638), which names its material. */
  let keys = new Map<string, { key: CryptoKey; thumbprint: string }>();
  /** When the key set was last loaded. */
  let fetchedAt: number | undefined;
  let inflight: Promise<void> | undefined;
  /**
   * The last fetch started and when. Within the cooldown its outcome
   * stands for another (the set it loaded, or its error), so neither
   * made-up key ids nor calls while the control plane is unreachable make
   * the verifier fetch more often than once per cooldown.
   */
  let lastFetch: { atMs: number; done: Promise<void> } | undefined;

  async function load(): Promise<void> {
    const jwks = await options.fetchJwks();
    const next = new Map<string, { key: CryptoKey; thumbprint: string }>();
    for (const jwk of jwks.keys ?? []) {
      if (typeof jwk.kid !== "string" || (jwk.alg !== undefined && jwk.alg !== SESSION_TOKEN_ALG)) continue;
      try {
        const thumbprint = await calculateJwkThumbprint(jwk);
        // An unchanged key is kept as it is: tokens verified with it stay
        // recognised (see `verified`), instead of every cached token being
        // checked again after each refresh of an unchanged set.
        const known = keys.get(jwk.kid);
        const key = known?.thumbprint === thumbprint ? known.key : ((await importJWK({ ...jwk, ext: true }, SESSION_TOKEN_ALG)) as CryptoKey);
        next.set(jwk.kid, { key, thumbprint });
      } catch {
        // A key this verifier cannot use verifies nothing; the rest still work.
      }
    }
    keys = next;
    fetchedAt = now();
  }

  /** Fetches the key set unless a fetch is running (then waits for it) or one started within the cooldown (then gives its outcome). */
  function refresh(): Promise<void> {
    if (inflight !== undefined) return inflight;
    if (lastFetch !== undefined && now() - lastFetch.atMs < cooldownMs) return lastFetch.done;
    const done = load().finally(() => {
      inflight = undefined;
    });
    inflight = done;
    lastFetch = { atMs: now(), done };
    return done;
  }

  /** Starts a background refresh of a key set older than `maxAgeMs`. */
  function refreshIfStale(): void {
    if (fetchedAt !== undefined && now() - fetchedAt >= maxAgeMs) refresh().catch(() => undefined);
  }

  async function keyFor(kid: string): Promise<CryptoKey | undefined> {
    const known = keys.get(kid)?.key;
    if (known !== undefined) {
      refreshIfStale();
      return known;
    }
    try {
      await refresh();
    } catch (err) {
      throw new ConnectError("session token signing keys are unavailable", Code.Unavailable, undefined, undefined, err);
    }
    return keys.get(kid)?.key;
  }

  // A token is verified once and then recognised by its exact text: an
  // Ed25519 check costs tens of microseconds, more than a whole sidecar
  // decision, and an agent sends the same token on every call. An entry
  // holds only while its key is still in the set and the token unexpired.
  const verified = new LRUCache<string, { claims: SessionTokenClaims; kid: string; key: CryptoKey }>({ max: 4096 });

  return {
    async verify(token) {
      const hit = verified.get(token);
      // A stale key set is refreshed on this path too: an agent whose
      // tokens are all cached would otherwise never cause a refresh, and a
      // key withdrawn from the set would go on vouching for them.
      if (hit !== undefined) refreshIfStale();
      if (hit !== undefined && keys.get(hit.kid)?.key === hit.key) {
        if (now() >= hit.claims.expiresAt + toleranceSeconds * 1000) throw new ConnectError("token expired", Code.Unauthenticated);
        return hit.claims;
      }
      const claims = await verifyFully(token);
      return claims;
    },
  };

  async function verifyFully(token: string): Promise<SessionTokenClaims> {
    {
      let kid: unknown;
      let alg: unknown;
      try {
        ({ kid, alg } = decodeProtectedHeader(token));
      } catch {
        throw invalidToken();
      }
      if (alg !== SESSION_TOKEN_ALG || typeof kid !== "string") throw invalidToken();
      const key = await keyFor(kid);
      if (key === undefined) throw invalidToken();
      try {
        const { payload } = await jwtVerify(token, key, {
          algorithms: [SESSION_TOKEN_ALG],
          issuer,
          typ: SESSION_TOKEN_TYPE,
          currentDate: new Date(now()),
          clockTolerance: toleranceSeconds,
          requiredClaims: ["sub", "iat", "exp", AGENT_CLAIM],
        });
        const agentId = payload[AGENT_CLAIM];
        if (typeof payload.sub !== "string" || typeof agentId !== "string") throw invalidToken();
        const claims = { sessionId: payload.sub, agentId, issuedAt: payload.iat! * 1000, expiresAt: payload.exp! * 1000 };
        verified.set(token, { claims, kid, key });
        return claims;
      } catch (err) {
        if (err instanceof errors.JWTExpired) throw new ConnectError("token expired", Code.Unauthenticated);
        throw invalidToken();
      }
    }
  }
}
