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
  ]) {
    assert.throws(() => readPageToken(token, shape), refused, token);
  }
});
