import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { pageToken, readPageToken } from "../../src/store/page-token.js";

const forged = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
const refused = (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && e.rawMessage === "page_token: not a token this server issued";

test("a page token reads back the position it was made from, and the empty token is the first page", () => {
  const shape = { t: "number", id: "string", k: "integer" } as const;
  assert.deepEqual(readPageToken(pageToken({ t: 1733200000000, id: "ses_1", k: "-42" }), shape), { t: 1733200000000, id: "ses_1", k: "-42" });
  assert.equal(readPageToken("", shape), undefined);
  // The ends of each range still read.
  const first = Date.parse("0001-01-01T00:00:00.000Z");
  const last = Date.parse("9999-12-31T23:59:59.999Z");
  assert.deepEqual(readPageToken(pageToken({ t: first, id: "", k: "9223372036854775807" }), shape), { t: first, id: "", k: "9223372036854775807" });
  assert.deepEqual(readPageToken(pageToken({ t: last, id: "x", k: "-9223372036854775808" }), shape), { t: last, id: "x", k: "-9223372036854775808" });
});

test("a token that is not ours, or has the wrong fields, is INVALID_ARGUMENT naming page_token", () => {
  const shape = { t: "number", id: "string", seq: "integer" } as const;
  for (const token of [
    "not base64 json!",
    forged("null"),
    forged("5"),
    forged({ id: "x", seq: "1" }),
    forged({ t: "1", id: "x", seq: "1" }),
    forged({ t: 1, id: 7, seq: "1" }),
    forged({ t: 1, id: "x", seq: "1; DROP TABLE sessions" }),
    forged({ t: 1, id: "x", seq: "12345678901234567890" }),
    forged({ t: null, id: "x", seq: "1" }),
    // Each of these passed the shape but failed the query (INTERNAL).
    forged({ t: 1e300, id: "x", seq: "1" }),
    forged({ t: 8.64e15, id: "x", seq: "1" }),
    forged({ t: Date.parse("0000-12-31T23:59:59.999Z"), id: "x", seq: "1" }),
    forged({ t: 0.5, id: "x", seq: "1" }),
    forged({ t: 1, id: "x\u0000", seq: "1" }),
    forged({ t: 1, id: "x", seq: "9999999999999999999" }),
    forged({ t: 1, id: "x", seq: "-9223372036854775809" }),
  ]) {
    assert.throws(() => readPageToken(token, shape), refused, token);
  }
});
