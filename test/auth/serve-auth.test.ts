import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, type DescMessage, type DescService, fromBinary, type MessageInitShape, toBinary, toJson } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import type { JSONWebKeySet } from "jose";
import { createSessionTokenVerifier } from "../../src/auth/session-tokens.js";
import { runCli } from "../../src/cli/run-cli.js";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { AgentService } from "../../src/gen/warden/v1/agent_service_pb.js";
import { ApprovalService } from "../../src/gen/warden/v1/approval_service_pb.js";
import { ApiKeyRole, AuthService, GetSigningKeysResponseSchema } from "../../src/gen/warden/v1/auth_service_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { startServer, type RunningServer } from "../../src/server/start-server.js";
import { DRIVERS, type Driver } from "../helpers/databases.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { bearer, createStoreLocation, type StoreLocation } from "../helpers/server-process.js";

const DAY = 24 * 60 * 60 * 1000;

async function refused(p: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  let err: ConnectError | undefined;
  await assert.rejects(p, (e: unknown) => {
    err = ConnectError.from(e);
    assert.equal(Code[err.code], Code[code], err.rawMessage);
    if (message) assert.match(err.rawMessage, message);
    return true;
  });
  return err!;
}

/** One unary call with a plain @grpc/grpc-js client, as a polyglot agent makes it. */
async function grpcJsCall<I extends DescMessage, O extends DescMessage>(
  address: string,
  service: DescService,
  method: string,
  input: I,
  output: O,
  request: MessageInitShape<I>,
  credential?: string,
): Promise<unknown> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  if (credential !== undefined) md.set("authorization", `Bearer ${credential}`);
  try {
    return await new Promise((resolve, reject) =>
      client.makeUnaryRequest(
        `/${service.typeName}/${method}`,
        (v: unknown) => Buffer.from(toBinary(input, v as never)),
        (b: Buffer) => fromBinary(output, b),
        create(input, request),
        md,
        (err, res) => (err ? reject(new ConnectError(err.details, err.code as number as Code)) : resolve(res)),
      ),
    );
  } finally {
    client.close();
  }
}

/** Runs the warden CLI in process against the server; returns stdout, or throws with stderr. */
async function cli(args: string[], env: Record<string, string | undefined>): Promise<string> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(args, { env, stdout: (t) => out.push(t), stderr: (t) => err.push(t) });
  if (code !== 0) throw new Error(`warden ${args.join(" ")} exited ${code}: ${err.join("\n")}`);
  return out.join("\n");
}

const secretOf = (text: string) => /^\s*(wdn_\S+)$/m.exec(text)?.[1] ?? assert.fail(`no key in:\n${text}`);

function storeFlags(location: StoreLocation): string[] {
  return "dataDir" in location ? ["--data-dir", location.dataDir] : ["--database-url", location.databaseUrl];
}

for (const driver of DRIVERS) {
  describe(`warden serve --require-auth on ${driver}`, () => {
    let location: StoreLocation;
    let drop: () => Promise<void>;
    let server: RunningServer;
    let clock: ManualClock;
    const logLines: string[] = [];
    /** Every credential handed out, to look for in the logs at the end. */
    const secrets: string[] = [];
    let adminKey: string;
    let url: string;
    let grpcAddress: string;
    let n = 0;
    const id = (p: string) => `${p}-${driver}-${++n}`;

    const clients = (credential?: string, transport: "connect" | "grpc" = "connect") => {
      const interceptors = credential === undefined ? [] : [bearer(credential)];
      const t =
        transport === "connect"
          ? createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors })
          : createGrpcTransport({ baseUrl: `http://${grpcAddress}`, interceptors });
      return {
        sessions: createClient(SessionService, t),
        policy: createClient(PolicyService, t),
        agents: createClient(AgentService, t),
        auth: createClient(AuthService, t),
        approvals: createClient(ApprovalService, t),
      };
    };
    const cliEnv = (key?: string) => ({ WARDEN_SERVER: url, WARDEN_API_KEY: key });

    before(async () => {
      ({ location, drop } = await createStoreLocation(driver as Driver));
      // The first admin key comes from the store, before any server runs.
      adminKey = secretOf(await cli(["keys", "bootstrap", ...storeFlags(location)], {}));
      secrets.push(adminKey);
      clock = new ManualClock(Date.now());
      server = await startServer({
        grpcAddress: "127.0.0.1:0",
        httpAddress: "127.0.0.1:0",
        ..."dataDir" in location ? { dataDir: location.dataDir } : { dataDir: "", databaseUrl: location.databaseUrl },
        sweepIntervalMs: 60_000,
        logger: createLogger("trace", { write: (line: string) => void logLines.push(line) }),
        now: clock.now,
        requireAuth: true,
      });
      url = `http://127.0.0.1:${server.httpPort}`;
      grpcAddress = `127.0.0.1:${server.grpcPort}`;
    });
    after(async () => {
      await server.close(0);
      await drop();
    });

    test("calls without credentials are UNAUTHENTICATED on both listeners; health and signing keys stay open", async () => {
      const anon = clients();
      await refused(anon.sessions.listSessions({}), Code.Unauthenticated, /missing credentials/);
      await refused(clients(undefined, "grpc").sessions.listSessions({}), Code.Unauthenticated, /missing credentials/);
      await refused(
        grpcJsCall(grpcAddress, SessionService, "ListSessions", SessionService.method.listSessions.input, SessionService.method.listSessions.output, {}),
        Code.Unauthenticated,
        /missing credentials/,
      );
      await refused(anon.policy.check({ sessionId: "s", action: payment(USD(1)) }), Code.Unauthenticated, /^missing credentials: send authorization: Bearer <session token>$/);
      await refused(anon.auth.createApiKey({ role: ApiKeyRole.ADMIN }), Code.Unauthenticated);
      await refused(clients("wdn_key_00000000000000000000000000_x").sessions.listSessions({}), Code.Unauthenticated, /^invalid API key$/);
      const basic = createClient(SessionService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors: [(next) => (req) => {
        req.header.set("authorization", "Basic YWRtaW46YWRtaW4=");
        return next(req);
      }] }));
      await refused(basic.listSessions({}), Code.Unauthenticated, /Bearer/);

      const health = createClient(Health, createGrpcTransport({ baseUrl: `http://${grpcAddress}` }));
      assert.equal((await health.check({})).status, HealthCheckResponse_ServingStatus.SERVING);
      const jwks = await anon.auth.getSigningKeys({});
      assert.equal(jwks.keys.length, 1);
      assert.equal(jwks.keys[0]!.crv, "Ed25519");
    });

    test("admins create keys with the CLI; an auditor reads but may not write; a revoked key stops working", async () => {
      const auditorOut = await cli(["keys", "create", "--role", "auditor", "--description", "audit"], cliEnv(adminKey));
      const auditorKey = secretOf(auditorOut);
      secrets.push(auditorKey);
      assert.match(auditorOut, /role\s+auditor/);

      const created = await clients(adminKey).sessions.createSession(sessionRequest(id("agent"), {}));
      const auditor = clients(auditorKey);
      assert.equal((await auditor.sessions.getSession({ sessionId: created.session!.sessionId })).session?.sessionId, created.session!.sessionId);
      await auditor.sessions.exportSession({ sessionId: created.session!.sessionId });
      assert.ok((await auditor.auth.listApiKeys({})).apiKeys.length >= 2);
      await refused(auditor.sessions.createSession(sessionRequest(id("agent"), {})), Code.PermissionDenied, /role "auditor" may not call warden\.v1\.SessionService\/CreateSession/);
      await refused(
        grpcJsCall(grpcAddress, SessionService, "RevokeSession", SessionService.method.revokeSession.input, SessionService.method.revokeSession.output, { sessionId: created.session!.sessionId, reason: "no" }, auditorKey),
        Code.PermissionDenied,
      );
      await refused(auditor.auth.createApiKey({ role: ApiKeyRole.ADMIN }), Code.PermissionDenied);
      await refused(auditor.policy.check({ sessionId: created.session!.sessionId, action: payment(USD(1)) }), Code.PermissionDenied);

      // An approver reads sessions but not key lists.
      const approverKey = secretOf(await cli(["keys", "create", "--role", "approver"], cliEnv(adminKey)));
      secrets.push(approverKey);
      await clients(approverKey).policy.listActions({ sessionId: created.session!.sessionId });
      await refused(clients(approverKey).auth.listApiKeys({}), Code.PermissionDenied);

      const list = await cli(["keys", "list"], cliEnv(auditorKey));
      assert.match(list, /auditor/);
      assert.ok(!list.includes(auditorKey), "key lists never show secrets");
      const auditorId = /^wdn_(key_[0-9a-z]{26})_/.exec(auditorKey)![1]!;
      await assert.rejects(cli(["keys", "revoke", auditorId], cliEnv(auditorKey)), /permission_denied/);
      await cli(["keys", "revoke", auditorId], cliEnv(adminKey));
      await refused(auditor.sessions.getSession({ sessionId: created.session!.sessionId }), Code.Unauthenticated, /^invalid API key$/);
      await assert.rejects(cli(["sessions", "list"], cliEnv(auditorKey)), /unauthenticated: invalid API key/);
    });

    test("the CLI given a malformed API key (two lines) fails naming the flag, and never prints the key", async () => {
      // A key file holding a key and a note, or two keys.
      for (const [args, env] of [
        [["sessions", "list", "--api-key", `${adminKey}\nold-key-below`], { WARDEN_SERVER: url }],
        [["sessions", "list"], cliEnv(`${adminKey}\nold-key-below`)],
      ] as const) {
        const out: string[] = [];
        const code = await runCli([...args], { env, stdout: (t) => out.push(t), stderr: (t) => out.push(t) });
        assert.equal(code, 1);
        const printed = out.join("\n");
        assert.ok(!printed.includes(adminKey.slice(-43)), "the key's secret was printed");
        assert.equal(
          printed,
          `warden: --api-key (or WARDEN_API_KEY): not a usable API key: only visible ASCII characters may appear in one, and it holds a line break at character ${adminKey.length + 1}`,
        );
      }
      // A trailing newline (a file read whole) is no fault.
      await cli(["sessions", "list"], cliEnv(`${adminKey}\n`));
    });

    test("an agent key may only touch its own agent and its sessions", async () => {
      const me = id("shopper");
      const other = id("courier");
      const { secret: agentKey } = await clients(adminKey).auth.createApiKey({ role: ApiKeyRole.AGENT, agentId: me });
      secrets.push(agentKey);
      await refused(clients(adminKey).auth.createApiKey({ role: ApiKeyRole.AGENT }), Code.InvalidArgument, /agent_id/);
      const agent = clients(agentKey);
      const mine = await agent.sessions.createSession(sessionRequest(me, {}));
      assert.equal(mine.session?.agentId, me);
      secrets.push(mine.sessionToken);
      const theirs = await clients(adminKey).sessions.createSession(sessionRequest(other, {}));
      secrets.push(theirs.sessionToken);

      await refused(agent.sessions.createSession(sessionRequest(other, {})), Code.PermissionDenied, new RegExp(`may only act for agent "${me}"`));
      await refused(agent.sessions.getSession({ sessionId: theirs.session!.sessionId }), Code.PermissionDenied, /belongs to another agent/);
      await refused(
        grpcJsCall(grpcAddress, SessionService, "GetSession", SessionService.method.getSession.input, SessionService.method.getSession.output, { sessionId: theirs.session!.sessionId }, agentKey),
        Code.PermissionDenied,
        /belongs to another agent/,
      );
      await refused(agent.sessions.forkSession({ parentSessionId: theirs.session!.sessionId, policy: { currencyCode: "USD" } }), Code.PermissionDenied);
      await refused(agent.policy.check({ sessionId: theirs.session!.sessionId, action: payment(USD(1)) }), Code.PermissionDenied);
      await refused(agent.sessions.listSessions({}), Code.PermissionDenied, /may only act for agent/);
      await refused(agent.agents.getAgent({ agentId: other }), Code.PermissionDenied);
      await refused(agent.sessions.getSession({ sessionId: "no-such-session" }), Code.NotFound);
      // Owners asked for at once are looked up together; each call still gets its own answer.
      const [own, foreign, missing] = await Promise.allSettled([
        agent.sessions.getSession({ sessionId: mine.session!.sessionId }),
        agent.sessions.getSession({ sessionId: theirs.session!.sessionId }),
        agent.sessions.getSession({ sessionId: "no-such-session-either" }),
      ]);
      assert.equal(own.status === "fulfilled" && own.value.session?.sessionId, mine.session!.sessionId);
      assert.equal(foreign.status === "rejected" && ConnectError.from(foreign.reason).code, Code.PermissionDenied);
      assert.equal(missing.status === "rejected" && ConnectError.from(missing.reason).code, Code.NotFound);
      await refused(agent.sessions.revokeSession({ sessionId: mine.session!.sessionId, reason: "x" }), Code.PermissionDenied);

      assert.deepEqual((await agent.sessions.listSessions({ agentId: me })).sessions.map((s) => s.sessionId), [mine.session!.sessionId]);
      assert.equal((await agent.agents.getAgent({ agentId: me })).agent?.agentId, me);
      // The control plane's PolicyService takes agent keys for the agent's own sessions (sidecars call it so).
      const decided = await clients(agentKey, "grpc").policy.check({ sessionId: mine.session!.sessionId, action: payment(USD(1)) });
      assert.equal(decided.decision?.outcome, Outcome.ALLOW);
      const fresh = await agent.auth.createSessionToken({ sessionId: mine.session!.sessionId });
      secrets.push(fresh.sessionToken);
      await refused(agent.auth.createSessionToken({ sessionId: theirs.session!.sessionId }), Code.PermissionDenied);
    });

    test("PolicyService takes the session's own token on both listeners, and refuses every other", async () => {
      const admin = clients(adminKey);
      const a = await admin.sessions.createSession(sessionRequest(id("agent"), { daily: { maxValueMicros: USD(100) } }));
      const b = await admin.sessions.createSession(sessionRequest(id("agent"), {}));
      secrets.push(a.sessionToken, b.sessionToken);
      const sa = a.session!.sessionId;
      for (const transport of ["connect", "grpc"] as const) {
        const res = await clients(a.sessionToken, transport).policy.check({ sessionId: sa, action: payment(USD(10)) });
        assert.equal(res.decision?.outcome, Outcome.ALLOW);
        await refused(clients(b.sessionToken, transport).policy.check({ sessionId: sa, action: payment(USD(10)) }), Code.Unauthenticated, /^token is for another session$/);
      }
      const viaGrpcJs = (await grpcJsCall(grpcAddress, PolicyService, "Check", PolicyService.method.check.input, PolicyService.method.check.output, { sessionId: sa, action: payment(USD(5)) }, a.sessionToken)) as { decision?: { outcome: Outcome } };
      assert.equal(viaGrpcJs.decision?.outcome, Outcome.ALLOW);
      await refused(
        grpcJsCall(grpcAddress, PolicyService, "Check", PolicyService.method.check.input, PolicyService.method.check.output, { sessionId: sa, action: payment(USD(5)) }, b.sessionToken),
        Code.Unauthenticated,
        /another session/,
      );
      await refused(clients("not.a.token").policy.check({ sessionId: sa, action: payment(USD(1)) }), Code.Unauthenticated, /^invalid token$/);
      const [h, p, s] = a.sessionToken.split(".");
      const tampered = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, "base64url").toString()), sub: b.session!.sessionId })).toString("base64url")}.${s}`;
      await refused(clients(tampered).policy.check({ sessionId: b.session!.sessionId, action: payment(USD(1)) }), Code.Unauthenticated, /^invalid token$/);
      // A session token is not an admin credential.
      await refused(clients(a.sessionToken).sessions.getSession({ sessionId: sa }), Code.Unauthenticated, /^invalid API key$/);

      // A forked child has its own token; the parent's does not work for it.
      const child = await admin.sessions.forkSession({ parentSessionId: sa, policy: { currencyCode: "USD" } });
      secrets.push(child.sessionToken);
      const sc = child.session!.sessionId;
      assert.equal((await clients(child.sessionToken).policy.check({ sessionId: sc, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
      await refused(clients(a.sessionToken).policy.check({ sessionId: sc, action: payment(USD(1)) }), Code.Unauthenticated, /another session/);
      // Admin keys may decide too (warden check with WARDEN_API_KEY).
      assert.equal((await admin.policy.check({ sessionId: sa, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    });

    test("ApprovalService's API-key methods: a credential that is no valid token is UNAUTHENTICATED, a valid session token PERMISSION_DENIED", async () => {
      // UNAUTHENTICATED tells a client to get new credentials; a typo, a
      // truncated paste or a token of another issuer is not a role.
      const s = await clients(adminKey).sessions.createSession(sessionRequest(id("agent"), {}));
      secrets.push(s.sessionToken);
      const approvalId = "apr_00000000000000000000000000";
      for (const transport of ["connect", "grpc"] as const) {
        for (const [credential, code, message] of [
          ["not-a-real-credential", Code.Unauthenticated, /^invalid token$/],
          [s.sessionToken.slice(0, -4) + (s.sessionToken.endsWith("AAAA") ? "BBBB" : "AAAA"), Code.Unauthenticated, /^invalid token$/],
          [s.sessionToken, Code.PermissionDenied, /^a session token cannot call \w+Approvals?: use an API key$/],
        ] as const) {
          const approvals = clients(credential, transport).approvals;
          await refused(approvals.listApprovals({}), code, message);
          await refused(approvals.approveApproval({ approvalId }), code, message);
          await refused(approvals.denyApproval({ approvalId }), code, message);
        }
      }
    });

    test("extending a session keeps its token; an expired token is refused and CreateSessionToken replaces it", async () => {
      const admin = clients(adminKey);
      const s = await admin.sessions.createSession(sessionRequest(id("agent"), {}, { expiration: { case: "ttl", value: durationFromMs(3_600_000) } }));
      secrets.push(s.sessionToken);
      const sid = s.session!.sessionId;
      const agent = clients(s.sessionToken);
      clock.advance(50 * 60_000);
      await admin.sessions.extendSession({ sessionId: sid, extension: { case: "extendBy", value: durationFromMs(90 * DAY) } });
      clock.advance(20 * 60_000); // past the first expiry
      assert.equal((await agent.policy.check({ sessionId: sid, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);

      clock.advance(31 * DAY); // past the token's 30 days, within the session's 90
      await refused(agent.policy.check({ sessionId: sid, action: payment(USD(1)) }), Code.Unauthenticated, /^token expired$/);
      const renewed = await admin.auth.createSessionToken({ sessionId: sid });
      secrets.push(renewed.sessionToken);
      assert.equal(renewed.expireTime?.seconds, BigInt(Math.floor(clock.ms / 1000) + 30 * 24 * 3600));
      assert.equal((await clients(renewed.sessionToken).policy.check({ sessionId: sid, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
      // The session's own expiry is checked from the session: a valid token does not keep it alive.
      const short = await admin.sessions.createSession(sessionRequest(id("agent"), {}, { expiration: { case: "expireTime", value: timestampFromMs(clock.ms + 60_000) } }));
      secrets.push(short.sessionToken);
      clock.advance(120_000);
      const lapsed = await clients(short.sessionToken).policy.check({ sessionId: short.session!.sessionId, action: payment(USD(1)) });
      assert.equal(lapsed.decision?.outcome, Outcome.DENY);
    });

    test("a sidecar-style verifier fed by GetSigningKeys verifies tokens offline", async () => {
      const anon = createClient(AuthService, createGrpcTransport({ baseUrl: `http://${grpcAddress}` }));
      let fetched = 0;
      const verifier = createSessionTokenVerifier({
        fetchJwks: async () => {
          fetched++;
          // The proto3 JSON of GetSigningKeysResponse is a JWK Set.
          return toJson(GetSigningKeysResponseSchema, await anon.getSigningKeys({})) as unknown as JSONWebKeySet;
        },
        now: clock.now,
      });
      const s = await clients(adminKey).sessions.createSession(sessionRequest(id("agent"), {}));
      secrets.push(s.sessionToken);
      assert.equal((await verifier.verify(s.sessionToken)).sessionId, s.session!.sessionId);
      assert.equal((await verifier.verify(s.sessionToken)).agentId, s.session!.agentId);
      assert.equal(fetched, 1);
    });

    test("no key or token ever reaches the log", async () => {
      // A store failure in the middle of authenticating a call is logged
      // (INTERNAL, with the error) while the credential is in flight. A
      // key not used before: one that just authenticated is believed for
      // a second without a read.
      const { secret: unread } = await clients(adminKey).auth.createApiKey({ role: ApiKeyRole.ADMIN });
      secrets.push(unread);
      const before = logLines.length;
      await server.store.db.query("ALTER TABLE api_keys RENAME TO api_keys_away");
      try {
        await refused(clients(unread).sessions.getSession({ sessionId: "missing" }), Code.Internal, /^internal error$/);
        await refused(clients(unread, "grpc").auth.listApiKeys({}), Code.Internal, /^internal error$/);
      } finally {
        await server.store.db.query("ALTER TABLE api_keys_away RENAME TO api_keys");
      }
      assert.ok(logLines.slice(before).some((l) => l.includes("handler failed") && l.includes("api_keys")), "the failure was logged");
      // Fields named like credentials are redacted wherever a careless log call puts them.
      const log = createLogger("info", { write: (line: string) => void logLines.push(line) });
      log.info({ authorization: `Bearer ${adminKey}`, req: { headers: { authorization: `Bearer ${adminKey}` } }, res: { secret: adminKey, sessionToken: secrets.at(-1) } }, "careless");
      assert.ok(logLines.at(-1)!.includes("[redacted]"));
      assert.ok(secrets.length >= 10);
      const all = logLines.join("");
      for (const secret of secrets) {
        assert.ok(!all.includes(secret), "a credential was logged");
        // Not even the secret part of a key, or a token's signature.
        const tail = secret.startsWith("wdn_") ? secret.slice(-43) : secret.split(".")[2]!;
        assert.ok(!all.includes(tail), "part of a credential was logged");
      }
    });
  });
}

describe("warden serve without --require-auth", () => {
  let server: RunningServer;
  let drop: () => Promise<void>;
  before(async () => {
    const { location, drop: d } = await createStoreLocation("pglite");
    drop = d;
    server = await startServer({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      dataDir: (location as { dataDir: string }).dataDir,
      sweepIntervalMs: 60_000,
      logger: createLogger("silent"),
    });
  });
  after(async () => {
    await server.close(0);
    await drop();
  });

  test("needs no credentials, and still returns session tokens (agents are written once for both modes)", async () => {
    const t = createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.grpcPort}` });
    const sessions: Client<typeof SessionService> = createClient(SessionService, t);
    const created = await sessions.createSession(sessionRequest("dev-agent", {}));
    assert.match(created.sessionToken, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const policy = createClient(PolicyService, t);
    assert.equal((await policy.check({ sessionId: created.session!.sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    // A token sent anyway is ignored, not checked.
    const withToken = createClient(PolicyService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.grpcPort}`, interceptors: [bearer("whatever")] }));
    assert.equal((await withToken.check({ sessionId: created.session!.sessionId, action: payment(USD(1)) })).decision?.outcome, Outcome.ALLOW);
    const out: string[] = [];
    assert.equal(
      await runCli(["sessions", "create", "--agent", "dev-agent", "--max-per-day", "10"], { env: { WARDEN_SERVER: `http://127.0.0.1:${server.httpPort}` }, stdout: (x) => out.push(x), stderr: () => {} }),
      0,
    );
    assert.match(out.join("\n"), /session token .*\n {2}ey[\w-]+\.[\w-]+\.[\w-]+$/);
  });
});
