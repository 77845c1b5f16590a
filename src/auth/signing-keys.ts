import { calculateJwkThumbprint, type CryptoKey, exportJWK, generateKeyPair, importJWK, type JSONWebKeySet, type JWK } from "jose";
import type { Database } from "../store/database.js";

/** The JWS algorithm of session tokens: Ed25519 signatures (RFC 8037). */
export const SESSION_TOKEN_ALG = "EdDSA";

/**
 * How long the active key is reused before the store is asked again: a
 * replica may go on signing with a key retired elsewhere for that long.
 */
export const ACTIVE_CACHE_MS = 60_000;

/** The key that signs session tokens now. */
export interface ActiveSigningKey {
  /** Key id: the RFC 7638 thumbprint of the public key. */
  readonly kid: string;
  readonly privateKey: CryptoKey;
}

/** The signing keys of session tokens, shared by every replica through the store. */
export interface SigningKeys {
  /**
   * The key to sign with. The first call on an empty store creates one;
   * replicas racing to do so all end up with the same key.
   */
  active(): Promise<ActiveSigningKey>;
  /**
   * The public keys a verifier needs: the active key and every retired key
   * whose tokens may still be unexpired.
   */
  jwks(): Promise<JSONWebKeySet>;
  /**
   * Retires the active key and creates a new one, which signs from now on.
   * Returns the new key's id. Other replicas switch within a minute
   * ({@link ACTIVE_CACHE_MS}); the retired key stays published until the
   * tokens they sign with it meanwhile have expired too.
   */
  rotate(): Promise<string>;
}

/** Options of {@link createSigningKeys}. */
export interface SigningKeysOptions {
  readonly db: Database;
  /** Epoch ms; the wall clock by default. */
  readonly now?: () => number;
  /**
   * The longest token lifetime. A retired key stays published that long
   * plus {@link ACTIVE_CACHE_MS}, since a replica that has not yet seen the
   * rotation signs with it for up to that long, and such a token is valid
   * its full lifetime.
   */
  readonly retiredKeyLifetimeMs: number;
}

interface KeyRow {
  kid: string;
  private_jwk: string;
  public_jwk: string;
}

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * Ed25519 signing keys in `signing_keys`. They live in the store, not in a
 * file per replica, so every control-plane replica signs with the same key
 * and publishes the same key set, and a sidecar may ask any of them.
 *
 * The private keys are as safe as the store: whoever can write the store
 * can already grant any budget, so encrypting them with a key kept beside
 * the store would add ceremony, not safety.
 */
export function createSigningKeys(options: SigningKeysOptions): SigningKeys {
  const { db } = options;
  const now = options.now ?? Date.now;
  let cached: { key: Promise<ActiveSigningKey>; until: number } | undefined;

  async function insertNew(q: Pick<Database, "query">): Promise<void> {
    const { privateKey, publicKey } = await generateKeyPair(SESSION_TOKEN_ALG, { crv: "Ed25519", extractable: true });
    const publicJwk = await exportJWK(publicKey);
    const kid = await calculateJwkThumbprint(publicJwk);
    const pub: JWK = { ...publicJwk, kid, alg: SESSION_TOKEN_ALG, use: "sig" };
    const priv: JWK = { ...(await exportJWK(privateKey)), kid, alg: SESSION_TOKEN_ALG };
    // The partial unique index admits one active key: whoever loses the
    // race inserts nothing and uses the winner's.
    try {
      await q.query(
        `INSERT INTO signing_keys (kid, private_jwk, public_jwk, create_time) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
        [kid, JSON.stringify(priv), JSON.stringify(pub), iso(now())],
      );
    } catch (err) {
      // Some drivers (PGlite) attach the statement's parameters to their
      // errors, and this one holds a private key: keep only the message,
      // so no log line can carry it.
      throw new Error(`storing a new signing key failed: ${(err as Error).message}`);
    }
  }

  async function readActive(): Promise<KeyRow | undefined> {
    const { rows } = await db.query<KeyRow>("SELECT kid, private_jwk, public_jwk FROM signing_keys WHERE retire_time IS NULL");
    return rows[0];
  }

  async function loadActive(): Promise<ActiveSigningKey> {
    let row = await readActive();
    if (row === undefined) {
      await insertNew(db);
      row = await readActive();
      if (row === undefined) throw new Error("no active signing key after creating one");
    }
    const privateKey = (await importJWK(JSON.parse(row.private_jwk) as JWK, SESSION_TOKEN_ALG)) as CryptoKey;
    return { kid: row.kid, privateKey };
  }

  function active(): Promise<ActiveSigningKey> {
    const t = now();
    if (cached === undefined || t >= cached.until) {
      const key = loadActive();
      cached = { key, until: t + ACTIVE_CACHE_MS };
      // A failed load must not be cached.
      key.catch(() => {
        if (cached?.key === key) cached = undefined;
      });
    }
    return cached.key;
  }

  return {
    active,

    async jwks() {
      const { rows } = await db.query<KeyRow>(
        `SELECT kid, public_jwk FROM signing_keys WHERE retire_time IS NULL OR retire_time > $1 ORDER BY retire_time DESC NULLS FIRST, create_time DESC`,
        // A token signed by a replica that has not yet seen the rotation
        // (up to ACTIVE_CACHE_MS after it) lives a full token lifetime too.
        [iso(now() - options.retiredKeyLifetimeMs - ACTIVE_CACHE_MS)],
      );
      return { keys: rows.map((r) => JSON.parse(r.public_jwk) as JWK) };
    },

    async rotate() {
      await db.transaction(async (tx) => {
        await tx.query("UPDATE signing_keys SET retire_time = $1 WHERE retire_time IS NULL", [iso(now())]);
        await insertNew(tx);
      });
      cached = undefined;
      return (await active()).kid;
    },
  };
}
