import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { advanceAuditCursor, auditPageToken, LOG_START, readAuditPageToken } from "../../src/store/audit-cursor.js";
import { pageToken } from "../../src/store/page-token.js";

describe("audit cursor", () => {
  test("a page that reaches past the cursor moves it to its last seq and waits for the transactions then running", () => {
    const cur = advanceAuditCursor(LOG_START, [1n, 2n, 4n], 5n, [90n, 91n]);
    assert.equal(cur.after, 4n);
    // Both were running when seqs up to 4 were listed: their records can be anywhere.
    assert.deepEqual([...cur.pending], [
      [90n, LOG_START.after],
      [91n, LOG_START.after],
    ]);
  });

  test("a transaction still running keeps its mark; one that committed is done; a new one starts at the old cursor", () => {
    const cur = { after: 10n, pending: new Map([[90n, 3n], [91n, 3n]]) };
    const next = advanceAuditCursor(cur, [6n, 11n, 12n], 13n, [90n, 95n]);
    assert.equal(next.after, 12n);
    assert.deepEqual([...next.pending], [
      [90n, 3n],
      [95n, 10n],
    ]);
  });

  test("a page that ends among late records keeps the cursor and marks what each committed transaction has had listed", () => {
    const cur = { after: 10n, pending: new Map([[90n, 3n], [91n, 3n], [92n, 8n]]) };
    // 91 committed (its 4 and 6 were listed, 7 is next); 90 still runs; 92 committed, nothing of it listed yet.
    const next = advanceAuditCursor(cur, [4n, 6n], 7n, [90n]);
    assert.equal(next.after, 10n);
    assert.deepEqual([...next.pending], [
      [90n, 3n],
      [91n, 6n],
      [92n, 8n],
    ]);
  });

  const query = { session_id: "", agent_id: "a", start_time: undefined, end_time: undefined };
  const legacy = (position: object) => Buffer.from(JSON.stringify(position)).toString("base64url");

  test("tokens round-trip, and old tokens (a seq only) still read", () => {
    const cur = { after: 1234n, pending: new Map([[18446744073709551615n, 1200n], [7n, 1234n]]) };
    assert.deepEqual(readAuditPageToken(auditPageToken(cur, query), query), cur);
    assert.deepEqual(readAuditPageToken(pageToken({ seq: "77" }, query), query), { after: 77n, pending: new Map() });
    assert.deepEqual(readAuditPageToken(legacy({ seq: "77" }), query), { after: 77n, pending: new Map() });
    assert.deepEqual(readAuditPageToken("", query), LOG_START);
    const fromStart = advanceAuditCursor(LOG_START, [], 1n, [5n]);
    assert.deepEqual(readAuditPageToken(auditPageToken(fromStart, query), query), fromStart);
  });

  test("a forged token is INVALID_ARGUMENT naming page_token", () => {
    for (const p of ["x:1", "1:", "1:2,", 5, "1:-2", "1:99999999999999999999"]) {
      assert.throws(
        () => readAuditPageToken(pageToken({ seq: "10", p }, query), query),
        (e: unknown) => e instanceof ConnectError && /page_token/.test(e.message),
      );
    }
  });

  test("a token for other filters is INVALID_ARGUMENT naming page_token", () => {
    const token = auditPageToken({ after: 10n, pending: new Map([[7n, 3n]]) }, query);
    assert.throws(
      () => readAuditPageToken(token, { ...query, start_time: "2025-01-01T00:00:00.000Z" }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && /^page_token: was issued for a different query \(.*start_time/.test(e.rawMessage),
    );
  });
});
