import { create, toJson } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { AuditPublicKey, AuditVerification, StoredAuditRecord } from "../../src/audit/verify-audit-log.js";
import { verifyAuditLog } from "../../src/audit/verify-audit-log.js";
import { ListAuditRecordsRequestSchema } from "../../src/gen/warden/v1/audit_service_pb.js";
import { SigningKeySchema } from "../../src/gen/warden/v1/auth_service_pb.js";
import { createAuditStore } from "../../src/store/audit-store.js";
import type { Database } from "../../src/store/database.js";

/** Every audit record, in log order, as the verifier reads it (paging through AuditStore, 7 a page). */
export async function readAuditLog(
  db: Database,
  filter: { sessionId?: string; agentId?: string; startTime?: Timestamp; endTime?: Timestamp } = {},
): Promise<StoredAuditRecord[]> {
  const store = createAuditStore(db);
  const out: StoredAuditRecord[] = [];
  let pageToken = "";
  do {
    const res = await store.listRecords(create(ListAuditRecordsRequestSchema, { ...filter, pageSize: 7, pageToken }));
    for (const r of res.records) {
      out.push({ ...r, time: timestampDate(r.createTime!).toISOString() });
    }
    pageToken = res.nextPageToken;
  } while (pageToken !== "");
  return out;
}

/** Verifies the whole stored log against the given keys (default: the store's own list). */
export async function verifyStoredLog(db: Database, keys?: AuditPublicKey[]): Promise<AuditVerification> {
  const store = createAuditStore(db);
  const { checkpoints } = await store.listCheckpoints(1000, "");
  const trusted = keys ?? (await store.publicKeys()).map((k) => toJson(SigningKeySchema, k) as AuditPublicKey);
  return verifyAuditLog(await readAuditLog(db), checkpoints, trusted);
}
