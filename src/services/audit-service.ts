import type { ServiceImpl } from "@connectrpc/connect";
import type { AuditService } from "../gen/warden/v1/audit_service_pb.js";
import type { AuditStore } from "../store/audit-store.js";

/** AuditService over the audit store: the log, its checkpoints and their public keys. */
export function createAuditService(store: AuditStore): ServiceImpl<typeof AuditService> {
  return {
    async listAuditRecords(req) {
      return store.listRecords(req);
    },
    async listAuditCheckpoints(req) {
      return store.listCheckpoints(req.pageSize, req.pageToken);
    },
    async getAuditPublicKeys() {
      return { keys: await store.publicKeys() };
    },
  };
}
