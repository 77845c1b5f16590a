import { createHmac, timingSafeEqual } from "node:crypto";

/** The header that carries a delivery's signature. */
export const SIGNATURE_HEADER = "warden-signature";
/** The header that carries a delivery's event id (the same on every retry). */
export const EVENT_ID_HEADER = "warden-event-id";

/** The hex HMAC-SHA256 of `"<t>.<body>"` under `secret`: the `v1` of a signature header. */
export function computeWebhookSignature(secret: string, timestampSeconds: number, body: string | Uint8Array): string {
  return createHmac("sha256", secret).update(`${timestampSeconds}.`).update(body).digest("hex");
}

/**
 * The `warden-signature` header value for `body` sent at `timestampSeconds`:
 * one `v1` per secret (several while an endpoint's secret is being rotated).
 */
export function signWebhookBody(secrets: string | readonly string[], timestampSeconds: number, body: string): string {
  const all = typeof secrets === "string" ? [secrets] : secrets;
  return [`t=${timestampSeconds}`, ...all.map((s) => `v1=${computeWebhookSignature(s, timestampSeconds, body)}`)].join(",");
}

/** Why a signature was rejected. */
export class WebhookSignatureError extends Error {
  override readonly name = "WebhookSignatureError";
}

/** Arguments of {@link verifyWebhookSignature}. */
export interface VerifyWebhookSignatureOptions {
  /** The `warden-signature` header: `t=<unix seconds>,v1=<hex>` (several `v1` are allowed, e.g. during a secret rotation). */
  readonly header: string | undefined;
  /** The raw request body, exactly as received (parse it only after verifying). */
  readonly body: string | Uint8Array;
  /** The endpoint's secret, from CreateWebhookEndpoint. */
  readonly secret: string;
  /** How far the signed time may be from now, either way; default 300 s. */
  readonly toleranceSeconds?: number;
  /** The receiver's clock, in epoch ms; default `Date.now()`. */
  readonly now?: number;
}

/**
 * Verifies a webhook delivery: the HMAC-SHA256 of `"<t>.<body>"` under the
 * endpoint's secret must equal a `v1` of the header (compared in constant
 * time), and `t` must be within `toleranceSeconds` of now, so a request
 * captured once cannot be replayed later. Within the tolerance a replay
 * still verifies: receivers should also drop event ids they have already
 * processed, which they need anyway since delivery is at least once.
 *
 * Returns true, or throws a {@link WebhookSignatureError} saying why not.
 */
export function verifyWebhookSignature(opts: VerifyWebhookSignatureOptions): true {
  const { header, secret } = opts;
  const toleranceSeconds = opts.toleranceSeconds ?? 300;
  // Misconfigurations fail closed: anyone can sign with an empty key, and
  // a NaN tolerance would let every timestamp pass (nothing is > NaN).
  if (typeof secret !== "string" || secret.length < 16) {
    throw new WebhookSignatureError("no usable secret: a webhook secret has at least 16 characters (is it configured?)");
  }
  if (!Number.isFinite(toleranceSeconds) || toleranceSeconds < 0) throw new WebhookSignatureError(`toleranceSeconds: ${toleranceSeconds} is not a number of seconds`);
  if (header === undefined || header === "") throw new WebhookSignatureError("no warden-signature header");
  let t: number | undefined;
  const signatures: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq <= 0) throw new WebhookSignatureError("malformed warden-signature header");
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === "t") {
      if (!/^\d{1,12}$/.test(value)) throw new WebhookSignatureError("malformed timestamp in warden-signature header");
      t = Number(value);
    } else if (key === "v1") {
      if (!/^[0-9a-f]{64}$/.test(value)) throw new WebhookSignatureError("malformed v1 signature in warden-signature header");
      signatures.push(value);
    }
    // Other schemes are ignored, so a newer sender stays readable.
  }
  if (t === undefined) throw new WebhookSignatureError("no timestamp in warden-signature header");
  if (signatures.length === 0) throw new WebhookSignatureError("no v1 signature in warden-signature header");
  const nowSeconds = Math.floor((opts.now ?? Date.now()) / 1000);
  if (Math.abs(nowSeconds - t) > toleranceSeconds) {
    throw new WebhookSignatureError(`timestamp is ${nowSeconds - t} s from now, outside the tolerance of ${toleranceSeconds} s (a replay?)`);
  }
  const expected = Buffer.from(computeWebhookSignature(secret, t, opts.body), "hex");
  // Every candidate is compared, in constant time each, so timing says nothing about which one matched.
  let ok = false;
  for (const s of signatures) ok = timingSafeEqual(expected, Buffer.from(s, "hex")) || ok;
  if (!ok) throw new WebhookSignatureError("signature does not match (wrong secret or altered body)");
  return true;
}
