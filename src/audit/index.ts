/**
 * The audit trail's pure core: canonical bodies, their hashes, the
 * verifier and the checkpoint key. No store, no transport: the CLI
 * verifies with these alone.
 */
export { canonicalJson } from "./canonical-json.js";
export { type AuditBody, AUDIT_BODY_VERSION, agentChain, auditBodyText, chainRecord, sha256 } from "./audit-body.js";
export { type AuditKey, loadOrCreateAuditKey } from "./audit-key.js";
export {
  type AuditProblem,
  type AuditProblemKind,
  type AuditPublicKey,
  type AuditVerification,
  type CheckpointBody,
  type StoredAuditCheckpoint,
  type StoredAuditRecord,
  verifyAuditLog,
} from "./verify-audit-log.js";
