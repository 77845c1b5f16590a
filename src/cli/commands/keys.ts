import { create } from "@bufbuild/protobuf";
import {
  ApiKeyRoleSchema,
  CreateApiKeyRequestSchema,
  CreateApiKeyResponseSchema,
  ListApiKeysRequestSchema,
  ListApiKeysResponseSchema,
  RevokeApiKeyResponseSchema,
  type ApiKey,
  type CreateApiKeyRequest,
  type CreateApiKeyResponse,
  type ListApiKeysRequest,
} from "../../gen/warden/v1/auth_service_pb.js";
import { CliError } from "../cli-error.js";
import { databaseUrlFlag, DEFAULT_DATA_DIR } from "../../server/role-flags.js";
import { CLIENT_FLAGS, EXIT_OK, JSON_FLAG, type CommandContext, type CommandSpec } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { parseEnumWord } from "../flags.js";
import { enumWord, formatKeyValues, formatTable, formatTime } from "../format.js";
import type { FlagSpec, ParsedFlags } from "../parse-command-line.js";


const ROLES_TEXT = "admin, approver, auditor or agent";

const KEY_FLAGS: readonly FlagSpec[] = [
  { name: "agent", type: "string", value: "ID", description: "the agent an agent key is bound to (required with --role agent)" },
  { name: "description", type: "string", value: "TEXT", description: "who or what the key is for" },
];

/**
 * Builds the CreateApiKeyRequest of `warden keys create` and `keys
 * bootstrap`; `defaultRole` applies when --role is absent.
 */
export function buildCreateApiKeyRequest(flags: ParsedFlags, defaultRole?: string): CreateApiKeyRequest {
  const roleText = flags.string("role") ?? defaultRole;
  if (roleText === undefined) throw new CliError(`--role is required: ${ROLES_TEXT}`);
  const role = parseEnumWord("--role", ApiKeyRoleSchema, roleText);
  const agentId = flags.string("agent") ?? "";
  const isAgent = enumWord(ApiKeyRoleSchema, role) === "agent";
  if (isAgent && agentId === "") throw new CliError("--agent is required with --role agent");
  if (!isAgent && agentId !== "") throw new CliError("--agent is only for --role agent");
  return create(CreateApiKeyRequestSchema, { role, agentId, description: flags.string("description") ?? "" });
}

/** Builds the ListApiKeysRequest of `warden keys list` (one page). */
export function buildListApiKeysRequest(flags: ParsedFlags): ListApiKeysRequest {
  return create(ListApiKeysRequestSchema, {
    ...pageOf(flags),
    showRevoked: flags.boolean("show-revoked"),
  });
}

/** Formats one key's metadata as `key value` lines. */
export function formatApiKey(k: ApiKey): string {
  return formatKeyValues([
    ["key", k.keyId],
    ["role", enumWord(ApiKeyRoleSchema, k.role)],
    ["agent", k.agentId],
    ["description", k.description],
    ["created", formatTime(k.createTime)],
    ["last used", formatTime(k.lastUsedTime)],
    ["revoked", formatTime(k.revokeTime)],
  ]);
}

/** Formats keys as a table, newest first as listed. */
export function formatApiKeysTable(keys: readonly ApiKey[]): string {
  if (keys.length === 0) return "no API keys";
  return formatTable(
    [{ title: "key" }, { title: "role" }, { title: "agent" }, { title: "created" }, { title: "last used" }, { title: "revoked" }, { title: "description" }],
    keys.map((k) => [
      k.keyId,
      enumWord(ApiKeyRoleSchema, k.role),
      k.agentId || "-",
      formatTime(k.createTime) ?? "-",
      formatTime(k.lastUsedTime) ?? "-",
      formatTime(k.revokeTime) ?? "-",
      k.description,
    ]),
  );
}

/** A new key and its secret, which is printed this once. */
function formatCreated(res: CreateApiKeyResponse): string {
  const meta = res.apiKey === undefined ? "" : formatApiKey(res.apiKey);
  return `${meta}\n\nAPI key (shown once: store it now; send it as WARDEN_API_KEY or authorization: Bearer)\n  ${res.secret}`;
}

function printCreated(ctx: CommandContext, res: CreateApiKeyResponse): void {
  ctx.output(CreateApiKeyResponseSchema, res, () => formatCreated(res));
}

/** The `warden keys …` commands. */
export const KEY_COMMANDS: readonly CommandSpec[] = [
  {
    name: "keys bootstrap",
    args: [],
    summary: "create an API key directly in the store, without a server (the first admin key, or recovery)",
    notes:
      "Runs next to the store: --database-url for PostgreSQL, else the PGlite --data-dir (stop `warden serve` first: PGlite serves one process at a time).\nThe key is printed once; only its hash is stored. Then: WARDEN_API_KEY=<key> warden keys create --role …",
    flags: [
      { name: "role", type: "string", value: "ROLE", description: `${ROLES_TEXT} (default admin)` },
      ...KEY_FLAGS,
      { name: "database-url", type: "string", value: "URL", description: "PostgreSQL store (env DATABASE_URL)" },
      { name: "data-dir", type: "string", value: "DIR", description: `PGlite store (env WARDEN_DATA_DIR; default ${DEFAULT_DATA_DIR})` },
      JSON_FLAG,
    ],
    async run(ctx) {
      const req = buildCreateApiKeyRequest(ctx.flags, "admin");
      const databaseUrl = databaseUrlFlag(ctx.flags.string("database-url") ?? (ctx.env.DATABASE_URL || undefined));
      const dataDir = ctx.flags.string("data-dir") ?? (ctx.env.WARDEN_DATA_DIR || DEFAULT_DATA_DIR);
      // Loaded only here, so client commands never load the store or its drivers.
      const [{ createPgDatabase }, { createPgliteDatabase }, { migrate }, { createApiKeys }, { apiKeyToProto, roleFromProto }] = await Promise.all([
        import("../../store/pg-database.js"),
        import("../../store/pglite-database.js"),
        import("../../store/migrate.js"),
        import("../../auth/api-keys.js"),
        import("../../auth/auth-service.js"),
      ]);
      const db = databaseUrl !== undefined ? createPgDatabase({ connectionString: databaseUrl, maxConnections: 1 }) : await createPgliteDatabase(dataDir);
      try {
        await migrate(db);
        const { key, secret } = await createApiKeys({ db }).create({
          role: roleFromProto(req.role)!,
          agentId: req.agentId || undefined,
          description: req.description || "bootstrap",
        });
        printCreated(ctx, create(CreateApiKeyResponseSchema, { apiKey: apiKeyToProto(key), secret }));
      } finally {
        await db.close();
      }
      return EXIT_OK;
    },
  },
  {
    name: "keys create",
    args: [],
    summary: "create an API key (needs an admin key)",
    notes: `Roles: admin (everything), approver (read sessions, agents and actions; decide approvals), auditor (read-only), agent (one agent's own sessions; needs --agent).`,
    flags: [{ name: "role", type: "string", required: true, value: "ROLE", description: `${ROLES_TEXT} (required)` }, ...KEY_FLAGS, ...CLIENT_FLAGS],
    async run(ctx) {
      printCreated(ctx, await ctx.clients().auth.createApiKey(buildCreateApiKeyRequest(ctx.flags)));
      return EXIT_OK;
    },
  },
  {
    name: "keys list",
    args: [],
    summary: "list API keys (never their secrets), newest first",
    flags: [
      { name: "show-revoked", type: "boolean", description: "also list revoked keys" },
      ...pageFlags("keys", 50),
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().auth.listApiKeys(buildListApiKeysRequest(ctx.flags));
      ctx.output(ListApiKeysResponseSchema, res, () => {
        const table = formatApiKeysTable(res.apiKeys);
        return withNextPage(table, res.nextPageToken);
      });
      return EXIT_OK;
    },
  },
  {
    name: "keys revoke",
    args: ["KEY_ID"],
    summary: "revoke an API key at once and for good",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().auth.revokeApiKey({ keyId: ctx.args[0]! });
      ctx.output(RevokeApiKeyResponseSchema, res, () => (res.apiKey ? formatApiKey(res.apiKey) : ""));
      return EXIT_OK;
    },
  },
];
