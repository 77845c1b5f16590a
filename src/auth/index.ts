/**
 * Authentication at the network boundary: API keys with roles for the
 * admin API, signed session tokens for agents, mutual TLS for sidecars.
 * Start with {@link createAuth} (control plane, `warden serve`) or
 * {@link createSessionTokenVerifier} and {@link createSidecarCredentials}
 * (sidecar).
 */
export * from "./access-tables.js";
export * from "./api-keys.js";
export * from "./auth-service.js";
export * from "./bearer-token.js";
export * from "./certificate-principal.js";
export * from "./create-auth.js";
export * from "./guard-services.js";
export * from "./principal.js";
export * from "./server-tls.js";
export * from "./session-tokens.js";
export * from "./sidecar-credentials.js";
export * from "./signing-keys.js";
export * from "./with-api-key-auth.js";
export * from "./with-session-token-auth.js";
