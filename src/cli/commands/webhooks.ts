import { create } from "@bufbuild/protobuf";
import {
  type CreateWebhookEndpointRequest,
  CreateWebhookEndpointRequestSchema,
  CreateWebhookEndpointResponseSchema,
  DeleteWebhookEndpointResponseSchema,
  EnableWebhookEndpointResponseSchema,
  GetWebhookEndpointResponseSchema,
  ListWebhookEndpointsResponseSchema,
  type RotateWebhookSecretRequest,
  RotateWebhookSecretRequestSchema,
  RotateWebhookSecretResponseSchema,
  type WebhookEndpoint,
  WebhookEndpointStatusSchema,
} from "../../gen/warden/v1/webhook_service_pb.js";
import { EVENT_TYPES } from "../../store/outbox.js";
import { CliError } from "../cli-error.js";
import { CLIENT_FLAGS, EXIT_OK, type CommandSpec } from "../command.js";
import { parseDuration } from "../flags.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { enumWord, formatKeyValues, formatTable, formatTime } from "../format.js";
import type { ParsedFlags } from "../parse-command-line.js";

/**
 * Builds the CreateWebhookEndpointRequest of `warden webhooks create`:
 * `--event` repeats (or takes a comma list); `--event all` subscribes to
 * every type. The secret is best left to the server (32 random bytes).
 */
export function buildCreateWebhookEndpointRequest(url: string, flags: ParsedFlags): CreateWebhookEndpointRequest {
  const words = flags.strings("event").flatMap((e) => e.split(",")).map((e) => e.trim()).filter((e) => e !== "");
  if (words.length === 0) throw new CliError(`--event is required: one or more of ${EVENT_TYPES.join(", ")}, or all`);
  const types = words.includes("all") ? [...EVENT_TYPES] : [...new Set(words)];
  for (const t of types) {
    if (!(EVENT_TYPES as readonly string[]).includes(t)) throw new CliError(`--event: "${t}" is not an event type (${EVENT_TYPES.join(", ")})`);
  }
  return create(CreateWebhookEndpointRequestSchema, { url, eventTypes: types, secret: flags.string("secret") ?? "" });
}

/**
 * Builds the RotateWebhookSecretRequest of `warden webhooks rotate-secret`:
 * `--keep-previous 0` stops signing with the old secret at once (a leaked
 * one); unset, the server keeps it for 24 h.
 */
export function buildRotateWebhookSecretRequest(endpointId: string, flags: ParsedFlags): RotateWebhookSecretRequest {
  const keep = flags.string("keep-previous");
  return create(RotateWebhookSecretRequestSchema, {
    endpointId,
    secret: flags.string("secret") ?? "",
    previousSecretTtl: keep === undefined ? undefined : keep.trim() === "0" ? {} : parseDuration("--keep-previous", keep),
  });
}

/** Formats one endpoint as `key value` lines (never a secret: the API does not return it). */
export function formatWebhookEndpoint(e: WebhookEndpoint): string {
  return formatKeyValues([
    ["endpoint", e.endpointId],
    ["url", e.url],
    ["events", e.eventTypes.join(", ")],
    ["status", enumWord(WebhookEndpointStatusSchema, e.status)],
    ["disabled because", e.disabledReason || undefined],
    ["failures in a row", String(e.consecutiveFailures)],
    ["created", formatTime(e.createTime)],
    ["old secrets sign until", e.previousSecretsExpireTime === undefined ? undefined : formatTime(e.previousSecretsExpireTime)],
  ]);
}

function formatEndpointsTable(endpoints: readonly WebhookEndpoint[]): string {
  if (endpoints.length === 0) return "no webhook endpoints";
  return formatTable(
    [{ title: "endpoint" }, { title: "status" }, { title: "failures", align: "right" }, { title: "url" }, { title: "events" }],
    endpoints.map((e) => [e.endpointId, enumWord(WebhookEndpointStatusSchema, e.status), String(e.consecutiveFailures), e.url, e.eventTypes.join(",")]),
  );
}

/** The `warden webhooks …` commands. */
export const WEBHOOK_COMMANDS: readonly CommandSpec[] = [
  {
    name: "webhooks create",
    args: ["URL"],
    summary: "register an endpoint that receives signed session events (needs an admin key)",
    notes: `Event types: ${EVENT_TYPES.join(", ")} (or all).\nThe signing secret is printed once. Receivers verify warden-signature (see README, Webhooks).`,
    flags: [
      { name: "event", type: "string", multiple: true, value: "TYPE", description: "an event type to deliver; repeat or comma-separate; all: every type (required)" },
      { name: "secret", type: "string", value: "SECRET", description: "signing secret of at least 16 characters (default: 32 random bytes, generated)" },
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().webhooks.createWebhookEndpoint(buildCreateWebhookEndpointRequest(ctx.args[0]!, ctx.flags));
      ctx.output(CreateWebhookEndpointResponseSchema, res, () => {
        const meta = res.endpoint === undefined ? "" : formatWebhookEndpoint(res.endpoint);
        return `${meta}\n\nsigning secret (shown once: store it now)\n  ${res.secret}`;
      });
      return EXIT_OK;
    },
  },
  {
    name: "webhooks list",
    args: [],
    summary: "list webhook endpoints, newest first",
    flags: [
      ...pageFlags("endpoints", 50),
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().webhooks.listWebhookEndpoints({
        ...pageOf(ctx.flags),
      });
      ctx.output(ListWebhookEndpointsResponseSchema, res, () => {
        const table = formatEndpointsTable(res.endpoints);
        return withNextPage(table, res.nextPageToken);
      });
      return EXIT_OK;
    },
  },
  {
    name: "webhooks get",
    args: ["ENDPOINT_ID"],
    summary: "show an endpoint: status, why it was disabled, failures in a row",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().webhooks.getWebhookEndpoint({ endpointId: ctx.args[0]! });
      ctx.output(GetWebhookEndpointResponseSchema, res, () => (res.endpoint ? formatWebhookEndpoint(res.endpoint) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "webhooks delete",
    args: ["ENDPOINT_ID"],
    summary: "delete an endpoint and its undelivered events",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().webhooks.deleteWebhookEndpoint({ endpointId: ctx.args[0]! });
      ctx.output(DeleteWebhookEndpointResponseSchema, res, () => `deleted ${ctx.args[0]!}`);
      return EXIT_OK;
    },
  },
  {
    name: "webhooks rotate-secret",
    args: ["ENDPOINT_ID"],
    summary: "give an endpoint a new signing secret; the old one signs too for a while (needs an admin key)",
    notes: "Until the old secret's period ends every delivery carries a v1 signature under each secret,\nso receivers can switch to the new one without a delivery failing verification.",
    flags: [
      { name: "secret", type: "string", value: "SECRET", description: "the new secret, of at least 16 characters (default: 32 random bytes, generated)" },
      { name: "keep-previous", type: "string", value: "DURATION", description: "how long the old secret signs too, e.g. 1h, 7d at most; 0: not at all (a leaked secret) (default 24h)" },
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().webhooks.rotateWebhookSecret(buildRotateWebhookSecretRequest(ctx.args[0]!, ctx.flags));
      ctx.output(RotateWebhookSecretResponseSchema, res, () => {
        const meta = res.endpoint === undefined ? "" : formatWebhookEndpoint(res.endpoint);
        return `${meta}\n\nnew signing secret (shown once: store it now)\n  ${res.secret}`;
      });
      return EXIT_OK;
    },
  },
  {
    name: "webhooks enable",
    args: ["ENDPOINT_ID"],
    summary: "re-enable a disabled endpoint; its pending deliveries are retried at once",
    flags: CLIENT_FLAGS,
    async run(ctx) {
      const res = await ctx.clients().webhooks.enableWebhookEndpoint({ endpointId: ctx.args[0]! });
      ctx.output(EnableWebhookEndpointResponseSchema, res, () => (res.endpoint ? formatWebhookEndpoint(res.endpoint) : ""));
      return EXIT_OK;
    },
  },
];
