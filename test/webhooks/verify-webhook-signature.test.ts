import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { signWebhookBody, verifyWebhookSignature, WebhookSignatureError } from "../../src/webhooks/verify-webhook-signature.js";

const SECRET = "whsec_test-secret-0123456789";
const BODY = JSON.stringify({ id: "evt_1", type: "session.revoked", data: { reason: "stop" } });
const NOW = Date.UTC(2026, 10, 21, 12, 0, 0);
const T = NOW / 1000;

const rejects = (fn: () => unknown, why: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof WebhookSignatureError && why.test(e.message));

describe("verifyWebhookSignature", () => {
  test("accepts a signature made with the secret, as a string or bytes, within the tolerance", () => {
    const header = signWebhookBody(SECRET, T, BODY);
    assert.match(header, /^t=\d+,v1=[0-9a-f]{64}$/);
    assert.equal(verifyWebhookSignature({ header, body: BODY, secret: SECRET, now: NOW }), true);
    assert.equal(verifyWebhookSignature({ header, body: new TextEncoder().encode(BODY), secret: SECRET, now: NOW + 299_000 }), true);
    // Several v1 values (a rotation): one matching is enough.
    const other = signWebhookBody("whsec_other-secret-012345", T, BODY).split(",")[1];
    assert.equal(verifyWebhookSignature({ header: `${header.split(",")[0]},${other},${header.split(",")[1]}`, body: BODY, secret: SECRET, now: NOW }), true);
  });

  test("a misconfigured receiver fails closed: an empty or short secret, or a tolerance that is not a number of seconds", () => {
    // Anyone can sign under the empty key; Warden's secrets have at least 16 characters.
    for (const secret of ["", "short-secret"]) {
      rejects(() => verifyWebhookSignature({ header: signWebhookBody(secret, T, BODY), body: BODY, secret, now: NOW }), /no usable secret/);
    }
    // NaN would let every timestamp pass (nothing is greater than NaN).
    const old = signWebhookBody(SECRET, T - 86_400, BODY);
    for (const toleranceSeconds of [Number.NaN, -1]) {
      rejects(() => verifyWebhookSignature({ header: old, body: BODY, secret: SECRET, now: NOW, toleranceSeconds }), /toleranceSeconds: .* is not a number of seconds/);
    }
  });

  test("rejects a tampered body", () => {
    rejects(() => verifyWebhookSignature({ header: signWebhookBody(SECRET, T, BODY), body: BODY.replace("stop", "go"), secret: SECRET, now: NOW }), /does not match/);
  });

  test("rejects the wrong secret", () => {
    rejects(() => verifyWebhookSignature({ header: signWebhookBody(SECRET, T, BODY), body: BODY, secret: "whsec_not-the-secret-0000", now: NOW }), /does not match/);
  });

  test("rejects a timestamp outside the tolerance (a replay), either way", () => {
    const header = signWebhookBody(SECRET, T, BODY);
    rejects(() => verifyWebhookSignature({ header, body: BODY, secret: SECRET, now: NOW + 301_000 }), /outside the tolerance/);
    rejects(() => verifyWebhookSignature({ header, body: BODY, secret: SECRET, now: NOW - 301_000 }), /outside the tolerance/);
    rejects(() => verifyWebhookSignature({ header, body: BODY, secret: SECRET, now: NOW + 11_000, toleranceSeconds: 10 }), /outside the tolerance/);
  });

  test("rejects a missing or malformed header", () => {
    const v1 = signWebhookBody(SECRET, T, BODY).split(",")[1]!;
    for (const [header, why] of [
      [undefined, /no warden-signature/],
      ["", /no warden-signature/],
      ["garbage", /malformed/],
      [v1, /no timestamp/],
      [`t=${T}`, /no v1/],
      [`t=soon,${v1}`, /malformed timestamp/],
      [`t=${T},v1=abc`, /malformed v1/],
      [`t=${T},v1=${"Z".repeat(64)}`, /malformed v1/],
    ] as const) {
      rejects(() => verifyWebhookSignature({ header, body: BODY, secret: SECRET, now: NOW }), why);
    }
  });
});
