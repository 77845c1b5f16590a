import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { type ApiKey, ApiKeyRole, ApiKeySchema, type AuthService, SigningKeySchema } from "../gen/warden/v1/auth_service_pb.js";
import type { ApiKeyRecord, ApiKeys } from "./api-keys.js";
import type { Role } from "./principal.js";
import type { SessionTokenIssuer } from "./session-tokens.js";
import type { SigningKeys } from "./signing-keys.js";

const ROLE_TO_PROTO: Record<Role, ApiKeyRole> = {
  admin: ApiKeyRole.ADMIN,
  approver: ApiKeyRole.APPROVER,
  auditor: ApiKeyRole.AUDITOR,
  agent: ApiKeyRole.AGENT,
};

/** The role of a proto enum value; undefined for UNSPECIFIED or unknown values. */
export function roleFromProto(role: ApiKeyRole): Role | undefined {
  return (Object.keys(ROLE_TO_PROTO) as Role[]).find((r) => ROLE_TO_PROTO[r] === role);
}

/** The proto enum value of a role. */
export function roleToProto(role: Role): ApiKeyRole {
  return ROLE_TO_PROTO[role];
}

/** An API key's metadata as the API returns it. */
export function apiKeyToProto(k: ApiKeyRecord): ApiKey {
  return create(ApiKeySchema, {
    keyId: k.keyId,
    role: ROLE_TO_PROTO[k.role],
    agentId: k.agentId ?? "",
    description: k.description,
    createTime: timestampFromMs(k.createTime),
    revokeTime: k.revokeTime === undefined ? undefined : timestampFromMs(k.revokeTime),
    lastUsedTime: k.lastUsedTime === undefined ? undefined : timestampFromMs(k.lastUsedTime),
  });
}

/** What {@link createAuthService} works on. */
export interface AuthServiceDeps {
  readonly apiKeys: ApiKeys;
  readonly signingKeys: Pick<SigningKeys, "jwks">;
  readonly issuer: SessionTokenIssuer;
  /** The agent of a session, or undefined if there is no such session. */
  readonly sessionAgent: (sessionId: string) => Promise<string | undefined>;
}

/**
 * AuthService over the store. It checks no credentials itself: mount it
 * behind `withApiKeyAuth` with AUTH_SERVICE_ACCESS (GetSigningKeys is
 * public there).
 */
export function createAuthService(d: AuthServiceDeps): ServiceImpl<typeof AuthService> {
  return {
    async createApiKey(req) {
      const role = roleFromProto(req.role);
      if (role === undefined) throw new ConnectError("role: must be set", Code.InvalidArgument);
      const { key, secret } = await d.apiKeys.create({ role, agentId: req.agentId || undefined, description: req.description });
      return { apiKey: apiKeyToProto(key), secret };
    },
    async listApiKeys(req) {
      const page = await d.apiKeys.list({ pageSize: req.pageSize, pageToken: req.pageToken, showRevoked: req.showRevoked });
      return { apiKeys: page.keys.map(apiKeyToProto), nextPageToken: page.nextPageToken };
    },
    async revokeApiKey(req) {
      return { apiKey: apiKeyToProto(await d.apiKeys.revoke(req.keyId)) };
    },
    async createSessionToken(req) {
      const agentId = await d.sessionAgent(req.sessionId);
      if (agentId === undefined) throw new ConnectError(`session_id: session "${req.sessionId}" not found`, Code.NotFound);
      const { token, expireTime } = await d.issuer.issue({ sessionId: req.sessionId, agentId });
      return { sessionToken: token, expireTime: timestampFromMs(expireTime) };
    },
    async getSigningKeys() {
      const { keys } = await d.signingKeys.jwks();
      return {
        keys: keys.map((k) =>
          create(SigningKeySchema, { kty: k.kty ?? "", crv: k.crv ?? "", x: k.x ?? "", kid: k.kid ?? "", alg: k.alg ?? "", use: k.use ?? "" }),
        ),
      };
    },
  };
}
