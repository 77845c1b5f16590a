import { createPrivateKey, createPublicKey, generateKeyPairSync, type JsonWebKey, type KeyObject } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { calculateJwkThumbprint } from "jose";

/** The key that signs audit checkpoints. */
export interface AuditKey {
  /** The RFC 7638 thumbprint of the public key. */
  readonly keyId: string;
  readonly privateKey: KeyObject;
  /** The public key as a JWK (with kid, alg, use), as GetAuditPublicKeys serves it. */
  readonly publicJwk: JsonWebKey & { kid: string };
}

/**
 * Reads the Ed25519 private JWK in `file`, or creates one there (mode 0600,
 * its directory too) when there is none. The key is kept out of the
 * database on purpose: whoever can rewrite the audit tables could
 * otherwise read it and sign a rewritten log. Replicas of one control
 * plane should share one file (e.g. a mounted secret); each key that ever
 * signed stays listed in the store, so checkpoints of an older key still
 * verify.
 */
export async function loadOrCreateAuditKey(file: string): Promise<AuditKey> {
  let jwk: JsonWebKey;
  try {
    jwk = parseJwk(file, readFileSync(file, "utf8"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err instanceof SyntaxError ? err : new Error(`--audit-key: cannot read ${file}: ${(err as Error).message}`);
    mkdirSync(dirname(file), { recursive: true });
    jwk = generateKeyPairSync("ed25519").privateKey.export({ format: "jwk" });
    try {
      // "wx": two processes starting together must not overwrite each other's key.
      writeFileSync(file, `${JSON.stringify(jwk)}\n`, { mode: 0o600, flag: "wx" });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      jwk = parseJwk(file, readFileSync(file, "utf8"));
    }
  }
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string") {
    throw new Error(`--audit-key: ${file} is not an Ed25519 private JWK`);
  }
  const privateKey = createPrivateKey({ key: jwk, format: "jwk" });
  const pub = createPublicKey(privateKey).export({ format: "jwk" });
  const kid = await calculateJwkThumbprint({ kty: pub.kty!, crv: pub.crv!, x: pub.x! });
  return { keyId: kid, privateKey, publicJwk: { kty: pub.kty, crv: pub.crv, x: pub.x, kid, alg: "EdDSA", use: "sig" } };
}

/** The JSON of a key file, or a SyntaxError naming the file (never echoing its content: it is a secret). */
function parseJwk(file: string, text: string): JsonWebKey {
  try {
    return JSON.parse(text) as JsonWebKey;
  } catch {
    throw new SyntaxError(`--audit-key: ${file} is not an Ed25519 private JWK (not JSON)`);
  }
}
