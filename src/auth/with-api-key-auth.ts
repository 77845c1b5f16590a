import type { PeerCertificate } from "node:tls";
import type { DescService, MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { peerCertificateKey } from "../transport/peer-certificate.js";
import { bearerToken } from "./bearer-token.js";
import { principalFromCertificate } from "./certificate-principal.js";
import { type Principal, principalKey, type Role } from "./principal.js";

/** What a request touches, for checking an `agent` principal against it. */
export interface AgentScope {
  /** Sessions named by the request; each must belong to the principal's agent. */
  readonly sessionIds?: readonly string[];
  /** Agents named by the request; each must be the principal's agent (an empty id counts: "all agents"). */
  readonly agentIds?: readonly string[];
}

/** Who may call one method. */
export interface MethodAccess<I = unknown> {
  /** Roles that may call it. `admin` is not implied: list it. */
  readonly roles: readonly Role[];
  /** Anyone may call it, without a credential (e.g. the public signing keys). */
  readonly public?: boolean;
  /**
   * What a request touches. Required for a method open to `agent`: an agent
   * principal may only touch its own agent and that agent's sessions.
   * Without it, agents are refused (fail closed).
   */
  readonly scope?: (request: I) => AgentScope;
}

/**
 * Who may call each method of a service, by the method's local name. Every
 * method must be listed, so a method added to a proto cannot slip through
 * without a decision.
 */
export type AccessTable<S extends DescService> = {
  readonly [K in keyof S["method"]]: MethodAccess<MessageShape<S["method"][K]["input"]>>;
};

/** Options of {@link withApiKeyAuth}. */
export interface ApiKeyAuthOptions<S extends DescService> {
  readonly table: AccessTable<S>;
  /** The principal of a whole API key, or UNAUTHENTICATED (`ApiKeys.authenticate`). */
  readonly authenticate: (key: string) => Promise<Principal>;
  /** The agent a session belongs to, or undefined if there is no such session. */
  readonly sessionAgent: (sessionId: string) => Promise<string | undefined>;
  /**
   * The principal of a verified client certificate (mTLS), used when a
   * call has no Bearer credential. {@link principalFromCertificate} by
   * default.
   */
  readonly certificatePrincipal?: (cert: PeerCertificate) => Principal | undefined;
}

type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

const ADMIN_ONLY: MethodAccess = { roles: ["admin"] };

/**
 * Wraps every method of a service implementation so that it needs a
 * credential whose role the access table allows:
 *
 * - the credential is `authorization: Bearer <API key>`, or else the
 *   client certificate the listener verified (mTLS);
 * - missing, malformed, unknown or revoked → UNAUTHENTICATED;
 * - a role the method's entry does not list → PERMISSION_DENIED;
 * - an `agent` principal may only touch its own agent and that agent's
 *   sessions (the entry's `scope` says what a request touches) →
 *   PERMISSION_DENIED otherwise.
 *
 * The principal is put in `ctx.values` under {@link principalKey}. Like
 * `withValidation`, the wrapper is itself a `ServiceImpl`, so both
 * listeners (grpc-js and Connect) enforce the same rules; it is generic over
 * any service, given its table. Messages never echo a credential.
 *
 * Mount it outside validation, so that unauthenticated callers learn
 * nothing about what a valid request looks like.
 */
export function withApiKeyAuth<S extends DescService>(
  service: S,
  impl: Partial<ServiceImpl<S>>,
  options: ApiKeyAuthOptions<S>,
): Partial<ServiceImpl<S>> {
  const source = impl as Record<string, AnyImpl | undefined>;
  const table = options.table as Record<string, MethodAccess | undefined>;
  const certificatePrincipal = options.certificatePrincipal ?? principalFromCertificate;
  const wrapped: Record<string, AnyImpl> = {};

  async function principalOf(ctx: HandlerContext): Promise<Principal> {
    const bearer = bearerToken(ctx.requestHeader);
    if (bearer !== undefined) return options.authenticate(bearer);
    const cert = ctx.values.get(peerCertificateKey);
    const fromCert = cert === undefined ? undefined : certificatePrincipal(cert);
    if (fromCert !== undefined) return fromCert;
    throw new ConnectError("missing credentials: send authorization: Bearer <API key>", Code.Unauthenticated);
  }

  async function checkScope(procedure: string, access: MethodAccess, principal: Principal, request: unknown): Promise<void> {
    if (principal.role !== "agent") return;
    const own = principal.agentId;
    if (access.scope === undefined || own === undefined) {
      throw new ConnectError(`agent credentials may not call ${procedure}`, Code.PermissionDenied);
    }
    const scope = access.scope(request);
    for (const agentId of scope.agentIds ?? []) {
      if (agentId !== own) throw new ConnectError(`this credential may only act for agent "${own}"`, Code.PermissionDenied);
    }
    for (const sessionId of new Set(scope.sessionIds ?? [])) {
      const owner = await options.sessionAgent(sessionId);
      // Answered here, not left to the handler, so no session can appear
      // between this check and the call.
      if (owner === undefined) throw new ConnectError(`session_id: session "${sessionId}" not found`, Code.NotFound);
      if (owner !== own) throw new ConnectError(`session "${sessionId}" belongs to another agent`, Code.PermissionDenied);
    }
  }

  async function admit(procedure: string, access: MethodAccess, ctx: HandlerContext): Promise<Principal> {
    const principal = await principalOf(ctx);
    if (!access.roles.includes(principal.role)) {
      throw new ConnectError(`role "${principal.role}" may not call ${procedure}`, Code.PermissionDenied);
    }
    ctx.values.set(principalKey, principal);
    return principal;
  }

  /**
   * A response stream outlives the check that opened it: its key is
   * authenticated again (through the same short memo) before each message,
   * so the open streams of a revoked key end with UNAUTHENTICATED at their
   * next message (a watch's heartbeat at the latest).
   */
  async function* stillAdmitted(messages: AsyncIterable<unknown>, ctx: HandlerContext): AsyncIterable<unknown> {
    for await (const m of messages) {
      await principalOf(ctx);
      yield m;
    }
  }

  for (const method of service.methods) {
    const fn = source[method.localName];
    if (typeof fn !== "function") continue;
    // A method without an entry is for admins only (fail closed); the
    // table's type makes a missing entry a compile error anyway.
    const access = table[method.localName] ?? ADMIN_ONLY;
    if (access.public === true) {
      wrapped[method.localName] = (req, ctx) => fn.call(impl, req, ctx);
      continue;
    }
    const procedure = `${service.typeName}/${method.name}`;
    switch (method.methodKind) {
      case "unary":
        wrapped[method.localName] = async (req, ctx) => {
          const principal = await admit(procedure, access, ctx);
          await checkScope(procedure, access, principal, req);
          return fn.call(impl, req, ctx);
        };
        break;
      case "server_streaming":
        wrapped[method.localName] = async function* (req, ctx) {
          const principal = await admit(procedure, access, ctx);
          await checkScope(procedure, access, principal, req);
          yield* stillAdmitted(fn.call(impl, req, ctx) as AsyncIterable<unknown>, ctx);
        };
        break;
      case "client_streaming":
        wrapped[method.localName] = async (reqs, ctx) => {
          const principal = await admit(procedure, access, ctx);
          return fn.call(impl, checkEach(reqs as AsyncIterable<unknown>, (r) => checkScope(procedure, access, principal, r)), ctx);
        };
        break;
      case "bidi_streaming":
        wrapped[method.localName] = async function* (reqs, ctx) {
          const principal = await admit(procedure, access, ctx);
          yield* stillAdmitted(
            fn.call(impl, checkEach(reqs as AsyncIterable<unknown>, (r) => checkScope(procedure, access, principal, r)), ctx) as AsyncIterable<unknown>,
            ctx,
          );
        };
        break;
    }
  }
  return wrapped as Partial<ServiceImpl<S>>;
}

/** Each message of a request stream, checked before the handler sees it. */
async function* checkEach<T>(requests: AsyncIterable<T>, check: (request: T) => Promise<void>): AsyncIterable<T> {
  for await (const req of requests) {
    await check(req);
    yield req;
  }
}
