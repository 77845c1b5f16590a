import { Code, ConnectError, createContextKey, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { peerCertificateKey } from "../transport/peer-certificate.js";
import { API_KEY_PREFIX } from "./api-keys.js";
import { bearerToken } from "./bearer-token.js";
import type { SessionTokenClaims, SessionTokenVerifier } from "./session-tokens.js";

/** The verified session token of a call, in the handler context's `values`. */
export const sessionTokenClaimsKey = createContextKey<SessionTokenClaims | undefined>(undefined, { description: "warden.sessionToken" });

/** Options of {@link withSessionTokenAuth}. */
export interface SessionTokenAuthOptions {
  readonly verifier: SessionTokenVerifier;
  /**
   * Serves calls that carry an API key (`Bearer wdn_…`) or no Bearer
   * credential at all (a client certificate may still identify them),
   * e.g. `withApiKeyAuth(PolicyService, impl, { table: POLICY_SERVICE_ACCESS, … })`
   * on the control plane, so sidecars and admins can call it too. Without
   * it, every call needs a session token.
   */
  readonly otherwise?: Partial<ServiceImpl<typeof PolicyService>>;
}

type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

/**
 * Wraps PolicyService so that every call needs `authorization: Bearer
 * <session token>` for the session the request names: every PolicyService
 * request carries `session_id`, and the token's `sub` must equal it.
 * Otherwise UNAUTHENTICATED: "missing credentials", "invalid token" (bad
 * shape, signature, key, algorithm — including `none` — or type), "token
 * expired", or "token is for another session".
 *
 * Verification is offline (see createSessionTokenVerifier). Whether the
 * session is still active is not the token's business: the service checks
 * that from the session, which is why extending a session needs no new
 * token.
 */
export function withSessionTokenAuth(
  impl: Partial<ServiceImpl<typeof PolicyService>>,
  options: SessionTokenAuthOptions,
): Partial<ServiceImpl<typeof PolicyService>> {
  const source = impl as Record<string, AnyImpl | undefined>;
  const otherwise = options.otherwise as Record<string, AnyImpl | undefined> | undefined;
  const wrapped: Record<string, AnyImpl> = {};
  for (const method of PolicyService.methods) {
    const fn = source[method.localName];
    if (typeof fn !== "function") continue;
    const fallback = otherwise?.[method.localName];
    // Every PolicyService method is unary; a streaming one added later
    // would need its own wrapper, so it is left out (UNIMPLEMENTED) rather
    // than served unchecked.
    if (method.methodKind !== "unary") continue;
    wrapped[method.localName] = async (req, ctx) => {
      const token = bearerToken(ctx.requestHeader);
      if (token !== undefined && !token.startsWith(API_KEY_PREFIX)) {
        const claims = await options.verifier.verify(token);
        if (claims.sessionId !== (req as { sessionId: string }).sessionId) {
          throw new ConnectError("token is for another session", Code.Unauthenticated);
        }
        ctx.values.set(sessionTokenClaimsKey, claims);
        return fn.call(impl, req, ctx);
      }
      // An API key, or a client certificate with no Bearer credential: the
      // fallback judges those.
      if (fallback !== undefined && (token !== undefined || ctx.values.get(peerCertificateKey) !== undefined)) {
        return fallback.call(otherwise, req, ctx);
      }
      throw new ConnectError(
        token === undefined ? "missing credentials: send authorization: Bearer <session token>" : "a session token is required here, not an API key",
        Code.Unauthenticated,
      );
    };
  }
  return wrapped as Partial<ServiceImpl<typeof PolicyService>>;
}
