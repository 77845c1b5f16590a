import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create, fromJsonString, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { describeError } from "../../src/cli/describe-error.js";
import { POLICY_FLAGS } from "../../src/cli/policy-flags.js";
import { COMMANDS, runCli } from "../../src/cli/run-cli.js";
import { ApprovalStatus } from "../../src/gen/warden/v1/approval_service_pb.js";
import { Outcome, Reason, Scope, Window } from "../../src/gen/warden/v1/decision_pb.js";
import { EventService } from "../../src/gen/warden/v1/event_service_pb.js";
import type { AuthorizeRequest, CheckRequest } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionSchema, SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import {
  SessionSnapshotSchema,
  type CreateSessionRequest,
  type ForkSessionRequest,
  type ImportSessionRequest,
  type ListSessionsRequest,
} from "../../src/gen/warden/v1/session_service_pb.js";
import type { UpdateAgentPolicyRequest } from "../../src/gen/warden/v1/agent_service_pb.js";
import { runWarden, type FakeServer } from "./cli-harness.js";

type SessionInit = Extract<MessageInitShape<typeof SessionSchema>, { $typeName?: undefined }>;

function session(init: SessionInit = {}) {
  return create(SessionSchema, {
    sessionId: "ses-1",
    agentId: "shopper",
    status: SessionStatus.ACTIVE,
    expireTime: timestampFromDate(new Date("2030-01-01T00:00:00Z")),
    policy: { currencyCode: "EUR", daily: { maxValueMicros: 200_000_000n } },
    ...init,
  });
}

/** A server whose GetSession knows one EUR session. */
const EUR_SESSION: FakeServer["sessions"] = { getSession: () => ({ session: session() }) };

/** Asserts a failure: exit 1, exactly one stderr line, no output, nothing sent. */
function assertLocalFailure(r: Awaited<ReturnType<typeof runWarden>>, message: string | RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stderr.split("\n").length, 1, `one stderr line, got: ${r.stderr}`);
  if (typeof message === "string") assert.equal(r.stderr, `warden: ${message}`);
  else assert.match(r.stderr, message);
  assert.equal(r.stdout, "");
  assert.deepEqual(r.calls, [], "no request may be sent");
}

describe("help", () => {
  test("warden --help lists every command, every flag, WARDEN_SERVER and the exit codes", async () => {
    const r = await runWarden(["--help"]);
    assert.equal(r.code, 0);
    assert.equal(r.stderr, "");
    for (const c of COMMANDS) {
      assert.ok(r.stdout.includes(`  ${c.name}`), `help lists ${c.name}`);
      for (const f of c.flags) assert.ok(r.stdout.includes(`--${f.name}`), `help lists --${f.name} of ${c.name}`);
    }
    for (const f of POLICY_FLAGS) assert.ok(r.stdout.includes(`--${f.name}`));
    assert.match(r.stdout, /serve/);
    assert.match(r.stdout, /WARDEN_SERVER/);
    assert.match(r.stdout, /\n  2  authorize or check answered DENY or NEEDS_APPROVAL/);
    assert.match(r.stdout, /\n  1  error/);
  });
  test("bare warden and `warden help` print the same help", async () => {
    const full = (await runWarden(["--help"])).stdout;
    assert.equal((await runWarden([])).stdout, full);
    assert.equal((await runWarden(["help"])).stdout, full);
  });
  for (const c of COMMANDS) {
    test(`warden ${c.name} --help lists each of its flags`, async () => {
      const r = await runWarden([...c.name.split(" "), "--help"]);
      assert.equal(r.code, 0);
      assert.ok(r.stdout.startsWith(`Usage: warden ${c.name}`), r.stdout.split("\n")[0]);
      for (const f of c.flags) assert.match(r.stdout, new RegExp(`\\n  (-\\w, )?--${f.name}\\b`), `--${f.name}`);
      assert.match(r.stdout, /--help/);
      assert.match(r.stdout, /WARDEN_SERVER/);
      assert.deepEqual(r.calls, []);
    });
  }
  test("help wins over missing arguments and bad flags", async () => {
    const r = await runWarden(["authorize", "--amount", "abc", "-h"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^Usage: warden authorize SESSION_ID \[flags\]/);
    assert.match(r.stdout, /Exit code 0 when the answer is ALLOW, 2 when it is DENY or NEEDS_APPROVAL/);
  });
  test("group help lists only the group", async () => {
    const r = await runWarden(["agents", "--help"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /agents set-policy AGENT_ID/);
    assert.doesNotMatch(r.stdout, /\n  sessions create/);
    assert.equal((await runWarden(["help", "agents", "get"])).stdout.split("\n")[0], "Usage: warden agents get AGENT_ID [flags]");
  });
  test("--version prints the package version", async () => {
    const r = await runWarden(["--version"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^\d+\.\d+\.\d+/);
  });
});

describe("local errors: one line, exit 1, nothing sent", () => {
  test("unknown command", async () => assertLocalFailure(await runWarden(["sesions", "list"]), 'unknown command "sesions" (see warden --help)'));
  test("unknown subcommand", async () =>
    assertLocalFailure(await runWarden(["sessions", "delete", "x"]), 'unknown command "sessions delete" (see warden sessions --help)'));
  test("group without a subcommand lists them", async () =>
    assertLocalFailure(await runWarden(["agents"]), "agents needs a command: get, set-policy (see warden agents --help)"));
  test("unknown flag", async () =>
    assertLocalFailure(await runWarden(["sessions", "create", "--agent", "a", "--max-per-dya", "5"]), "unknown flag --max-per-dya (see warden sessions create --help)"));
  test("bad money names the flag", async () =>
    assertLocalFailure(await runWarden(["sessions", "create", "--agent", "a", "--max-per-day", "abc"]), /^warden: --max-per-day: "abc" is not a decimal amount/));
  test("bad duration names the flag", async () =>
    assertLocalFailure(await runWarden(["sessions", "extend", "s", "--by", "tomorrow"]), /^warden: --by: "tomorrow" is not a duration/));
  test("bad amount is caught before the session's currency is fetched", async () =>
    assertLocalFailure(await runWarden(["authorize", "s", "--amount", "12,50"], { sessions: EUR_SESSION }), /^warden: --amount: "12,50"/));
  test("missing required flag", async () => assertLocalFailure(await runWarden(["sessions", "revoke", "s"]), "--reason is required"));
  test("missing argument", async () =>
    assertLocalFailure(await runWarden(["capture", "s"]), "capture: missing AUTHORIZATION_ID (usage: warden capture SESSION_ID AUTHORIZATION_ID [flags])"));
  test("extra argument", async () =>
    assertLocalFailure(await runWarden(["sessions", "get", "a", "b"]), 'sessions get: unexpected argument "b" (usage: warden sessions get SESSION_ID [flags])'));
  test("flag value missing", async () => assertLocalFailure(await runWarden(["sessions", "get", "a", "--server"]), "--server needs a value"));
  test("bad WARDEN_SERVER is named", async () =>
    assertLocalFailure(await runWarden(["sessions", "get", "a"], {}, { WARDEN_SERVER: "localhost:8080" }), /^warden: WARDEN_SERVER: "localhost:8080"/));
  test("a flag given twice", async () =>
    assertLocalFailure(await runWarden(["sessions", "create", "--agent", "a", "--max-per-day", "1", "--max-per-day", "2"]), "--max-per-day given more than once"));
});

describe("commands against an in-memory server", () => {
  test("sessions create sends the parsed request and prints the session", async () => {
    let got: CreateSessionRequest | undefined;
    const r = await runWarden(["sessions", "create", "--agent", "shopper", "--max-per-day", "200", "--ttl", "2h", "--label", "team=home"], {
      sessions: {
        createSession(req) {
          got = req;
          return { session: session({ agentId: req.agentId, labels: req.labels, policy: req.policy }) };
        },
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(got?.agentId, "shopper");
    assert.equal(got?.policy?.daily?.maxValueMicros, 200_000_000n);
    assert.equal(got?.policy?.currencyCode, "USD");
    assert.equal(got?.expiration.value?.seconds, 7200n);
    assert.match(r.stdout, /^session +ses-1\nagent +shopper\nstatus +active\n/);
    assert.match(r.stdout, /per day +200\.00 USD/);
  });

  test("--json prints the response as proto3 JSON", async () => {
    const r = await runWarden(["sessions", "get", "ses-1", "--json"], { sessions: EUR_SESSION });
    assert.equal(r.code, 0);
    const json = JSON.parse(r.stdout) as { session: { sessionId: string; status: string; policy: { daily: { maxValueMicros: string } } } };
    assert.equal(json.session.sessionId, "ses-1");
    assert.equal(json.session.status, "SESSION_STATUS_ACTIVE");
    assert.equal(json.session.policy.daily.maxValueMicros, "200000000");
  });

  test("--server and WARDEN_SERVER choose the address; the flag wins", async () => {
    const envOnly = await runWarden(["sessions", "get", "ses-1"], { sessions: EUR_SESSION }, { WARDEN_SERVER: "http://cp.internal:9000" });
    assert.equal(envOnly.calls[0]?.baseUrl, "http://cp.internal:9000");
    const both = await runWarden(["sessions", "get", "ses-1", "--server", "https://other:1/"], { sessions: EUR_SESSION }, { WARDEN_SERVER: "http://cp.internal:9000" });
    assert.equal(both.calls[0]?.baseUrl, "https://other:1");
    const neither = await runWarden(["sessions", "get", "ses-1"], { sessions: EUR_SESSION });
    assert.equal(neither.calls[0]?.baseUrl, "http://127.0.0.1:8080");
  });

  test("client flags given before the command are taken as the command's", async () => {
    const r = await runWarden(["--server", "https://first:1", "--json", "sessions", "get", "ses-1"], { sessions: EUR_SESSION });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.calls[0]?.baseUrl, "https://first:1");
    assert.equal((JSON.parse(r.stdout) as { session: { sessionId: string } }).session.sessionId, "ses-1");
    assert.equal((await runWarden(["--server=https://eq:2", "sessions", "get", "ses-1"], { sessions: EUR_SESSION })).calls[0]?.baseUrl, "https://eq:2");
    // Given both before and after: one line, as any flag given twice.
    assertLocalFailure(await runWarden(["--server", "https://a:1", "sessions", "get", "ses-1", "--server", "https://b:1"]), /--server/);
  });

  test("authorize without --currency uses the session's currency", async () => {
    let got: AuthorizeRequest | undefined;
    const r = await runWarden(["authorize", "ses-1", "--amount", "12.50", "--merchant", "acme"], {
      sessions: EUR_SESSION,
      policy: {
        authorize(req) {
          got = req;
          return {
            decision: {
              outcome: Outcome.ALLOW,
              remaining: [{ scope: Scope.SESSION, scopeId: "ses-1", window: Window.DAY, valueUsedMicros: 12_500_000n, valueLimitMicros: 200_000_000n, valueRemainingMicros: 187_500_000n }],
            },
            authorizationId: "act_01",
            holdExpireTime: timestampFromDate(new Date("2030-01-01T00:15:00Z")),
          };
        },
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.calls.map((c) => c.method), ["getSession", "authorize"]);
    assert.equal(got?.action?.amount?.currencyCode, "EUR");
    assert.equal(got?.action?.amount?.amountMicros, 12_500_000n);
    assert.match(r.stdout, /^outcome +ALLOW\nauthorization +act_01\nhold expires +2030-01-01T00:15:00Z\n/);
    assert.match(r.stdout, /12\.50 EUR +200\.00 EUR +187\.50 EUR/);
  });

  test("authorize with --currency does not fetch the session", async () => {
    const r = await runWarden(["authorize", "ses-1", "--amount", "1", "--currency", "usd"], {
      sessions: EUR_SESSION,
      policy: { authorize: () => ({ decision: { outcome: Outcome.ALLOW }, authorizationId: "act_02" }) },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.calls.map((c) => c.method), ["authorize"]);
    assert.equal((r.calls[0]?.request as AuthorizeRequest).action?.amount?.currencyCode, "USD");
  });

  test("an action without --amount needs no currency", async () => {
    const r = await runWarden(["check", "ses-1", "--type", "tool_call"], {
      sessions: EUR_SESSION,
      policy: { check: () => ({ decision: { outcome: Outcome.ALLOW }, actionId: "act_03" }) },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.calls.map((c) => c.method), ["check"]);
    assert.equal((r.calls[0]?.request as CheckRequest).action?.amount, undefined);
  });

  test("a denial is printed on stdout with exit code 2", async () => {
    const r = await runWarden(["check", "ses-1", "--amount", "500", "--currency", "EUR"], {
      policy: {
        check: () => ({
          decision: { outcome: Outcome.DENY, reasons: [Reason.LIMIT_DAILY_VALUE], message: "over the daily limit" },
          actionId: "act_04",
        }),
      },
    });
    assert.equal(r.code, 2);
    assert.equal(r.stderr, "");
    assert.match(r.stdout, /^outcome +DENY\nreasons +LIMIT_DAILY_VALUE\nmessage +over the daily limit\naction +act_04$/);
  });

  test("needs approval exits 2, also with --json", async () => {
    const r = await runWarden(["authorize", "ses-1", "--amount", "150", "--currency", "EUR", "--json"], {
      policy: { authorize: () => ({ decision: { outcome: Outcome.NEEDS_APPROVAL, reasons: [Reason.APPROVAL_REQUIRED] } }) },
    });
    assert.equal(r.code, 2);
    const json = JSON.parse(r.stdout) as { decision: { outcome: string; reasons: string[] } };
    assert.equal(json.decision.outcome, "OUTCOME_NEEDS_APPROVAL");
    assert.deepEqual(json.decision.reasons, ["REASON_APPROVAL_REQUIRED"]);
  });

  test("capture --amount without --currency uses the session's currency", async () => {
    const r = await runWarden(["capture", "ses-1", "act_01", "--amount", "10"], {
      sessions: EUR_SESSION,
      policy: { capture: (req) => ({ authorization: { actionId: req.authorizationId, capturedAmount: req.amount } }) },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.calls.map((c) => c.method), ["getSession", "capture"]);
    assert.match(r.stdout, /captured +10\.00 EUR/);
  });

  test("server errors print the code name and raw message on one line", async () => {
    const r = await runWarden(["check", "ses-1", "--amount", "1", "--currency", "EUR"], {
      policy: {
        check() {
          throw new ConnectError("action.amount: currency EUR does not match session currency USD\nsecond line", Code.InvalidArgument);
        },
      },
    });
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "warden: invalid_argument: action.amount: currency EUR does not match session currency USD; second line");
    assert.equal(r.stdout, "");
  });

  test("not found is a clear error", async () => {
    const r = await runWarden(["sessions", "get", "nope"], {
      sessions: {
        getSession() {
          throw new ConnectError('session "nope" not found', Code.NotFound);
        },
      },
    });
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'warden: not_found: session "nope" not found');
  });

  test("sessions list --all follows page tokens and prints one response", async () => {
    const pages: Record<string, { ids: string[]; next: string }> = { "": { ids: ["a", "b"], next: "p2" }, p2: { ids: ["c"], next: "" } };
    const r = await runWarden(["sessions", "list", "--all", "--status", "active", "--json"], {
      sessions: {
        listSessions(req: ListSessionsRequest) {
          const page = pages[req.pageToken]!;
          return { sessions: page.ids.map((id) => session({ sessionId: id })), nextPageToken: page.next };
        },
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.calls.length, 2);
    assert.equal((r.calls[1]?.request as ListSessionsRequest).status, SessionStatus.ACTIVE, "filters kept on later pages");
    const json = JSON.parse(r.stdout) as { sessions: { sessionId: string }[]; nextPageToken?: string };
    assert.deepEqual(json.sessions.map((s) => s.sessionId), ["a", "b", "c"]);
    assert.equal(json.nextPageToken, undefined);
  });

  test("sessions list without --all shows how to get the next page", async () => {
    const r = await runWarden(["sessions", "list"], { sessions: { listSessions: () => ({ sessions: [session()], nextPageToken: "tok" }) } });
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^SESSION +AGENT +STATUS/);
    assert.match(r.stdout, /\n\nmore: --page-token tok \(or --all\)$/);
  });

  test("sessions fork without --currency uses the parent's", async () => {
    const r = await runWarden(["sessions", "fork", "ses-1", "--max-per-day", "20"], {
      sessions: { ...EUR_SESSION, forkSession: (req) => ({ session: session({ sessionId: "child", parentSessionId: req.parentSessionId, policy: req.policy }) }) },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.calls.map((c) => c.method), ["getSession", "forkSession"]);
    assert.equal((r.calls[1]?.request as ForkSessionRequest).policy?.currencyCode, "EUR");
    assert.match(r.stdout, /parent +ses-1/);
  });

  test("agents set-policy keeps the agent's currency, or USD for a new agent", async () => {
    const known = await runWarden(["agents", "set-policy", "bot", "--max-per-month", "100"], {
      agents: {
        getAgent: (req) => ({ agent: { agentId: req.agentId, policy: { currencyCode: "JPY" } } }),
        updateAgentPolicy: (req) => ({ agent: { agentId: req.agentId, policy: req.policy } }),
      },
    });
    assert.equal(known.code, 0, known.stderr);
    assert.equal((known.calls[1]?.request as UpdateAgentPolicyRequest).policy?.currencyCode, "JPY");
    assert.match(known.stdout, /per month +100 JPY/);
    const fresh = await runWarden(["agents", "set-policy", "bot", "--max-per-month", "100"], {
      agents: {
        getAgent() {
          throw new ConnectError("agent bot not found", Code.NotFound);
        },
        updateAgentPolicy: (req) => ({ agent: { agentId: req.agentId, policy: req.policy } }),
      },
    });
    assert.equal(fresh.code, 0, fresh.stderr);
    assert.equal((fresh.calls[1]?.request as UpdateAgentPolicyRequest).policy?.currencyCode, "USD");
  });

  test("approvals approve checks --amount before it asks the server anything", async () => {
    const r = await runWarden(["approvals", "approve", "apr_1", "--amount", "12.3456789"], {
      approvals: {
        getApproval() {
          throw new ConnectError("approval apr_1 not found", Code.NotFound);
        },
      },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--amount/);
    assert.deepEqual(r.calls, []);
  });

  test("approvals watch exits 0 when it ends approved, 2 when denied, expired or canceled", async () => {
    for (const [status, code] of [
      [ApprovalStatus.APPROVED, 0],
      [ApprovalStatus.DENIED, 2],
      [ApprovalStatus.EXPIRED, 2],
      [ApprovalStatus.CANCELED, 2],
    ] as const) {
      const r = await runWarden(["approvals", "watch", "apr_1"], {
        approvals: {
          async *watchApproval() {
            yield { approval: { approvalId: "apr_1", status: ApprovalStatus.PENDING } };
            yield { approval: { approvalId: "apr_1", status } };
          },
        },
      });
      assert.equal(r.code, code, `${ApprovalStatus[status]}: ${r.stderr}`);
      assert.equal(r.stderr, "");
    }
  });

  test("approvals watch: a stream that ends while the approval is still pending is an error (exit 1), not a denial (2)", async () => {
    // What a server that ends the stream OK on shutdown sends.
    const r = await runWarden(["approvals", "watch", "apr_1"], {
      approvals: {
        async *watchApproval() {
          yield { approval: { approvalId: "apr_1", status: ApprovalStatus.PENDING } };
        },
      },
    });
    assert.equal(r.code, 1);
    assert.match(r.stdout, /status +pending/);
    assert.equal(r.stderr, "warden: approvals watch: the stream ended before apr_1 was decided; watch it again");
  });

  test("events watch: a stream that ends before --count events (or at all, without --count) is an error naming where to resume", async () => {
    const watchEvents = async function* () {
      yield {};
      yield { event: { eventId: "evt_1", type: "session.created", sessionId: "ses-1", agentId: "a" } };
    };
    const run = async (...args: string[]) => {
      const out: string[] = [];
      const err: string[] = [];
      const code = await runCli(["events", "watch", ...args], {
        stdout: (t) => out.push(t),
        stderr: (t) => err.push(t),
        env: {},
        transport: () => createRouterTransport(({ service }) => service(EventService, { watchEvents })),
      });
      return { code, stdout: out.join("\n"), stderr: err.join("\n") };
    };
    const counted = await run("--count", "5");
    assert.equal(counted.code, 1);
    assert.match(counted.stdout, /session\.created/);
    assert.equal(counted.stderr, "warden: events watch: the stream ended after 1 of 5 events; resume with --after evt_1");
    const endless = await run("--after", "evt_0");
    assert.equal(endless.code, 1);
    assert.equal(endless.stderr, "warden: events watch: the stream ended after 0 events; resume with --after evt_1");
    const enough = await run("--count", "1");
    assert.equal(enough.code, 0, enough.stderr);
  });

  test("agents set-policy reports other GetAgent errors", async () => {
    const r = await runWarden(["agents", "set-policy", "bot"], {
      agents: {
        getAgent() {
          throw new ConnectError("store down", Code.Unavailable);
        },
      },
    });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^warden: unavailable: store down \(is warden serve running at http:\/\/127\.0\.0\.1:8080\? set --server or WARDEN_SERVER\)$/);
  });
});

describe("export and import", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "warden-cli-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const snapshot = create(SessionSnapshotSchema, {
    formatVersion: 1,
    exportTime: timestampFromDate(new Date("2025-07-01T12:00:00Z")),
    session: session(),
    counters: [{ window: "day", committedValueMicros: 5_000_000n }],
    actions: [{ actionId: "act_1", sessionId: "ses-1", action: { type: "payment", amount: { currencyCode: "EUR", amountMicros: 5_000_000n } } }],
  });

  test("export prints the snapshot as stable proto3 JSON", async () => {
    const r = await runWarden(["sessions", "export", "ses-1"], { sessions: { exportSession: () => ({ snapshot }) } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\{\n  "formatVersion": 1,\n  "exportTime": "2025-07-01T12:00:00Z",\n  "session": \{\n    "sessionId": "ses-1",/);
    assert.match(r.stdout, /"committedValueMicros": "5000000"/);
  });

  test("export --out then import round-trips the snapshot", async () => {
    const file = join(dir, "ses-1.json");
    const out = await runWarden(["sessions", "export", "ses-1", "--out", file], { sessions: { exportSession: () => ({ snapshot }) } });
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, `exported session ses-1 (1 actions) to ${file}`);
    const text = await readFile(file, "utf8");
    assert.ok(text.endsWith("}\n"));
    assert.deepEqual(fromJsonString(SessionSnapshotSchema, text), snapshot);

    let imported: ImportSessionRequest | undefined;
    const r = await runWarden(["sessions", "import", file], {
      sessions: {
        importSession(req) {
          imported = req;
          return { session: req.snapshot?.session };
        },
      },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(imported?.snapshot, snapshot);
    assert.match(r.stdout, /^session +ses-1\n/);
  });

  test("import of a bad file names the file, without contacting the server", async () => {
    const file = join(dir, "bad.json");
    await writeFile(file, '{"formatVersion": "one"}');
    assertLocalFailure(await runWarden(["sessions", "import", file]), new RegExp(`^warden: ${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: not a session snapshot: `));
  });

  test("import of a missing file says so", async () => {
    assertLocalFailure(await runWarden(["sessions", "import", join(dir, "missing.json")]), /^warden: ENOENT: no such file or directory/);
  });
});

describe("the real transport", () => {
  test("an unreachable server's address is shown without its user name and password", async () => {
    const lines: string[] = [];
    const code = await runCli(["sessions", "get", "ses-1"], { stdout: () => {}, stderr: (t) => lines.push(t), env: { WARDEN_SERVER: "http://bob:s3cret@127.0.0.1:1" } });
    assert.notEqual(code, 0);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /\(is warden serve running at http:\/\/\*\*\*@127\.0\.0\.1:1\? /);
    assert.doesNotMatch(lines[0]!, /s3cret|bob/);
  });

  test("an unreachable server is one clear line with the address tried", async () => {
    const lines: string[] = [];
    const code = await runCli(["sessions", "get", "ses-1", "--server", "http://127.0.0.1:1"], { stdout: () => {}, stderr: (t) => lines.push(t), env: {} });
    assert.equal(code, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^warden: unavailable: .*\(is warden serve running at http:\/\/127\.0\.0\.1:1\? set --server or WARDEN_SERVER\)$/);
  });
});

describe("describeError", () => {
  test("CliErrors and plain errors are one line", () => {
    assert.equal(describeError(new Error("a\nb")), "a; b");
    assert.equal(describeError(new ConnectError("x", Code.PermissionDenied)), "permission_denied: x");
    assert.equal(describeError(new ConnectError("x", Code.FailedPrecondition)), "failed_precondition: x");
    assert.equal(describeError("text"), "text");
  });
});
