import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { pageToken, readPageToken } from "../../src/store/page-token.js";

const forged = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
const refused = (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && e.rawMessage === "page_token: not a token this server issued";
const Q = { agent_id: "a" };

test("a page token reads back the position it was made from, and the empty token is the first page", () => {
  const shape = { t: "number", id: "string", k: "integer" } as const;
  assert.deepEqual(readPageToken(pageToken({ t: 1733200000000, id: "ses_1", k: "-42" }, Q), shape, Q), { t: 1733200000000, id: "ses_1", k: "-42" });
  assert.equal(readPageToken("", shape, Q), undefined);
  // The ends of each range still read.
  const first = Date.parse("0001-01-01T00:00:00.000Z");
  const last = Date.parse("9999-12-31T23:59:59.999Z");
  assert.deepEqual(readPageToken(pageToken({ t: first, id: "", k: "9223372036854775807" }, Q), shape, Q), { t: first, id: "", k: "9223372036854775807" });
  assert.deepEqual(readPageToken(pageToken({ t: last, id: "x", k: "-9223372036854775808" }, Q), shape, Q), { t: last, id: "x", k: "-9223372036854775808" });
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
    // A query hash that is not one.
    forged({ t: 1, id: "x", seq: "1", q: 7 }),
    forged({ t: 1, id: "x", seq: "1", q: "" }),
    forged({ t: 1, id: "x", seq: "1", q: "not a hash!" }),
  ]) {
    assert.throws(() => readPageToken(token, shape, Q), refused, token);
  }
});

test("a token is only good for the query that made it: another filter is INVALID_ARGUMENT naming page_token and the parameters", () => {
  const shape = { seq: "integer" } as const;
  const query = { session_id: "s1", agent_id: "", labels: { b: "2", a: "1" } };
  const token = pageToken({ seq: "5" }, query);
  // The same query, its keys and map entries in any order, reads.
  assert.deepEqual(readPageToken(token, shape, { labels: { a: "1", b: "2" }, agent_id: "", session_id: "s1" }), { seq: "5" });
  const mismatch = (e: unknown) =>
    e instanceof ConnectError &&
    e.code === Code.InvalidArgument &&
    e.rawMessage === "page_token: was issued for a different query (session_id, agent_id and labels must be the same as on the first page; only page_size may change)";
  for (const other of [
    { ...query, session_id: "s2" },
    { ...query, agent_id: "a" },
    { ...query, labels: { a: "1" } },
    { ...query, labels: { a: "1", b: "3" } },
  ]) {
    assert.throws(() => readPageToken(token, shape, other), mismatch, JSON.stringify(other));
  }
  // A list without filters: a token from another list is refused all the same.
  assert.throws(
    () => readPageToken(pageToken({ seq: "5" }, { session_id: "s1" }), shape, {}),
    (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && e.rawMessage === "page_token: was issued for a different query (pass the next_page_token of this same list)",
  );
  // Still opaque: neither the filter nor its values show in the token.
  assert.doesNotMatch(Buffer.from(token, "base64url").toString("utf8"), /s1|labels|session_id/);
});

test("a token from before tokens carried their query (a position only) still reads, for any query", () => {
  const shape = { t: "number", id: "string" } as const;
  assert.deepEqual(readPageToken(forged({ t: 1, id: "x" }), shape, Q), { t: 1, id: "x" });
  assert.deepEqual(readPageToken(forged({ t: 1, id: "x" }), shape, { agent_id: "b" }), { t: 1, id: "x" });
});
