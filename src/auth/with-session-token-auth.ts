import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { peerCertificateKey } from "../transport/peer-certificate.js";
import { API_KEY_PREFIX } from "./api-keys.js";
import { bearerToken } from "./bearer-token.js";
import type { SessionTokenClaims, SessionTokenVerifier } from "./session-tokens.js";

/** The verified session token of a call, in the handler context's `values`. */
export const sessionTokenClaimsKey = createContextKey<SessionTokenClaims | undefined>(undefined, { description: "warden.sessionToken" });

/** Options of {@link withSessionTokenAuth}. */
export interface SessionTokenAuthOptions<S extends DescService> {
  readonly verifier: SessionTokenVerifier;
  /**
   * Serves calls that carry an API key (`Bearer wdn_…`) or no Bearer
   * credential at all (a client certificate may still identify them),
   * e.g. `withApiKeyAuth(PolicyService, impl, { table: POLICY_SERVICE_ACCESS, … })`
   * on the control plane, so sidecars and admins can call it too. Without
   * it, every call needs a session token.
   */
  readonly otherwise?: Partial<ServiceImpl<S>>;
  /**
   * The methods (local names) a session token may call; every request of
   * theirs names `session_id`. Default: every method of the service. The
   * others are served only through `otherwise` (an agent's token cannot,
   * say, approve its own approval).
   */
  readonly tokenMethods?: readonly string[];
  /** The clock a stream's token is held to, in epoch ms (the verifier's). Default Date.now. */
  readonly now?: () => number;
  /**
   * The only agent whose session tokens are served: a sidecar's. A valid
   * token of another agent's session is PERMISSION_DENIED, since the
   * sidecar watches only its own agent's sessions and would never hear of
   * that session's revocation. Default: any agent (the control plane,
   * which sees every session).
   */
  readonly agentId?: string;
}

/** PERMISSION_DENIED: a session of another agent than the one a sidecar serves. */
export function anotherAgentsSession(sessionId: string, agentId: string, served: string): ConnectError {
  return new ConnectError(`session_id: session "${sessionId}" belongs to agent "${agentId}"; this sidecar serves agent "${served}"`, Code.PermissionDenied);
}

type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

/**
 * Wraps a service whose requests name a session (PolicyService; the
 * agent's side of ApprovalService) so that every call needs
 * `authorization: Bearer <session token>` for the session the request
 * names: the token's `sub` must equal its `session_id`. Otherwise
 * UNAUTHENTICATED: "missing credentials", "invalid token" (bad shape,
 * signature, key, algorithm — including `none` — or type), "token
 * expired", or "token is for another session". A valid token is
 * PERMISSION_DENIED on a method it may not call (not in `tokenMethods`)
 * and for another agent than `agentId`.
 *
 * Verification is offline (see createSessionTokenVerifier). Whether the
 * session is still active is not the token's business: the service checks
 * that from the session, which is why extending a session needs no new
 * token. Unary and server-streaming methods are wrapped; any other kind is
 * left out (UNIMPLEMENTED) rather than served unchecked.
 */
export function withSessionTokenAuth<S extends DescService>(
  service: S,
  impl: Partial<ServiceImpl<S>>,
  options: SessionTokenAuthOptions<S>,
): Partial<ServiceImpl<S>> {
  const source = impl as Record<string, AnyImpl | undefined>;
  const otherwise = options.otherwise as Record<string, AnyImpl | undefined> | undefined;
  const tokenMethods = new Set(options.tokenMethods ?? service.methods.map((m) => m.localName));
  const now = options.now ?? Date.now;
  const wrapped: Record<string, AnyImpl> = {};
  for (const method of service.methods) {
    const fn = source[method.localName];
    if (typeof fn !== "function") continue;
    if (method.methodKind !== "unary" && method.methodKind !== "server_streaming") continue;
    const fallback = otherwise?.[method.localName];
    const tokenAllowed = tokenMethods.has(method.localName);
    /** Who serves the call: the implementation (token checked) or the fallback. */
    const route = async (req: unknown, ctx: HandlerContext): Promise<{ target: unknown; call: AnyImpl }> => {
      const token = bearerToken(ctx.requestHeader);
      if (token !== undefined && !token.startsWith(API_KEY_PREFIX)) {
        // Verified first: a credential that is no valid token (a typo, an
        // expired one) is UNAUTHENTICATED on every method, so the client
        // asks for new credentials rather than for more rights.
        const claims = await options.verifier.verify(token);
        if (!tokenAllowed) throw new ConnectError(`a session token cannot call ${method.name}: use an API key`, Code.PermissionDenied);
        if (claims.sessionId !== (req as { sessionId: string }).sessionId) {
          throw new ConnectError("token is for another session", Code.Unauthenticated);
        }
        if (options.agentId !== undefined && claims.agentId !== options.agentId) throw anotherAgentsSession(claims.sessionId, claims.agentId, options.agentId);
        ctx.values.set(sessionTokenClaimsKey, claims);
        return { target: impl, call: fn };
      }
      // An API key, or a client certificate with no Bearer credential: the
      // fallback judges those.
      if (fallback !== undefined && (token !== undefined || ctx.values.get(peerCertificateKey) !== undefined)) {
        return { target: otherwise, call: fallback };
      }
      throw new ConnectError(
        token === undefined ? "missing credentials: send authorization: Bearer <session token>" : "a session token is required here, not an API key",
        Code.Unauthenticated,
      );
    };
    wrapped[method.localName] =
      method.methodKind === "unary"
        ? async (req, ctx) => {
            const { target, call } = await route(req, ctx);
            return call.call(target, req, ctx);
          }
        : async function* (req, ctx) {
            const { target, call } = await route(req, ctx);
            const messages = call.call(target, req, ctx) as AsyncIterable<unknown>;
            const claims = target === impl ? ctx.values.get(sessionTokenClaimsKey) : undefined;
            if (claims === undefined) return yield* messages;
            // A stream outlives the check that opened it: past its token's
            // expiry it ends at its next message (a heartbeat at the latest),
            // as an API key's stream ends once the key is revoked.
            for await (const m of messages) {
              if (now() >= claims.expiresAt) throw new ConnectError("token expired", Code.Unauthenticated);
              yield m;
            }
          };
  }
  return wrapped as Partial<ServiceImpl<S>>;
}
