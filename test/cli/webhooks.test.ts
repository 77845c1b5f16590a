import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type CreateWebhookEndpointRequest,
  type RotateWebhookSecretRequest,
  WebhookEndpointSchema,
  WebhookEndpointStatus,
} from "../../src/gen/warden/v1/webhook_service_pb.js";
import { buildCreateWebhookEndpointRequest, buildRotateWebhookSecretRequest } from "../../src/cli/commands/webhooks.js";
import { EVENT_TYPES } from "../../src/store/outbox.js";
import { flagsOf, runWarden } from "./cli-harness.js";

const endpoint = (over: MessageInitShape<typeof WebhookEndpointSchema> = {}) =>
  create(WebhookEndpointSchema, {
    endpointId: "whe_1",
    url: "https://hooks.example.com/warden",
    eventTypes: ["session.revoked"],
    status: WebhookEndpointStatus.ACTIVE,
    createTime: timestampFromMs(Date.UTC(2026, 10, 21)),
    ...over,
  });

describe("warden webhooks", () => {
  test("create: --event repeats or takes a comma list; all means every type", () => {
    const req = buildCreateWebhookEndpointRequest("https://x.example/h", flagsOf("webhooks create", ["--event", "session.revoked,session.paused", "--event", "session.revoked"]));
    assert.deepEqual(req.eventTypes, ["session.revoked", "session.paused"]);
    assert.equal(req.secret, "");
    assert.deepEqual(buildCreateWebhookEndpointRequest("https://x.example/h", flagsOf("webhooks create", ["--event", "all"])).eventTypes, [...EVENT_TYPES]);
    assert.throws(() => buildCreateWebhookEndpointRequest("https://x.example/h", flagsOf("webhooks create", [])), /--event is required/);
    assert.throws(() => buildCreateWebhookEndpointRequest("https://x.example/h", flagsOf("webhooks create", ["--event", "session.nope"])), /not an event type/);
  });

  test("create sends the request and prints the secret once", async () => {
    const r = await runWarden(["webhooks", "create", "https://hooks.example.com/warden", "--event", "session.revoked", "--secret", "whsec_0123456789abcdef"], {
      webhooks: {
        createWebhookEndpoint: (req: CreateWebhookEndpointRequest) => ({ endpoint: endpoint({ url: req.url, eventTypes: req.eventTypes }), secret: req.secret }),
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.calls[0]!.method, "createWebhookEndpoint");
    assert.match(r.stdout, /endpoint\s+whe_1/);
    assert.match(r.stdout, /signing secret \(shown once/);
    assert.match(r.stdout, /whsec_0123456789abcdef/);
  });

  test("rotate-secret: --keep-previous takes a duration, or 0 for none; unset leaves it to the server", () => {
    const req = (...args: string[]) => buildRotateWebhookSecretRequest("whe_1", flagsOf("webhooks rotate-secret", args));
    assert.equal(req().previousSecretTtl, undefined);
    assert.equal(req().secret, "");
    assert.deepEqual([req("--keep-previous", "0").previousSecretTtl?.seconds, req("--keep-previous", "0").previousSecretTtl?.nanos], [0n, 0]);
    assert.equal(req("--keep-previous", "1h30m").previousSecretTtl?.seconds, 5400n);
    assert.equal(req("--secret", "whsec_0123456789abcdef").secret, "whsec_0123456789abcdef");
    assert.throws(() => req("--keep-previous", "soon"), /--keep-previous: "soon" is not a duration/);
  });

  test("rotate-secret sends the request and prints the new secret once, and until when the old one signs", async () => {
    const r = await runWarden(["webhooks", "rotate-secret", "whe_1", "--keep-previous", "2h"], {
      webhooks: {
        rotateWebhookSecret: (req: RotateWebhookSecretRequest) => ({
          endpoint: endpoint({ endpointId: req.endpointId, previousSecretsExpireTime: timestampFromMs(Date.UTC(2026, 10, 21, 2)) }),
          secret: "whsec_new0123456789abcdef",
        }),
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.calls[0]!.method, "rotateWebhookSecret");
    assert.equal((r.calls[0]!.request as RotateWebhookSecretRequest).previousSecretTtl?.seconds, 7200n);
    assert.match(r.stdout, /old secrets sign until\s+2026-11-21T02:00:00/);
    assert.match(r.stdout, /new signing secret \(shown once: store it now\)\n  whsec_new0123456789abcdef/);
  });

  test("get shows a disabled endpoint and why; list is a table", async () => {
    const disabled = endpoint({ status: WebhookEndpointStatus.DISABLED, disabledReason: "20 consecutive failed deliveries; last error: HTTP 503", consecutiveFailures: 20 });
    const get = await runWarden(["webhooks", "get", "whe_1"], { webhooks: { getWebhookEndpoint: () => ({ endpoint: disabled }) } });
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, /status\s+disabled/);
    assert.match(get.stdout, /disabled because\s+20 consecutive failed deliveries/);
    const list = await runWarden(["webhooks", "list", "--page-size", "5"], { webhooks: { listWebhookEndpoints: () => ({ endpoints: [disabled], nextPageToken: "abc" }) } });
    assert.equal(list.code, 0, list.stderr);
    assert.equal((list.calls[0]!.request as { pageSize: number }).pageSize, 5);
    assert.match(list.stdout, /^ENDPOINT\s+STATUS\s+FAILURES\s+URL\s+EVENTS/im);
    assert.match(list.stdout, /more: --page-token abc/);
  });

  test("enable and delete name the endpoint; errors are reported", async () => {
    const enable = await runWarden(["webhooks", "enable", "whe_1"], { webhooks: { enableWebhookEndpoint: () => ({ endpoint: endpoint() }) } });
    assert.equal(enable.code, 0, enable.stderr);
    assert.deepEqual((enable.calls[0]!.request as { endpointId: string }).endpointId, "whe_1");
    const del = await runWarden(["webhooks", "delete", "whe_2"], {
      webhooks: {
        deleteWebhookEndpoint: () => {
          throw new ConnectError('endpoint_id: webhook endpoint "whe_2" not found', Code.NotFound);
        },
      },
    });
    assert.notEqual(del.code, 0);
    assert.match(del.stderr, /whe_2/);
  });
});
