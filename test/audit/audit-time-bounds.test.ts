import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ListAuditRecordsRequestSchema } from "../../src/gen/warden/v1/audit_service_pb.js";
import { appendAudit } from "../../src/store/audit-log.js";
import { createAuditStore } from "../../src/store/audit-store.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";

// A record written at exactly T = 2026-01-01T00:00:00.000Z.
const T_SECONDS = BigInt(Date.UTC(2026, 0, 1) / 1000);

for (const driver of DRIVERS) describe(`audit ListAuditRecords start_time/end_time with sub-millisecond instants on ${driver}`, () => {
  let t: TestDatabase;
  before(async () => {
    t = await openTestDatabase(driver);
    await t.db.transaction((tx) =>
      appendAudit(tx, [{ chain: "s-time", type: "test", nowMs: Date.UTC(2026, 0, 1), sessionId: "s-time", agentId: "agent-time", data: {} }]),
    );
  });
  after(async () => t.drop());

  const list = async (filter: object) =>
    (await createAuditStore(t.db).listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 100 }))).records.length;

  test("start_time 0.4 ms after a record excludes it (--since must not take in records from before the instant)", async () => {
    // Record at T.000000; since = T.000400: T.000 < since, so it is not "at or after".
    assert.equal(await list({ startTime: { seconds: T_SECONDS, nanos: 400_000 } }), 0);
  });

  test("end_time 0.4 ms after a record includes it (the record is before --until)", async () => {
    // Record at T.000000 < until = T.000400: it is "before this time".
    assert.equal(await list({ endTime: { seconds: T_SECONDS, nanos: 400_000 } }), 1);
  });

  test("bounds at the record's very instant: since includes it, until excludes it", async () => {
    assert.equal(await list({ startTime: { seconds: T_SECONDS, nanos: 0 } }), 1);
    assert.equal(await list({ endTime: { seconds: T_SECONDS, nanos: 0 } }), 0);
    assert.equal(await list({ startTime: { seconds: T_SECONDS - 1n, nanos: 999_999_999 } }), 1);
  });
});
