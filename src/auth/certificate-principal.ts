import type { PeerCertificate } from "node:tls";
import type { Principal } from "./principal.js";

/** The URI SAN prefix that names an agent in a client certificate: `urn:warden:agent:<agent id>`. */
export const AGENT_URI_PREFIX = "urn:warden:agent:";

const AGENT_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * The principal of a verified client certificate: an `agent` principal for
 * the agent named by the URI SAN `urn:warden:agent:<id>`, or else by the
 * subject's common name. Undefined when neither names a valid agent id.
 *
 * Only certificates issued by the listener's client CA get this far, and
 * that CA exists for Warden's clients (sidecars), so its certificates
 * identify agents; anything more powerful (admin, auditor) uses API keys,
 * which can be revoked one by one.
 */
export function principalFromCertificate(cert: PeerCertificate): Principal | undefined {
  let agentId: string | undefined;
  for (const entry of (cert.subjectaltname ?? "").split(",")) {
    const san = entry.trim();
    if (san.startsWith(`URI:${AGENT_URI_PREFIX}`)) {
      agentId = san.slice(`URI:${AGENT_URI_PREFIX}`.length);
      break;
    }
  }
  if (agentId === undefined) {
    const cn = cert.subject?.CN;
    agentId = Array.isArray(cn) ? undefined : cn;
  }
  if (agentId === undefined || !AGENT_ID.test(agentId)) return undefined;
  return { keyId: `cert:${agentId}`, role: "agent", agentId, via: "certificate" };
}
