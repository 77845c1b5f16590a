import { create } from "@bufbuild/protobuf";
import { Outcome } from "../../gen/warden/v1/decision_pb.js";
import { MoneySchema, type Money } from "../../gen/warden/v1/money_pb.js";
import {
  ActionSchema,
  AuthorizeRequestSchema,
  AuthorizeResponseSchema,
  CaptureRequestSchema,
  CaptureResponseSchema,
  CheckRequestSchema,
  CheckResponseSchema,
  ListActionsRequestSchema,
  ListActionsResponseSchema,
  VoidRequestSchema,
  VoidResponseSchema,
  type Action,
  type AuthorizeRequest,
  type CaptureRequest,
  type CheckRequest,
  type ListActionsRequest,
  type VoidRequest,
} from "../../gen/warden/v1/policy_service_pb.js";
import { CliError } from "../cli-error.js";
import { CLIENT_FLAGS, EXIT_NOT_ALLOWED, EXIT_OK, IDEMPOTENCY_FLAG, type CommandContext, type CommandSpec } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { parseCurrency, parseKeyValues, parsePositiveMoneyFlag } from "../flags.js";
import { formatActionRecord, formatActionsTable } from "../format-action.js";
import { formatDecision } from "../format-decision.js";
import { formatTime } from "../format.js";
import type { FlagSpec, ParsedFlags } from "../parse-command-line.js";
import { fetchSessionCurrency } from "./sessions.js";

/** The action type of authorize and check when --type is not given. */
export const DEFAULT_ACTION_TYPE = "payment";

const CURRENCY_FLAG: FlagSpec = {
  name: "currency",
  type: "string",
  value: "CODE",
  description: "currency of --amount (default: the session's currency)",
};

const ACTION_FLAGS: readonly FlagSpec[] = [
  { name: "amount", type: "string", value: "AMOUNT", description: "amount in decimal major units, e.g. 12.50" },
  CURRENCY_FLAG,
  { name: "type", type: "string", value: "TYPE", description: `action type (default ${DEFAULT_ACTION_TYPE})` },
  { name: "merchant", type: "string", value: "M", description: "who is paid" },
  { name: "meta", type: "string", multiple: true, value: "KEY=VALUE", description: "context recorded with the decision (repeatable)" },
  { name: "description", type: "string", value: "TEXT", description: "what the action is" },
  IDEMPOTENCY_FLAG,
  ...CLIENT_FLAGS,
];

const PAGE_FLAGS: readonly FlagSpec[] = [
  ...pageFlags("actions", 50),
  { name: "all", type: "boolean", description: "follow page tokens and list every page" },
];

/**
 * Reads --amount and --currency. Without --currency the returned Money has
 * an empty currency, which the command fills in with the session's (one
 * GetSession call) — after every local check has passed.
 */
export function buildAmount(flags: ParsedFlags): Money | undefined {
  const amount = flags.string("amount");
  const currency = flags.string("currency");
  if (amount === undefined) {
    if (currency !== undefined) throw new CliError("--currency needs --amount");
    return undefined;
  }
  return create(MoneySchema, {
    currencyCode: currency === undefined ? "" : parseCurrency("--currency", currency),
    amountMicros: parsePositiveMoneyFlag("--amount", amount),
  });
}

/** Builds the Action of `warden authorize` and `warden check`. */
export function buildAction(flags: ParsedFlags): Action {
  const type = flags.string("type") ?? DEFAULT_ACTION_TYPE;
  if (!/^[a-z][a-z0-9_.-]{0,63}$/.test(type)) {
    throw new CliError(`--type: "${type}" is not an action type; use lower case letters, digits, "_", "." or "-", e.g. payment`);
  }
  return create(ActionSchema, {
    type,
    amount: buildAmount(flags),
    merchant: flags.string("merchant") ?? "",
    metadata: parseKeyValues("--meta", flags.strings("meta")),
    description: flags.string("description") ?? "",
  });
}

/** Builds the AuthorizeRequest of `warden authorize`. */
export function buildAuthorizeRequest(sessionId: string, flags: ParsedFlags): AuthorizeRequest {
  return create(AuthorizeRequestSchema, { sessionId, action: buildAction(flags), idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the CheckRequest of `warden check`. */
export function buildCheckRequest(sessionId: string, flags: ParsedFlags): CheckRequest {
  return create(CheckRequestSchema, { sessionId, action: buildAction(flags), idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the CaptureRequest of `warden capture`; without --amount the whole hold is captured. */
export function buildCaptureRequest(sessionId: string, authorizationId: string, flags: ParsedFlags): CaptureRequest {
  return create(CaptureRequestSchema, {
    sessionId,
    authorizationId,
    amount: buildAmount(flags),
    idempotencyKey: flags.string("idempotency-key") ?? "",
  });
}

/** Builds the VoidRequest of `warden void`. */
export function buildVoidRequest(sessionId: string, authorizationId: string, flags: ParsedFlags): VoidRequest {
  return create(VoidRequestSchema, { sessionId, authorizationId, idempotencyKey: flags.string("idempotency-key") ?? "" });
}

/** Builds the ListActionsRequest of `warden actions` (one page). */
export function buildListActionsRequest(sessionId: string, flags: ParsedFlags): ListActionsRequest {
  return create(ListActionsRequestSchema, {
    sessionId,
    ...pageOf(flags),
  });
}

/**
 * The exit code of a decision: 0 for ALLOW, 2 for DENY and NEEDS_APPROVAL
 * (and anything this build does not know, which must not read as allowed).
 */
export function exitCodeOf(outcome: Outcome | undefined): number {
  return outcome === Outcome.ALLOW ? EXIT_OK : EXIT_NOT_ALLOWED;
}

async function fillCurrency(ctx: CommandContext, sessionId: string, amount: Money | undefined): Promise<void> {
  if (amount !== undefined && amount.currencyCode === "") amount.currencyCode = await fetchSessionCurrency(ctx.clients(), sessionId);
}

const DECISION_NOTES =
  "Exit code 0 when the answer is ALLOW, 2 when it is DENY or NEEDS_APPROVAL (printed on stdout, not an error), 1 on errors.\nNEEDS_APPROVAL prints the approval that holds the amount: wait with `warden approvals watch`, then capture its action once approved.\nWithout --currency, --amount is in the session's currency (fetched with GetSession).";

/** The decision commands: authorize, capture, void, check, actions. */
export const ACTION_COMMANDS: readonly CommandSpec[] = [
  {
    name: "authorize",
    args: ["SESSION_ID"],
    summary: "decide an action and, when allowed, hold its amount",
    notes: DECISION_NOTES,
    flags: ACTION_FLAGS,
    async run(ctx) {
      const sessionId = ctx.args[0]!;
      const req = buildAuthorizeRequest(sessionId, ctx.flags);
      await fillCurrency(ctx, sessionId, req.action?.amount);
      const res = await ctx.clients().policy.authorize(req);
      ctx.output(AuthorizeResponseSchema, res, () =>
        res.decision
          ? formatDecision(res.decision, req.action?.amount?.currencyCode, [
              ["authorization", res.authorizationId],
              ["hold expires", formatTime(res.holdExpireTime)],
              ["approval", res.approvalId || undefined],
              ["approval expires", formatTime(res.approvalExpireTime)],
            ])
          : "",
      );
      return exitCodeOf(res.decision?.outcome);
    },
  },
  {
    name: "capture",
    args: ["SESSION_ID", "AUTHORIZATION_ID"],
    summary: "commit a hold (all of it, or --amount) and release the rest",
    notes: "Without --currency, --amount is in the session's currency.",
    flags: [
      { name: "amount", type: "string", value: "AMOUNT", description: "commit this much, at most the held amount (default: all)" },
      CURRENCY_FLAG,
      IDEMPOTENCY_FLAG,
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const [sessionId, authorizationId] = [ctx.args[0]!, ctx.args[1]!];
      const req = buildCaptureRequest(sessionId, authorizationId, ctx.flags);
      await fillCurrency(ctx, sessionId, req.amount);
      const res = await ctx.clients().policy.capture(req);
      ctx.output(CaptureResponseSchema, res, () => (res.authorization ? formatActionRecord(res.authorization) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "void",
    args: ["SESSION_ID", "AUTHORIZATION_ID"],
    summary: "release a hold",
    flags: [IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().policy.void(buildVoidRequest(ctx.args[0]!, ctx.args[1]!, ctx.flags));
      ctx.output(VoidResponseSchema, res, () => (res.authorization ? formatActionRecord(res.authorization) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "check",
    args: ["SESSION_ID"],
    summary: "decide an action and, when allowed, commit it at once",
    notes: DECISION_NOTES,
    flags: ACTION_FLAGS,
    async run(ctx) {
      const sessionId = ctx.args[0]!;
      const req = buildCheckRequest(sessionId, ctx.flags);
      await fillCurrency(ctx, sessionId, req.action?.amount);
      const res = await ctx.clients().policy.check(req);
      ctx.output(CheckResponseSchema, res, () =>
        res.decision ? formatDecision(res.decision, req.action?.amount?.currencyCode, [
              ["action", res.actionId],
              ["approval", res.approvalId || undefined],
              ["approval expires", formatTime(res.approvalExpireTime)],
            ])
          : "",
      );
      return exitCodeOf(res.decision?.outcome);
    },
  },
  {
    name: "actions",
    args: ["SESSION_ID"],
    summary: "list a session's decisions, newest first",
    flags: [...PAGE_FLAGS, ...CLIENT_FLAGS],
    async run(ctx) {
      const req = buildListActionsRequest(ctx.args[0]!, ctx.flags);
      const all = ctx.flags.boolean("all");
      const res = await ctx.clients().policy.listActions(req);
      while (all && res.nextPageToken !== "") {
        const next = await ctx.clients().policy.listActions({ ...req, pageToken: res.nextPageToken });
        res.actions.push(...next.actions);
        res.nextPageToken = next.nextPageToken;
      }
      ctx.output(ListActionsResponseSchema, res, () => {
        const table = formatActionsTable(res.actions);
        return withNextPage(table, res.nextPageToken, " (or --all)");
      });
      return EXIT_OK;
    },
  },
];
