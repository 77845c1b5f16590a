import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { clone, create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, type SessionSnapshot, SessionService, SessionSnapshotSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { startTestServer } from "../helpers/server-process.js";

const INT64_MAX = 9223372036854775807n;

async function outcome(p: Promise<unknown>): Promise<{ code: string; message: string; value?: unknown }> {
  try {
    return { code: "OK", message: "", value: await p };
  } catch (e) {
    const c = ConnectError.from(e);
    return { code: Code[c.code], message: c.rawMessage };
  }
}

describe("warden serve: NUL characters, out-of-range times, int64 totals", () => {
  let server: RunningServer;
  let url: string;
  const connect = () => createConnectTransport({ baseUrl: url, httpVersion: "1.1" });
  const grpc = () => createGrpcTransport({ baseUrl: `http://127.0.0.1:${server.grpcPort}` });

  before(async () => {
    server = await startTestServer();
    url = `http://127.0.0.1:${server.httpPort}`;
  });
  after(async () => {
    await server?.close(0);
  });

  test("a NUL in one agent's idempotency_key is INVALID_ARGUMENT for that call and fails no other agent's decision", async () => {
    const sessions = createClient(SessionService, connect());
    const policy = createClient(PolicyService, connect());
    const bad = (await sessions.createSession(sessionRequest("nul-agent", {}))).session!.sessionId;
    const others = await Promise.all(Array.from({ length: 8 }, (_, i) => sessions.createSession(sessionRequest(`bystander-${i}`, {}))));
    // Concurrent calls, as a busy server sees them.
    const [badResult, ...bystanders] = await Promise.all([
      outcome(policy.check({ sessionId: bad, action: payment(1n), idempotencyKey: "k\u0000" })),
      ...others.map((o) => outcome(policy.check({ sessionId: o.session!.sessionId, action: payment(1n) }))),
    ]);
    const failed = bystanders.filter((r) => r.code !== "OK");
    assert.deepEqual(
      failed.map((r) => `${r.code}: ${r.message}`),
      [],
      `${failed.length} of ${bystanders.length} well-formed decisions of other agents failed because of one agent's malformed key`,
    );
    assert.equal(badResult!.code, "InvalidArgument", `the malformed call itself: ${badResult!.code}: ${badResult!.message}`);
    assert.match(badResult!.message, /idempotency_key/);
  });

  test("an Authorize whose total would pass int64 is denied, holds nothing, and the session stays readable", async () => {
    const sessions = createClient(SessionService, grpc());
    const policy = createClient(PolicyService, grpc());
    // Only an action-count limit: the value is the agent's business.
    const sid = (await sessions.createSession(sessionRequest("big-spender", { lifetime: { maxActions: 10n } }))).session!.sessionId;
    const first = await policy.check({ sessionId: sid, action: payment(INT64_MAX) });
    assert.equal(first.decision?.outcome, Outcome.ALLOW);
    const second = await outcome(policy.authorize({ sessionId: sid, action: payment(INT64_MAX) }));
    const allowed = second.code === "OK" && (second.value as { decision?: { outcome: Outcome } }).decision?.outcome === Outcome.ALLOW;
    assert.deepEqual(
      (second.value as { decision?: { reasons: Reason[] } } | undefined)?.decision?.reasons.map((r) => Reason[r]),
      ["AMOUNT_OUT_OF_RANGE"],
      `${second.code}: ${second.message}`,
    );
    const read = await outcome(sessions.getSession({ sessionId: sid }));
    assert.equal(read.code, "OK", `after an Authorize answered ${second.code} (${second.message}), GetSession fails: ${read.code}: ${read.message}`);
    const usage = (read.value as { session: { usage: { valueHeldMicros: bigint; actionsHeld: bigint } } }).session.usage;
    if (!allowed) {
      assert.equal(usage.actionsHeld, 0n, `a call answered ${second.code} left a hold of ${usage.actionsHeld} action(s) / ${usage.valueHeldMicros} micros`);
    }
  });

  test("out-of-range times and NUL characters in text fields are INVALID_ARGUMENT naming the field, not INTERNAL", async () => {
    const sessions = createClient(SessionService, connect());
    const base = { agentId: "edge", policy: { currencyCode: "USD" } };
    const ttl = { case: "ttl" as const, value: { seconds: 3600n, nanos: 0 } };
    const cases: [string, string, () => Promise<unknown>][] = [
      ["expire_time", "expire_time year 318857", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: { case: "expireTime", value: { seconds: 10n ** 13n, nanos: 0 } } }))],
      ["ttl", "ttl of 10^13 s", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: { case: "ttl", value: { seconds: 10n ** 13n, nanos: 0 } } }))],
      ["idle_timeout", "idle_timeout of 10^13 s", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: ttl, idleTimeout: { seconds: 10n ** 13n, nanos: 0 } }))],
      ["description", "description with NUL", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: ttl, description: "a\u0000b" }))],
      ["labels", "label value with NUL", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: ttl, labels: { team: "a\u0000b" } }))],
      ["owner", "owner with NUL", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: ttl, owner: "a\u0000b" }))],
    ];
    const { session } = await sessions.createSession(sessionRequest("edge", {}));
    cases.push(["extend_by", "extend_by of 10^13 s", () => sessions.extendSession({ sessionId: session!.sessionId, extension: { case: "extendBy", value: { seconds: 10n ** 13n, nanos: 0 } } })]);
    // The store keeps whole milliseconds: under one, a duration would round
    // to nothing (a session idle the moment it is made).
    const tiny = { seconds: 0n, nanos: 400_000 };
    cases.push(
      ["ttl", "ttl of 0.4 ms", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: { case: "ttl", value: tiny } }))],
      ["idle_timeout", "idle_timeout of 0.4 ms", () => sessions.createSession(create(CreateSessionRequestSchema, { ...base, expiration: ttl, idleTimeout: tiny }))],
      ["extend_by", "extend_by of 0.4 ms", () => sessions.extendSession({ sessionId: session!.sessionId, extension: { case: "extendBy", value: tiny } })],
      ["ttl", "fork ttl of 0.4 ms", () => sessions.forkSession({ parentSessionId: session!.sessionId, policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: tiny } })],
      ["idle_timeout", "fork idle_timeout of 0.4 ms", () => sessions.forkSession({ parentSessionId: session!.sessionId, policy: { currencyCode: "USD" }, idleTimeout: tiny })],
      ["expire_time", "extension to a time past 9999-12-31", () => sessions.extendSession({ sessionId: session!.sessionId, extension: { case: "expireTime", value: { seconds: 253402300799n, nanos: 999_999_999 } } })],
    );
    const wrong: string[] = [];
    for (const [field, what, p] of cases) {
      const r = await outcome(p());
      if (r.code !== "InvalidArgument" || !r.message.includes(field)) wrong.push(`${what}: ${r.code}: ${r.message}`);
    }
    const after = await sessions.listSessions({ agentId: "edge" });
    assert.deepEqual(wrong, [], "each should be INVALID_ARGUMENT naming its field");
    assert.equal(after.sessions.length, 1, "none of the malformed creates or forks wrote a session");
  });

  test("ImportSession of a snapshot holding what CreateSession refuses, or totals past int64, is INVALID_ARGUMENT naming the field, and imports nothing", async () => {
    const sessions = createClient(SessionService, grpc());
    const policy = createClient(PolicyService, grpc());
    const sid = (await sessions.createSession(sessionRequest("exporter", { lifetime: { maxValueMicros: USD(100) } }))).session!.sessionId;
    await policy.check({ sessionId: sid, action: payment(USD(3)) });
    await policy.authorize({ sessionId: sid, action: payment(USD(4)) }); // an open hold
    const exported = (await sessions.exportSession({ sessionId: sid })).snapshot!;
    let n = 0;
    /** The snapshot as another session of `agentId` (fresh ids), changed by `change`. */
    const variant = (agentId: string, change: (s: SessionSnapshot) => void) => {
      const s = clone(SessionSnapshotSchema, exported);
      const sessionId = `imported-${++n}`;
      Object.assign(s.session!, { sessionId, agentId });
      for (const a of s.actions) Object.assign(a, { sessionId, agentId, actionId: `${a.actionId.slice(0, -3)}${String(n).padStart(3, "0")}` });
      change(s);
      return { snapshot: s, sessionId };
    };
    // Spend of this agent already, for the agent's counters to overflow.
    assert.equal((await outcome(sessions.importSession({ snapshot: variant("importer", () => {}).snapshot }))).code, "OK");
    const cases: [string, string, ReturnType<typeof variant>][] = [
      ["snapshot.session.labels", "33 labels", variant("importer", (s) => Object.assign(s.session!.labels, Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, "v"]))))],
      ["snapshot.session.labels", "a label value of 257 characters", variant("importer", (s) => (s.session!.labels.team = "v".repeat(257)))],
      ["snapshot.session.owner", "an owner of 257 characters", variant("importer", (s) => (s.session!.owner = "o".repeat(257)))],
      ["snapshot.session.idle_timeout", "an idle timeout of -5 s", variant("importer", (s) => (s.session!.idleTimeout = { $typeName: "google.protobuf.Duration", seconds: -5n, nanos: 0 }))],
      ["snapshot.session.usage.processing_time", "a processing time of 10^10 s (past int64 nanoseconds)", variant("importer", (s) => (s.session!.usage!.processingTime = { $typeName: "google.protobuf.Duration", seconds: 10n ** 10n, nanos: 0 }))],
      ["snapshot.session.usage.request_count", "a negative request count", variant("importer", (s) => (s.session!.usage!.requestCount = -1n))],
      ["snapshot.counters[0].window", "a counter of window \"fortnight\"", variant("importer", (s) => (s.counters[0]!.window = "fortnight"))],
      ["snapshot.counters[0].committed_value_micros", "a negative counter", variant("importer", (s) => (s.counters[0]!.committedValueMicros = -1n))],
      ["snapshot.counters", "committed + held past int64", variant("fresh-importer", (s) => s.counters.forEach((c) => (c.committedValueMicros = INT64_MAX - 1n)))],
      ["snapshot.counters", "committed past int64 in the agent's windows", variant("importer", (s) => s.counters.forEach((c) => (c.committedValueMicros = INT64_MAX - USD(4))))],
    ];
    const wrong: string[] = [];
    for (const [field, what, { snapshot, sessionId }] of cases) {
      const r = await outcome(sessions.importSession({ snapshot }));
      if (r.code !== "InvalidArgument" || !r.message.includes(field)) wrong.push(`${what}: ${r.code}: ${r.message}`);
      const read = await outcome(sessions.getSession({ sessionId }));
      if (read.code !== "NotFound") wrong.push(`${what}: the session was imported anyway (GetSession: ${read.code} ${read.message})`);
    }
    assert.deepEqual(wrong, [], "each should be INVALID_ARGUMENT naming its field, and import nothing");
    assert.equal((await outcome(sessions.listSessions({}))).code, "OK");
    const agentDay = (await sessions.listSessions({ agentId: "importer" })).sessions.length;
    assert.equal(agentDay, 1, "only the well-formed import is stored");
  });

  test("Connect JSON: an unknown field or enum name is INVALID_ARGUMENT naming the field, and writes nothing (a misspelt limit is not no limit)", async () => {
    const post = async (method: string, body: unknown) => {
      const r = await fetch(`${url}/warden.v1.SessionService/${method}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      return { status: r.status, json: (await r.json()) as { code?: string; message?: string; sessions?: unknown[] } };
    };
    const agentId = "json-typos";
    const misspelt = await post("CreateSession", { agentId, policy: { currencyCode: "USD", dailly: { maxValueMicros: "1000000" } }, ttl: "3600s" });
    assert.equal(misspelt.json.code, "invalid_argument");
    assert.match(misspelt.json.message!, /"dailly" is unknown/);
    const badEnum = await post("CreateSession", { agentId, policy: { currencyCode: "USD", weekStart: "WEEKDAY_SUNDAAY" }, ttl: "3600s" });
    assert.equal(badEnum.json.code, "invalid_argument");
    // protobuf-es names only the enum type; the server puts the field in front.
    assert.match(badEnum.json.message!, /^policy\.week_start: .*Weekday.*WEEKDAY_SUNDAAY/);
    const filter = await post("ListSessions", { agentId, status: "SESSION_STATUS_REVOKD" });
    assert.equal(filter.json.code, "invalid_argument", "a misspelt status filter does not list every session");
    assert.match(filter.json.message!, /^status: .*SESSION_STATUS_REVOKD/);
    assert.equal(((await post("ListSessions", { agentId })).json.sessions ?? []).length, 0, "nothing was created");
  });

  test("a forged page token is INVALID_ARGUMENT naming page_token on every list, not INTERNAL", async () => {
    const token = (position: unknown) => Buffer.from(JSON.stringify(position)).toString("base64url");
    const sessions = createClient(SessionService, grpc());
    const policy = createClient(PolicyService, connect());
    const { session } = await sessions.createSession(sessionRequest("forged-token", {}));
    for (const p of [
      () => sessions.listSessions({ pageToken: token({ t: 8.64e15, id: "x" }) }),
      () => sessions.listSessions({ pageToken: token({ t: 1, id: "x\u0000" }) }),
      () => policy.listActions({ sessionId: session!.sessionId, pageToken: token({ seq: "9999999999999999999" }) }),
    ]) {
      const o = await outcome(p());
      assert.equal(o.code, "InvalidArgument", o.message);
      assert.match(o.message, /^page_token: /);
    }
  });
});
