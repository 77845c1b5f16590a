import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { JSONWebKeySet } from "jose";
import { LRUCache } from "lru-cache";
import type { AuthService } from "../gen/warden/v1/auth_service_pb.js";
import { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { BatchQueue } from "../store/batch-queue.js";
import type { Database } from "../store/database.js";
import { APPROVAL_SERVICE_ACCESS, APPROVAL_TOKEN_METHODS, POLICY_SERVICE_ACCESS } from "./access-tables.js";
import { type ApiKeys, createApiKeys } from "./api-keys.js";
import { createAuthService } from "./auth-service.js";
import {
  createSessionTokenIssuer,
  createSessionTokenVerifier,
  DEFAULT_SESSION_TOKEN_TTL_MS,
  type SessionTokenIssuer,
  type SessionTokenVerifier,
} from "./session-tokens.js";
import { createSigningKeys, type SigningKeys } from "./signing-keys.js";
import { type AccessTable, withApiKeyAuth } from "./with-api-key-auth.js";
import { withSessionTokenAuth } from "./with-session-token-auth.js";

/** Options of {@link createAuth}. */
export interface AuthOptions {
  /** The store (migrated): API keys, signing keys, and sessions for ownership checks. */
  readonly db: Database;
  /** Epoch ms; the wall clock by default. Token times and expiry checks use it. */
  readonly now?: () => number;
  /** Session token lifetime (`--session-token-ttl`); 30 days by default. */
  readonly tokenTtlMs?: number;
}

/** Everything the control plane (and `warden serve`) needs for authentication. */
export interface Auth {
  /** API keys: create, authenticate, list, revoke. */
  readonly apiKeys: ApiKeys;
  /** The keys that sign session tokens (rotate() for a new one). */
  readonly signingKeys: SigningKeys;
  /** Signs session tokens; give it to createSessionService. */
  readonly issuer: SessionTokenIssuer;
  /** Verifies session tokens against this store's keys. */
  readonly verifier: SessionTokenVerifier;
  /** The public key set (what AuthService.GetSigningKeys returns). */
  jwks(): Promise<JSONWebKeySet>;
  /** The agent a session belongs to (cached: it never changes), or undefined. */
  sessionAgent(sessionId: string): Promise<string | undefined>;
  /** AuthService, unwrapped: mount `wrapAdmin(AuthService, auth.authService, AUTH_SERVICE_ACCESS)`. */
  readonly authService: ServiceImpl<typeof AuthService>;
  /**
   * `impl` behind API keys (or verified client certificates) and the
   * per-method role table: SESSION_SERVICE_ACCESS, AGENT_SERVICE_ACCESS,
   * AUTH_SERVICE_ACCESS, SYNC_SERVICE_ACCESS, POLICY_SERVICE_ACCESS.
   */
  wrapAdmin<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>, table: AccessTable<S>): Partial<ServiceImpl<S>>;
  /**
   * PolicyService behind session tokens (agents), with API keys or client
   * certificates accepted too under POLICY_SERVICE_ACCESS (sidecars,
   * admins, readers of ListActions).
   */
  wrapPolicy(impl: Partial<ServiceImpl<typeof PolicyService>>): Partial<ServiceImpl<typeof PolicyService>>;
  /**
   * ApprovalService: an agent's session token may read, watch and cancel
   * its session's approvals (APPROVAL_TOKEN_METHODS); everything else needs
   * an API key under APPROVAL_SERVICE_ACCESS (approvers decide).
   */
  wrapApprovals(impl: Partial<ServiceImpl<typeof ApprovalService>>): Partial<ServiceImpl<typeof ApprovalService>>;
}

/**
 * Sets up authentication on a store, for the control plane and `warden
 * serve`. Makes sure a signing key exists (the first replica to start
 * creates it; the others use it), so a broken store fails at startup, not
 * at the first CreateSession.
 *
 * ```ts
 * const auth = await createAuth({ db, tokenTtlMs });
 * const sessions = createSessionService(store, { tokens: auth.issuer });
 * mount(SessionService, auth.wrapAdmin(SessionService, withValidation(SessionService, sessions), SESSION_SERVICE_ACCESS));
 * mount(PolicyService, auth.wrapPolicy(withValidation(PolicyService, policy)));
 * mount(AuthService, auth.wrapAdmin(AuthService, withValidation(AuthService, auth.authService), AUTH_SERVICE_ACCESS));
 * ```
 *
 * A sidecar needs none of this: it verifies tokens with
 * `createSessionTokenVerifier({ fetchJwks })` against GetSigningKeys and
 * wraps its PolicyService with `withSessionTokenAuth`.
 */
export async function createAuth(o: AuthOptions): Promise<Auth> {
  const now = o.now ?? Date.now;
  const tokenTtlMs = o.tokenTtlMs ?? DEFAULT_SESSION_TOKEN_TTL_MS;
  const apiKeys = createApiKeys({ db: o.db, now });
  const signingKeys = createSigningKeys({ db: o.db, now, retiredKeyLifetimeMs: tokenTtlMs });
  await signingKeys.active();
  const issuer = createSessionTokenIssuer({ signingKeys, now, ttlMs: tokenTtlMs });
  // The key set is one local read away, so an unknown kid may refetch
  // often; a new kid appears here only after a rotation anyway.
  const verifier = createSessionTokenVerifier({ fetchJwks: () => signingKeys.jwks(), now, refetchCooldownMs: 1_000 });

  // A session's agent never changes, so found owners are cached for good;
  // misses are not (the session may be created next).
  // Misses that arrive together (a sidecar starting on many sessions) are
  // looked up in one query.
  const owners = new LRUCache<string, string>({ max: 100_000 });
  const ownerReads = new BatchQueue<string, string | undefined>({
    maxBatch: 256,
    shards: Math.min(2, o.db.parallelism),
    run: async (ids) => {
      const { rows } = await o.db.query<{ session_id: string; agent_id: string }>(
        "SELECT session_id, agent_id FROM sessions WHERE session_id = ANY($1::text[])",
        [[...new Set(ids)]],
      );
      for (const r of rows) owners.set(r.session_id, r.agent_id);
      return ids.map((id, i) => ({ i, ok: true, value: owners.get(id) }));
    },
  });
  async function sessionAgent(sessionId: string): Promise<string | undefined> {
    return owners.get(sessionId) ?? ownerReads.submitAny(sessionId);
  }

  const authService = createAuthService({ apiKeys, signingKeys, issuer, sessionAgent });
  function wrapAdmin<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>, table: AccessTable<S>): Partial<ServiceImpl<S>> {
    return withApiKeyAuth(service, impl, { table, authenticate: (key) => apiKeys.authenticate(key), sessionAgent });
  }
  return {
    apiKeys,
    signingKeys,
    issuer,
    verifier,
    jwks: () => signingKeys.jwks(),
    sessionAgent,
    authService,
    wrapAdmin,
    wrapPolicy: (impl) => withSessionTokenAuth(PolicyService, impl, { verifier, now, otherwise: wrapAdmin(PolicyService, impl, POLICY_SERVICE_ACCESS) }),
    wrapApprovals: (impl) =>
      withSessionTokenAuth(ApprovalService, impl, {
        verifier,
        now,
        otherwise: wrapAdmin(ApprovalService, impl, APPROVAL_SERVICE_ACCESS),
        tokenMethods: APPROVAL_TOKEN_METHODS,
      }),
  };
}
