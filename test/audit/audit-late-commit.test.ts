import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { ListAuditRecordsRequestSchema } from "../../src/gen/warden/v1/audit_service_pb.js";
import { appendAudit } from "../../src/store/audit-log.js";
import { createAuditStore } from "../../src/store/audit-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";

// Only on PostgreSQL: a record's transaction committing after a later one
// needs two connections, and PGlite has one.
describe("audit log paging with a transaction that commits late, on postgres", () => {
  let t: TestDatabase;
  let late: pg.Client;
  before(async () => {
    t = await openTestDatabase("postgres");
    late = new pg.Client({ connectionString: t.url });
    await late.connect();
  });
  after(async () => {
    await late.end();
    await t.drop();
  });

  const entry = (chain: string, i: number) => ({ chain, type: "test", nowMs: Date.now(), sessionId: chain, agentId: "agent-late", data: { i } });

  test("a record whose seq a page went past is listed on a later page once it commits, once", async () => {
    await late.query("BEGIN");
    // Takes the lowest seq of what follows, and holds it uncommitted.
    await appendAudit(late, [entry("s-late", 0)]);
    await t.db.transaction((tx) => appendAudit(tx, [1, 2, 3, 4, 5].map((i) => entry("s-early", i))));
    const store = createAuditStore(t.db);
    const list = (pageToken: string) => store.listRecords(create(ListAuditRecordsRequestSchema, { pageSize: 2, pageToken }));

    const first = await list("");
    assert.deepEqual(
      first.records.map((r) => r.chainId),
      ["s-early", "s-early"],
    );
    await late.query("COMMIT");

    const seen = [...first.records];
    let token = first.nextPageToken;
    while (token !== "") {
      const page = await list(token);
      assert.ok(page.records.length <= 2, "a page holds at most page_size records");
      seen.push(...page.records);
      token = page.nextPageToken;
    }
    const lateRecord = seen.filter((r) => r.chainId === "s-late");
    assert.equal(lateRecord.length, 1, "the late record is listed, once");
    assert.ok(lateRecord[0]!.seq < first.records[1]!.seq, "it took its seq before the first page's records");
    assert.equal(seen.length, 6);
    assert.equal(new Set(seen.map((r) => r.seq)).size, 6, "no record twice");
    // Every chain still comes in chain order.
    const early = seen.filter((r) => r.chainId === "s-early").map((r) => Number(r.chainSeq));
    assert.deepEqual(early, [1, 2, 3, 4, 5]);
  });

  test("late records beyond one page come over several pages, none twice", async () => {
    await late.query("BEGIN");
    await appendAudit(late, [1, 2, 3, 4, 5].map((i) => entry("s-late-2", i)));
    await t.db.transaction((tx) => appendAudit(tx, [1, 2, 3].map((i) => entry("s-early-2", i))));
    const store = createAuditStore(t.db);
    const filter = { agentId: "agent-late" };
    // Everything the first test wrote, then the first of s-early-2.
    let page = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 7 }));
    assert.equal(page.records.length, 7);
    assert.equal(`${page.records.at(-1)!.chainId}#${page.records.at(-1)!.chainSeq}`, "s-early-2#1");
    await late.query("COMMIT");
    const rest = [];
    while (page.nextPageToken !== "") {
      page = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 2, pageToken: page.nextPageToken }));
      assert.ok(page.records.length <= 2);
      rest.push(...page.records);
    }
    assert.deepEqual(
      rest.map((r) => `${r.chainId}#${r.chainSeq}`),
      ["s-late-2#1", "s-late-2#2", "s-late-2#3", "s-late-2#4", "s-late-2#5", "s-early-2#2", "s-early-2#3"],
    );
  });

  test("a page token only continues the filters it was made for; page_size may change", async () => {
    const store = createAuditStore(t.db);
    const since = { seconds: 1n, nanos: 0 };
    const filter = { agentId: "agent-late", startTime: since };
    const first = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 2 }));
    assert.notEqual(first.nextPageToken, "");
    for (const other of [{ sessionId: "s-early" }, { agentId: "" }, { startTime: undefined }, { endTime: { seconds: 4_000_000_000n, nanos: 0 } }]) {
      await assert.rejects(
        store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, ...other, pageSize: 2, pageToken: first.nextPageToken })),
        (e: unknown) =>
          e instanceof ConnectError &&
          e.code === Code.InvalidArgument &&
          /^page_token: was issued for a different query \(session_id, agent_id, start_time and end_time must be the same as on the first page/.test(e.rawMessage),
      );
    }
    // The same instant as the query compares it (records are stamped to the
    // millisecond: 1.000000001 s and 1.000999 s both mean "from 1.001 s") is the same filter.
    const since1ms = { ...filter, startTime: { seconds: 1n, nanos: 1 } };
    const first1ms = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...since1ms, pageSize: 2 }));
    const rest = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...since1ms, startTime: { seconds: 1n, nanos: 999_000 }, pageSize: 100, pageToken: first1ms.nextPageToken }));
    assert.equal(rest.nextPageToken, "");
    const all = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 100 }));
    assert.deepEqual([...first1ms.records, ...rest.records].map((r) => r.seq), all.records.map((r) => r.seq));
  });
});
