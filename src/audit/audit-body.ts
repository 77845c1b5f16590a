import { hash } from "node:crypto";
import { canonicalJson } from "./canonical-json.js";

/** Version of the record body format; in every body as `v`. */
export const AUDIT_BODY_VERSION = 1;

/** What one audit record says; its body is the canonical JSON of these plus `v`. */
export interface AuditBody {
  readonly v: number;
  /** The chain: a session id, or `agent:<id>` for an agent's policy changes. */
  readonly chain: string;
  /** 1-based position in the chain. */
  readonly seq: number;
  /** e.g. "decision", "session.revoked", "authorization.captured". */
  readonly type: string;
  /** When the change was made: ISO 8601 UTC with milliseconds. */
  readonly time: string;
  readonly session_id: string | null;
  readonly agent_id: string;
  /** What changed; amounts as decimal strings of micros. */
  readonly data: Record<string, unknown>;
  /** Hex SHA-256 of the chain's previous record; "" for the first. */
  readonly prev: string;
}

/** The chain of an agent's own records (policy changes). */
export function agentChain(agentId: string): string {
  return `agent:${agentId}`;
}

/** The canonical text of a record: exactly what is stored and hashed. */
export function auditBodyText(body: AuditBody): string {
  return canonicalJson(body);
}

/**
 * SHA-256 of a body's UTF-8 text. The one-shot `crypto.hash`, not a Hash
 * object: one per decision's record, and 1.2–1.4 µs against 1.9.
 */
export function sha256(text: string): Buffer {
  return hash("sha256", text, "buffer");
}

/** The chain link of a record: its body's text and that text's hash. */
export function chainRecord(body: Omit<AuditBody, "v">): { text: string; hash: Buffer } {
  const text = auditBodyText({ v: AUDIT_BODY_VERSION, ...body });
  return { text, hash: sha256(text) };
}
