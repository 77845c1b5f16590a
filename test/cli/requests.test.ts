import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { CliError } from "../../src/cli/cli-error.js";
import {
  buildAction,
  buildAuthorizeRequest,
  buildCaptureRequest,
  buildCheckRequest,
  buildListActionsRequest,
  buildVoidRequest,
  exitCodeOf,
} from "../../src/cli/commands/actions.js";
import { buildUpdateAgentPolicyRequest } from "../../src/cli/commands/agents.js";
import {
  buildCreateSessionRequest,
  buildEndSessionRequest,
  buildPauseSessionRequest,
  buildResumeSessionRequest,
  buildExtendSessionRequest,
  buildForkSessionRequest,
  buildListSessionsRequest,
  buildRevokeSessionRequest,
} from "../../src/cli/commands/sessions.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { flagsOf } from "./cli-harness.js";

function throwsCli(fn: () => unknown, message: string | RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CliError, `expected CliError, got ${String(e)}`);
    if (typeof message === "string") assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}

describe("sessions create", () => {
  test("builds the request from every flag", () => {
    const req = buildCreateSessionRequest(
      flagsOf("sessions create", [
        "--agent", "shopper-1", "--id", "ses-42", "--owner", "alice", "--description", "groceries",
        "--label", "team=home", "--label", "env=prod",
        "--ttl", "1h30m", "--idle-timeout", "15m",
        "--max-per-day", "200", "--max-per-transaction", "12.50", "--max-actions", "100",
        "--idempotency-key", "k-1",
      ]),
    );
    assert.equal(req.agentId, "shopper-1");
    assert.equal(req.sessionId, "ses-42");
    assert.equal(req.owner, "alice");
    assert.equal(req.description, "groceries");
    assert.deepEqual(req.labels, { team: "home", env: "prod" });
    assert.equal(req.expiration.case, "ttl");
    assert.equal(req.expiration.value?.seconds, 5400n);
    assert.equal(req.idleTimeout?.seconds, 900n);
    assert.equal(req.policy?.currencyCode, "USD");
    assert.equal(req.policy?.daily?.maxValueMicros, 200_000_000n);
    assert.equal(req.policy?.maxPerTransactionMicros, 12_500_000n);
    assert.equal(req.policy?.lifetime?.maxActions, 100n);
    assert.equal(req.idempotencyKey, "k-1");
  });
  test("defaults: USD, a one-hour TTL, no idle timeout, generated id", () => {
    const req = buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a"]));
    assert.equal(req.policy?.currencyCode, "USD");
    assert.equal(req.expiration.case, "ttl");
    assert.equal(req.expiration.value?.seconds, 3600n);
    assert.equal(req.idleTimeout, undefined);
    assert.equal(req.sessionId, "");
  });
  test("--expires sets an absolute expiry", () => {
    const req = buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--expires", "2030-01-01T00:00:00Z"]));
    assert.equal(req.expiration.case, "expireTime");
    assert.equal(req.expiration.case === "expireTime" && timestampDate(req.expiration.value).toISOString(), "2030-01-01T00:00:00.000Z");
  });
  test("--ttl and --expires exclude each other", () =>
    throwsCli(() => buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--ttl", "1h", "--expires", "2030-01-01"])), "--ttl and --expires cannot be used together"));
  test("bad values name their flag", () => {
    throwsCli(() => buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--max-per-day", "abc"])), /^--max-per-day: "abc"/);
    throwsCli(() => buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--ttl", "1 hour"])), /^--ttl: "1 hour"/);
    throwsCli(() => buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--idle-timeout", "0m"])), /^--idle-timeout: /);
    throwsCli(() => buildCreateSessionRequest(flagsOf("sessions create", ["--agent", "a", "--label", "nolabel"])), /^--label: "nolabel"/);
  });
  test("--agent is required", () => throwsCli(() => flagsOf("sessions create", ["--max-per-day", "5"]), "--agent is required"));
});

describe("sessions fork", () => {
  test("leaves the currency empty for the parent's, and the expiry unset for the parent's", () => {
    const req = buildForkSessionRequest("parent-1", flagsOf("sessions fork", ["--id", "child", "--max-per-day", "20", "--label", "k=v"]));
    assert.equal(req.parentSessionId, "parent-1");
    assert.equal(req.sessionId, "child");
    assert.equal(req.policy?.currencyCode, "");
    assert.equal(req.policy?.daily?.maxValueMicros, 20_000_000n);
    assert.equal(req.expiration.case, undefined);
    assert.deepEqual(req.labels, { k: "v" });
  });
  test("takes --currency and --ttl when given", () => {
    const req = buildForkSessionRequest("p", flagsOf("sessions fork", ["--currency", "EUR", "--ttl", "30m"]));
    assert.equal(req.policy?.currencyCode, "EUR");
    assert.equal(req.expiration.value?.seconds, 1800n);
  });
});

describe("sessions list, extend, end, revoke", () => {
  test("list maps filters and paging", () => {
    const req = buildListSessionsRequest(
      flagsOf("sessions list", ["--agent", "a", "--status", "paused", "--label", "team=x", "--page-size", "10", "--page-token", "t"]),
    );
    assert.equal(req.agentId, "a");
    assert.equal(req.status, SessionStatus.PAUSED);
    assert.deepEqual(req.labels, { team: "x" });
    assert.equal(req.pageSize, 10);
    assert.equal(req.pageToken, "t");
  });
  test("list without flags asks for everything", () => {
    const req = buildListSessionsRequest(flagsOf("sessions list", []));
    assert.equal(req.status, SessionStatus.UNSPECIFIED);
    assert.equal(req.pageSize, 0);
  });
  test("list rejects an unknown status", () => throwsCli(() => buildListSessionsRequest(flagsOf("sessions list", ["--status", "live"])), /^--status: "live" is not one of active/));
  test("extend --by", () => {
    const req = buildExtendSessionRequest("s", flagsOf("sessions extend", ["--by", "1h"]));
    assert.equal(req.extension.case, "extendBy");
    assert.equal(req.extension.value?.seconds, 3600n);
  });
  test("extend --until", () => {
    const req = buildExtendSessionRequest("s", flagsOf("sessions extend", ["--until", "2030-05-01T12:00:00Z"]));
    assert.equal(req.extension.case, "expireTime");
  });
  test("extend needs exactly one of --by and --until", () => {
    throwsCli(() => buildExtendSessionRequest("s", flagsOf("sessions extend", [])), "sessions extend needs --by DURATION or --until TIME");
    throwsCli(() => buildExtendSessionRequest("s", flagsOf("sessions extend", ["--by", "1h", "--until", "2030-01-01"])), "--by and --until cannot be used together");
  });
  test("end carries an optional reason", () => {
    assert.equal(buildEndSessionRequest("s", flagsOf("sessions end", ["--reason", "done"])).reason, "done");
    assert.equal(buildEndSessionRequest("s", flagsOf("sessions end", [])).reason, "");
  });
  test("end, revoke, pause and resume carry an optional idempotency key", () => {
    const key = ["--idempotency-key", "k-9"];
    assert.equal(buildEndSessionRequest("s", flagsOf("sessions end", key)).idempotencyKey, "k-9");
    assert.equal(buildRevokeSessionRequest("s", flagsOf("sessions revoke", ["--reason", "r", ...key])).idempotencyKey, "k-9");
    const pause = buildPauseSessionRequest("s", flagsOf("sessions pause", ["--reason", "lunch", ...key]));
    assert.deepEqual([pause.reason, pause.idempotencyKey], ["lunch", "k-9"]);
    assert.equal(buildResumeSessionRequest("s", flagsOf("sessions resume", key)).idempotencyKey, "k-9");
    assert.equal(buildResumeSessionRequest("s", flagsOf("sessions resume", [])).idempotencyKey, "");
  });
  test("revoke requires a non-blank reason", () => {
    assert.equal(buildRevokeSessionRequest("s", flagsOf("sessions revoke", ["--reason", "leaked key"])).reason, "leaked key");
    throwsCli(() => flagsOf("sessions revoke", []), "--reason is required");
    throwsCli(() => buildRevokeSessionRequest("s", flagsOf("sessions revoke", ["--reason", " "])), /^--reason is required/);
  });
});

describe("agents set-policy", () => {
  test("replaces the policy, with currency left for the agent's current one", () => {
    const req = buildUpdateAgentPolicyRequest("agent-7", flagsOf("agents set-policy", ["--max-per-month", "1000", "--etag", "e1"]));
    assert.equal(req.agentId, "agent-7");
    assert.equal(req.etag, "e1");
    assert.equal(req.policy?.currencyCode, "");
    assert.equal(req.policy?.monthly?.maxValueMicros, 1_000_000_000n);
    assert.equal(req.idempotencyKey, "");
    assert.equal(buildUpdateAgentPolicyRequest("agent-7", flagsOf("agents set-policy", ["--idempotency-key", "p-1"])).idempotencyKey, "p-1");
  });
});

describe("authorize, check, capture, void, actions", () => {
  test("authorize builds an action with exact micros and metadata", () => {
    const req = buildAuthorizeRequest(
      "s1",
      flagsOf("authorize", ["--amount", "12.50", "--currency", "usd", "--merchant", "acme", "--meta", "order=77", "--idempotency-key", "k"]),
    );
    assert.equal(req.sessionId, "s1");
    assert.equal(req.action?.type, "payment");
    assert.equal(req.action?.amount?.amountMicros, 12_500_000n);
    assert.equal(req.action?.amount?.currencyCode, "USD");
    assert.equal(req.action?.merchant, "acme");
    assert.deepEqual(req.action?.metadata, { order: "77" });
    assert.equal(req.idempotencyKey, "k");
  });
  test("without --currency the amount's currency is left for the session's", () => {
    const req = buildCheckRequest("s1", flagsOf("check", ["--amount", "3"]));
    assert.equal(req.action?.amount?.currencyCode, "");
    assert.equal(req.action?.amount?.amountMicros, 3_000_000n);
  });
  test("an action without --amount carries no money", () => {
    const action = buildAction(flagsOf("check", ["--type", "tool_call"]));
    assert.equal(action.type, "tool_call");
    assert.equal(action.amount, undefined);
  });
  test("bad action flags name the flag", () => {
    throwsCli(() => buildAction(flagsOf("authorize", ["--amount", "0"])), "--amount: amount must be greater than zero");
    throwsCli(() => buildAction(flagsOf("authorize", ["--amount", "12.5.0"])), /^--amount: "12.5.0"/);
    throwsCli(() => buildAction(flagsOf("authorize", ["--currency", "USD"])), "--currency needs --amount");
    throwsCli(() => buildAction(flagsOf("authorize", ["--type", "Payment"])), /^--type: "Payment"/);
    throwsCli(() => buildAction(flagsOf("authorize", ["--meta", "x"])), /^--meta: "x"/);
  });
  test("capture with and without --amount", () => {
    const all = buildCaptureRequest("s", "act_1", flagsOf("capture", []));
    assert.equal(all.amount, undefined);
    assert.equal(all.authorizationId, "act_1");
    const part = buildCaptureRequest("s", "act_1", flagsOf("capture", ["--amount", "10", "--currency", "EUR"]));
    assert.equal(part.amount?.amountMicros, 10_000_000n);
    assert.equal(part.amount?.currencyCode, "EUR");
  });
  test("void and list actions", () => {
    const v = buildVoidRequest("s", "act_2", flagsOf("void", ["--idempotency-key", "v1"]));
    assert.deepEqual([v.sessionId, v.authorizationId, v.idempotencyKey], ["s", "act_2", "v1"]);
    const l = buildListActionsRequest("s", flagsOf("actions", ["--page-size", "5"]));
    assert.equal(l.pageSize, 5);
    throwsCli(() => buildListActionsRequest("s", flagsOf("actions", ["--page-size", "5000"])), /^--page-size: "5000"/);
  });
  test("exit codes: 0 for ALLOW, 2 for everything else", () => {
    assert.equal(exitCodeOf(Outcome.ALLOW), 0);
    assert.equal(exitCodeOf(Outcome.DENY), 2);
    assert.equal(exitCodeOf(Outcome.NEEDS_APPROVAL), 2);
    assert.equal(exitCodeOf(Outcome.UNSPECIFIED), 2);
    assert.equal(exitCodeOf(undefined), 2);
  });
});
