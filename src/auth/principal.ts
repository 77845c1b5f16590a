import { createContextKey } from "@connectrpc/connect";

/**
 * What a caller may do (see the access tables in access-tables.ts):
 * - `admin`: everything;
 * - `approver`: read sessions, agents and actions (and decide approvals);
 * - `auditor`: read-only methods (Get, List, Export);
 * - `agent`: one agent's own sessions, its decisions, and the sidecar sync API.
 */
export type Role = "admin" | "approver" | "auditor" | "agent";

/** Every role, most powerful first. */
export const ROLES: readonly Role[] = ["admin", "approver", "auditor", "agent"];

/** Whether `text` names a role. */
export function isRole(text: string): text is Role {
  return (ROLES as readonly string[]).includes(text);
}

/** Who is calling, as established by an API key or a client certificate. */
export interface Principal {
  /** The API key's id ("key_…"), or "cert:<subject>" for a client certificate. */
  readonly keyId: string;
  readonly role: Role;
  /** Set for `agent`: the only agent whose sessions the caller may touch. */
  readonly agentId?: string | undefined;
  /** How the caller proved who it is. */
  readonly via: "api-key" | "certificate";
}

/**
 * The authenticated principal of a call, set by `withApiKeyAuth` in the
 * handler context's `values`, so handlers can see who called (undefined when
 * the call was not authenticated, e.g. a public method or auth turned off).
 */
export const principalKey = createContextKey<Principal | undefined>(undefined, { description: "warden.principal" });
