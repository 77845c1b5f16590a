import { readFile, writeFile } from "node:fs/promises";
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { CreateSessionTokenResponseSchema } from "../../gen/warden/v1/auth_service_pb.js";
import { SessionStatus, SessionStatusSchema } from "../../gen/warden/v1/session_pb.js";
import {
  CreateSessionRequestSchema,
  CreateSessionResponseSchema,
  EndSessionRequestSchema,
  EndSessionResponseSchema,
  ExtendSessionRequestSchema,
  ExtendSessionResponseSchema,
  ForkSessionRequestSchema,
  ForkSessionResponseSchema,
  GetSessionResponseSchema,
  ImportSessionResponseSchema,
  ListSessionsRequestSchema,
  ListSessionsResponseSchema,
  PauseSessionRequestSchema,
  PauseSessionResponseSchema,
  ResumeSessionRequestSchema,
  ResumeSessionResponseSchema,
  RevokeSessionRequestSchema,
  RevokeSessionResponseSchema,
  SessionSnapshotSchema,
  type CreateSessionRequest,
  type EndSessionRequest,
  type ExtendSessionRequest,
  type ForkSessionRequest,
  type ListSessionsRequest,
  type PauseSessionRequest,
  type ResumeSessionRequest,
  type RevokeSessionRequest,
  type SessionSnapshot,
} from "../../gen/warden/v1/session_service_pb.js";
import { nameEnumField } from "../../transport/enum-field-errors.js";
import { CliError } from "../cli-error.js";
import { API_KEY_FLAG, CLIENT_FLAGS, EXIT_OK, IDEMPOTENCY_FLAG, SERVER_FLAG, type CommandSpec, type WardenClients } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { parseDuration, parseEnumWord, parseKeyValues, parseTimestamp } from "../flags.js";
import { formatSession, formatSessionsTable } from "../format-session.js";
import { formatKeyValues, formatTime } from "../format.js";
import type { FlagSpec, ParsedFlags } from "../parse-command-line.js";
import { buildPolicy, POLICY_FLAGS } from "../policy-flags.js";

/** The TTL of `sessions create` when neither --ttl nor --expires is given. */
export const DEFAULT_SESSION_TTL_MS = 60 * 60 * 1000;

/** The currency of `sessions create` when --currency is not given. */
export const DEFAULT_CURRENCY = "USD";

const LABEL_FLAG: FlagSpec = { name: "label", type: "string", multiple: true, value: "KEY=VALUE", description: "label the session (repeatable)" };
const DESCRIPTION_FLAG: FlagSpec = { name: "description", type: "string", value: "TEXT", description: "what the session is for" };
const IDLE_FLAG: FlagSpec = { name: "idle-timeout", type: "string", value: "DURATION", description: "expire after this long without a request" };
const EXPIRES_FLAG: FlagSpec = { name: "expires", type: "string", value: "TIME", description: "expire at this ISO 8601 time (instead of --ttl)" };

const CREATE_FLAGS: readonly FlagSpec[] = [
  { name: "agent", type: "string", required: true, value: "ID", description: "the agent the session is for (required)" },
  { name: "id", type: "string", value: "ID", description: "session id (generated when absent)" },
  { name: "owner", type: "string", value: "TEXT", description: "the person or system granting the session" },
  DESCRIPTION_FLAG,
  LABEL_FLAG,
  { name: "ttl", type: "string", value: "DURATION", description: `lifetime, e.g. 1h or 7d (default ${DEFAULT_SESSION_TTL_MS / 3_600_000}h)` },
  EXPIRES_FLAG,
  IDLE_FLAG,
  ...POLICY_FLAGS,
  IDEMPOTENCY_FLAG,
  ...CLIENT_FLAGS,
];

const FORK_FLAGS: readonly FlagSpec[] = [
  { name: "id", type: "string", value: "ID", description: "child session id (generated when absent)" },
  DESCRIPTION_FLAG,
  LABEL_FLAG,
  { name: "ttl", type: "string", value: "DURATION", description: "lifetime (default: the parent's expiry; cannot be later)" },
  EXPIRES_FLAG,
  IDLE_FLAG,
  ...POLICY_FLAGS,
  IDEMPOTENCY_FLAG,
  ...CLIENT_FLAGS,
];

function expiration(flags: ParsedFlags): CreateSessionRequest["expiration"] {
  const ttl = flags.string("ttl");
  const expires = flags.string("expires");
  if (ttl !== undefined && expires !== undefined) throw new CliError("--ttl and --expires cannot be used together");
  if (ttl !== undefined) return { case: "ttl", value: parseDuration("--ttl", ttl) };
  if (expires !== undefined) return { case: "expireTime", value: parseTimestamp("--expires", expires) };
  return { case: undefined };
}

function optionalDuration(flags: ParsedFlags, name: string) {
  const text = flags.string(name);
  return text === undefined ? undefined : parseDuration(`--${name}`, text);
}

/**
 * Builds the CreateSessionRequest of `warden sessions create`. Pure: all
 * values are checked here, with errors naming the flag.
 */
export function buildCreateSessionRequest(flags: ParsedFlags): CreateSessionRequest {
  const agentId = flags.string("agent");
  if (agentId === undefined || agentId === "") throw new CliError("--agent is required");
  let exp = expiration(flags);
  // The proto requires an expiry; a session is a time-boxed grant, so the
  // CLI picks a short one rather than make every quick test spell it out.
  if (exp.case === undefined) exp = { case: "ttl", value: durationFromMs(DEFAULT_SESSION_TTL_MS) };
  return create(CreateSessionRequestSchema, {
    sessionId: flags.string("id") ?? "",
    agentId,
    owner: flags.string("owner") ?? "",
    description: flags.string("description") ?? "",
    labels: parseKeyValues("--label", flags.strings("label")),
    policy: buildPolicy(flags, DEFAULT_CURRENCY),
    expiration: exp,
    idleTimeout: optionalDuration(flags, "idle-timeout"),
    idempotencyKey: flags.string("idempotency-key") ?? "",
  });
}

/**
 * Builds the ForkSessionRequest of `warden sessions fork`. Without
 * --currency the policy currency is left empty: the caller fills in the
 * parent's, which the child must use anyway.
 */
export function buildForkSessionRequest(parentSessionId: string, flags: ParsedFlags): ForkSessionRequest {
  return create(ForkSessionRequestSchema, {
    parentSessionId,
    sessionId: flags.string("id") ?? "",
    policy: buildPolicy(flags),
    expiration: expiration(flags),
    idleTimeout: optionalDuration(flags, "idle-timeout"),
    description: flags.string("description") ?? "",
    labels: parseKeyValues("--label", flags.strings("label")),
    idempotencyKey: flags.string("idempotency-key") ?? "",
  });
}

/** Builds the ListSessionsRequest of `warden sessions list` (one page). */
export function buildListSessionsRequest(flags: ParsedFlags): ListSessionsRequest {
  const status = flags.string("status");
  return create(ListSessionsRequestSchema, {
    agentId: flags.string("agent") ?? "",
    status: status === undefined ? SessionStatus.UNSPECIFIED : parseEnumWord("--status", SessionStatusSchema, status),
    labels: parseKeyValues("--label", flags.strings("label")),
    ...pageOf(flags),
  });
}

/** Builds the ExtendSessionRequest of `warden sessions extend`: exactly one of --by and --until. */
export function buildExtendSessionRequest(sessionId: string, flags: ParsedFlags): ExtendSessionRequest {
  const by = flags.string("by");
  const until = flags.string("until");
  if (by !== undefined && until !== undefined) throw new CliError("--by and --until cannot be used together");
  const idempotencyKey = flags.string("idempotency-key") ?? "";
  if (by !== undefined) return create(ExtendSessionRequestSchema, { sessionId, extension: { case: "extendBy", value: parseDuration("--by", by) }, idempotencyKey });
  if (until !== undefined) {
    return create(ExtendSessionRequestSchema, { sessionId, extension: { case: "expireTime", value: parseTimestamp("--until", until) }, idempotencyKey });
  }
  throw new CliError("sessions extend needs --by DURATION or --until TIME");
}

/** Builds the EndSessionRequest of `warden sessions end`. */
export function buildEndSessionRequest(sessionId: string, flags: ParsedFlags): EndSessionRequest {
  return create(EndSessionRequestSchema, { sessionId, reason: flags.string("reason") ?? "", idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the RevokeSessionRequest of `warden sessions revoke`; a reason is required for the record. */
export function buildRevokeSessionRequest(sessionId: string, flags: ParsedFlags): RevokeSessionRequest {
  const reason = flags.string("reason");
  if (reason === undefined || reason.trim() === "") throw new CliError("--reason is required: say why the session is revoked");
  return create(RevokeSessionRequestSchema, { sessionId, reason, idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the PauseSessionRequest of `warden sessions pause`. */
export function buildPauseSessionRequest(sessionId: string, flags: ParsedFlags): PauseSessionRequest {
  return create(PauseSessionRequestSchema, { sessionId, reason: flags.string("reason") ?? "", idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the ResumeSessionRequest of `warden sessions resume`. */
export function buildResumeSessionRequest(sessionId: string, flags: ParsedFlags): ResumeSessionRequest {
  return create(ResumeSessionRequestSchema, { sessionId, idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/**
 * Parses an export file (proto3 JSON of a SessionSnapshot). `source` names
 * the file in errors.
 */
export function parseSnapshot(source: string, text: string): SessionSnapshot {
  try {
    return fromJsonString(SessionSnapshotSchema, text);
  } catch (err) {
    throw new CliError(`${source}: not a session snapshot: ${nameEnumField((err as Error).message, SessionSnapshotSchema)}`);
  }
}

/** Serialises a snapshot in the stable export format: proto3 JSON, two-space indent. */
export function snapshotToJson(snapshot: SessionSnapshot): string {
  return `${toJsonString(SessionSnapshotSchema, snapshot, { prettySpaces: 2 })}\n`;
}

/**
 * The session's policy currency, fetched with GetSession. Used where the
 * CLI needs a currency the user did not give: the amount of an action, the
 * policy of a fork.
 */
export async function fetchSessionCurrency(clients: WardenClients, sessionId: string): Promise<string> {
  const { session } = await clients.sessions.getSession({ sessionId });
  const currency = session?.policy?.currencyCode;
  if (!currency) throw new CliError(`session ${sessionId} has no currency; pass --currency`);
  return currency;
}

async function readInput(path: string): Promise<string> {
  if (path !== "-") return readFile(path, "utf8");
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

const ID = ["SESSION_ID"];

/**
 * A session block followed by its token, which the agent needs for every
 * decision (and which the server never shows again).
 */
function withToken(text: string, token: string): string {
  return token === "" ? text : `${text}\n\nsession token (give it to the agent; send as authorization: Bearer)\n  ${token}`;
}

/** The `warden sessions …` commands. */
export const SESSION_COMMANDS: readonly CommandSpec[] = [
  {
    name: "sessions create",
    args: [],
    summary: "create a session for an agent",
    notes: "Money flags are decimal amounts of the policy currency (default USD), e.g. 200 or 12.50.\nDurations: 90s, 15m, 1h, 7d, 1h30m. Times: ISO 8601 with a zone, e.g. 2025-07-01T18:00:00Z.\nAn unset limit means no limit; 0 means nothing may be spent.",
    flags: CREATE_FLAGS,
    async run(ctx) {
      const req = buildCreateSessionRequest(ctx.flags);
      const res = await ctx.clients().sessions.createSession(req);
      ctx.output(CreateSessionResponseSchema, res, () => withToken(res.session ? formatSession(res.session) : "", res.sessionToken));
      return EXIT_OK;
    },
  },
  {
    name: "sessions get",
    args: ID,
    summary: "show a session with its policy, usage and windows",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().sessions.getSession({ sessionId: ctx.args[0]! });
      ctx.output(GetSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions token",
    args: ID,
    summary: "issue a new session token (for an imported session, or when the first one expires)",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().auth.createSessionToken({ sessionId: ctx.args[0]! });
      ctx.output(CreateSessionTokenResponseSchema, res, () =>
        formatKeyValues([
          ["session token", res.sessionToken],
          ["expires", formatTime(res.expireTime)],
        ]),
      );
      return EXIT_OK;
    },
  },
  {
    name: "sessions list",
    args: [],
    summary: "list sessions, newest first",
    notes: `Statuses: ${SessionStatusSchema.values.filter((v) => v.number !== 0).map((v) => v.localName.toLowerCase()).join(", ")}.`,
    flags: [
      { name: "agent", type: "string", value: "ID", description: "only this agent's sessions" },
      { name: "status", type: "string", value: "STATUS", description: "only sessions in this status, e.g. active" },
      { name: "label", type: "string", multiple: true, value: "KEY=VALUE", description: "only sessions with this label (repeatable; all must match)" },
      ...pageFlags("sessions", 50),
      { name: "all", type: "boolean", description: "follow page tokens and list every page" },
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const req = buildListSessionsRequest(ctx.flags);
      const all = ctx.flags.boolean("all");
      const res = await ctx.clients().sessions.listSessions(req);
      // --all gathers every page into one response, so --json still prints
      // a single ListSessionsResponse.
      while (all && res.nextPageToken !== "") {
        const next = await ctx.clients().sessions.listSessions({ ...req, pageToken: res.nextPageToken });
        res.sessions.push(...next.sessions);
        res.nextPageToken = next.nextPageToken;
      }
      ctx.output(ListSessionsResponseSchema, res, () => {
        const table = formatSessionsTable(res.sessions);
        return withNextPage(table, res.nextPageToken, " (or --all)");
      });
      return EXIT_OK;
    },
  },
  {
    name: "sessions extend",
    args: ID,
    summary: "move a session's expiry later",
    flags: [
      { name: "by", type: "string", value: "DURATION", description: "add this much to the current expiry" },
      { name: "until", type: "string", value: "TIME", description: "set this expiry (ISO 8601), later than the current one" },
      IDEMPOTENCY_FLAG,
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const req = buildExtendSessionRequest(ctx.args[0]!, ctx.flags);
      const res = await ctx.clients().sessions.extendSession(req);
      ctx.output(ExtendSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions end",
    args: ID,
    summary: "complete a session; open holds are released",
    flags: [{ name: "reason", type: "string", value: "TEXT", description: "why the session ended" }, IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().sessions.endSession(buildEndSessionRequest(ctx.args[0]!, ctx.flags));
      ctx.output(EndSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions revoke",
    args: ID,
    summary: "terminate a session; open holds are released",
    flags: [{ name: "reason", type: "string", required: true, value: "TEXT", description: "why the session is revoked (required)" }, IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().sessions.revokeSession(buildRevokeSessionRequest(ctx.args[0]!, ctx.flags));
      ctx.output(RevokeSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions pause",
    args: ID,
    summary: "pause a session until it is resumed",
    flags: [{ name: "reason", type: "string", value: "TEXT", description: "why the session is paused" }, IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().sessions.pauseSession(buildPauseSessionRequest(ctx.args[0]!, ctx.flags));
      ctx.output(PauseSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions resume",
    args: ID,
    summary: "resume a paused session",
    flags: [IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().sessions.resumeSession(buildResumeSessionRequest(ctx.args[0]!, ctx.flags));
      ctx.output(ResumeSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "sessions fork",
    args: ["PARENT_SESSION_ID"],
    summary: "create a child session whose spend also counts against the parent",
    notes: "The child's limits must fit in what the parent has left. Without --currency the parent's currency is used.",
    flags: FORK_FLAGS,
    async run(ctx) {
      const parentId = ctx.args[0]!;
      const req = buildForkSessionRequest(parentId, ctx.flags);
      if (req.policy && req.policy.currencyCode === "") req.policy.currencyCode = await fetchSessionCurrency(ctx.clients(), parentId);
      const res = await ctx.clients().sessions.forkSession(req);
      ctx.output(ForkSessionResponseSchema, res, () => withToken(res.session ? formatSession(res.session) : "", res.sessionToken));
      return EXIT_OK;
    },
  },
  {
    name: "sessions export",
    args: ID,
    summary: "write a session snapshot (session, policy, usage, history) as JSON",
    notes: "The snapshot is proto3 JSON of warden.v1.SessionSnapshot, the stable export format; `sessions import` reads it back.",
    flags: [{ name: "out", type: "string", value: "FILE", description: "write to FILE instead of stdout" }, SERVER_FLAG, API_KEY_FLAG],
    async run(ctx) {
      const sessionId = ctx.args[0]!;
      const { snapshot } = await ctx.clients().sessions.exportSession({ sessionId });
      if (snapshot === undefined) throw new CliError(`the server returned no snapshot for ${sessionId}`);
      const out = ctx.flags.string("out");
      if (out === undefined) {
        ctx.print(snapshotToJson(snapshot).trimEnd());
      } else {
        await writeFile(out, snapshotToJson(snapshot));
        ctx.print(`exported session ${sessionId} (${snapshot.actions.length} actions) to ${out}`);
      }
      return EXIT_OK;
    },
  },
  {
    name: "sessions import",
    args: ["FILE"],
    summary: "recreate a session from an export file (- reads stdin); its id must be free",
    flags: [IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const file = ctx.args[0]!;
      const snapshot = parseSnapshot(file, await readInput(file));
      const res = await ctx.clients().sessions.importSession({ snapshot, idempotencyKey: ctx.flags.string("idempotency-key") ?? "" });
      ctx.output(ImportSessionResponseSchema, res, () => (res.session ? formatSession(res.session) : ""));
      return EXIT_OK;
    },
  },
];
