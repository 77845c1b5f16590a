import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { type Event, EventService, type WatchEventsResponse } from "../../src/gen/warden/v1/event_service_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { CreateSessionRequestSchema, SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { runCli } from "../../src/cli/run-cli.js";
import { createLogger } from "../../src/server/logger.js";
import { type RunningServer, startServer } from "../../src/server/start-server.js";
import { DRIVERS } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import {
  createStoreLocation,
  type GrpcClient,
  grpcClient,
  type ServerProcess,
  startServerProcess,
  startTestServer,
  startWardenCli,
  tempDataDir,
} from "../helpers/server-process.js";

/** Reads a grpc-js server stream until `done` says so; cancels it then. */
async function readUntil(stream: grpc.ClientReadableStream<WatchEventsResponse>, done: (events: Event[]) => boolean): Promise<Event[]> {
  const events: Event[] = [];
  try {
    for await (const m of stream as AsyncIterable<WatchEventsResponse>) {
      if (m.event !== undefined) events.push(m.event);
      if (done(events)) break;
    }
  } finally {
    stream.cancel();
  }
  return events;
}

for (const driver of DRIVERS) {
  describe(`WatchEvents and ListEvents against warden serve on ${driver}`, () => {
    let drop: () => Promise<void>;
    let server: ServerProcess;
    let sessions: GrpcClient;
    let policy: GrpcClient;
    let events: GrpcClient;
    let n = 0;

    before(async () => {
      const loc = await createStoreLocation(driver);
      drop = loc.drop;
      server = await startServerProcess(loc.location);
      sessions = grpcClient(SessionService, server.grpcAddress);
      policy = grpcClient(PolicyService, server.grpcAddress, 1);
      events = grpcClient(EventService, server.grpcAddress, 2);
    });
    after(async () => {
      for (const c of [sessions, policy, events]) c?.close();
      assert.equal(await server?.stop(), 0);
      await drop?.();
    });

    async function newSession(policyInit: Record<string, unknown> = {}): Promise<string> {
      const res = await sessions.createSession(
        create(CreateSessionRequestSchema, {
          agentId: `agent-events-${driver}-${++n}`,
          policy: { currencyCode: "USD", ...policyInit },
          expiration: { case: "ttl", value: durationFromMs(3_600_000) },
        }),
      );
      return res.session.sessionId as string;
    }

    test("a watcher sees each change as it commits, in order, with its data", async () => {
      // Resume after a marker's event, so nothing depends on when the stream opens.
      const marker = await newSession();
      const from = (await events.listEvents({ filter: { sessionId: marker } })).events[0] as Event;
      const watch = events.watchEvents({ afterEventId: from.eventId });
      const sessionId = await newSession({ daily: { maxValueMicros: USD(10) } });
      const seen = readUntil(watch, (es) => es.some((e) => e.type === "session.revoked" && e.sessionId === sessionId));
      const auth = await policy.authorize({ sessionId, action: payment(USD(4)), idempotencyKey: "a1" });
      await policy.capture({ sessionId, authorizationId: auth.authorizationId, idempotencyKey: "c1" });
      await policy.check({ sessionId, action: payment(USD(7)), idempotencyKey: "k1" });
      await sessions.revokeSession({ sessionId, reason: "done" });
      const mine = (await seen).filter((e) => e.sessionId === sessionId);
      assert.deepEqual(
        mine.map((e) => e.type),
        ["session.created", "authorization.captured", "session.limit_reached", "session.revoked"],
      );
      assert.equal(mine[1]!.data!.captured_amount_micros, "4000000");
      assert.equal(mine[2]!.data!.reason, "LIMIT_DAILY_VALUE");
      assert.equal(mine[3]!.data!.reason, "done");
      for (const e of mine) assert.match(e.eventId, /^evt_[a-z0-9]{26}$/);
    });

    test("resume after an event id: the rest, exactly once, and the filter applies", async () => {
      const sessionId = await newSession();
      await sessions.pauseSession({ sessionId, reason: "p" });
      await sessions.resumeSession({ sessionId, reason: "r" });
      await sessions.endSession({ sessionId, reason: "e" });
      const all = (await events.listEvents({ filter: { sessionId } })).events as Event[];
      assert.deepEqual(
        all.map((e) => e.type),
        ["session.created", "session.paused", "session.resumed", "session.completed"],
      );
      const rest = await readUntil(events.watchEvents({ filter: { sessionId }, afterEventId: all[0]!.eventId }), (es) => es.length === 3);
      assert.deepEqual(rest.map((e) => e.eventId), all.slice(1).map((e) => e.eventId));
      const typed = await readUntil(
        events.watchEvents({ filter: { sessionId, types: ["session.completed"] }, afterEventId: all[0]!.eventId }),
        (es) => es.length === 1,
      );
      assert.deepEqual(typed.map((e) => e.type), ["session.completed"]);
    });

    test("under concurrent writers a watcher misses nothing and sees nothing twice", async () => {
      const ids = await Promise.all(Array.from({ length: 8 }, () => newSession()));
      const first = (await events.listEvents({ filter: { sessionId: ids[0] } })).events[0] as Event;
      const watch = events.watchEvents({ afterEventId: first.eventId });
      const seen = readUntil(watch, (es) => ids.every((id) => es.some((e) => e.sessionId === id && e.type === "session.revoked")));
      await Promise.all(
        ids.map(async (id) => {
          await sessions.pauseSession({ sessionId: id, reason: "p" });
          await sessions.resumeSession({ sessionId: id, reason: "r" });
          await sessions.revokeSession({ sessionId: id, reason: "x" });
        }),
      );
      const got = await seen;
      assert.equal(new Set(got.map((e) => e.eventId)).size, got.length, "no event twice");
      // Everything ListEvents has after the first event, the watcher saw, in the same order.
      const listed: Event[] = [];
      let pageToken = "";
      do {
        const page = await events.listEvents({ pageSize: 7, pageToken });
        listed.push(...(page.events as Event[]));
        pageToken = page.nextPageToken as string;
      } while (pageToken !== "");
      const after = listed.slice(listed.findIndex((e) => e.eventId === first.eventId) + 1);
      const upTo = after.slice(0, got.length);
      assert.deepEqual(got.map((e) => e.eventId), upTo.map((e) => e.eventId));
    });

    test("warden events list and watch (the CLI): a table, JSON Lines, resume with --after, stop with --count", async () => {
      const sessionId = await newSession();
      await sessions.pauseSession({ sessionId, reason: "p" });
      await sessions.revokeSession({ sessionId, reason: "r" });
      const cli = async (args: string[]) => {
        const out: string[] = [];
        const err: string[] = [];
        const code = await runCli(args, { stdout: (t) => out.push(t), stderr: (t) => err.push(t), env: { WARDEN_SERVER: server.httpUrl } });
        return { code, out: out.join("\n"), err: err.join("\n") };
      };
      const listed = await cli(["events", "list", "--session", sessionId]);
      assert.equal(listed.code, 0, listed.err);
      assert.match(listed.out, /session\.created[\s\S]*session\.paused[\s\S]*session\.revoked/);
      const first = (await events.listEvents({ filter: { sessionId } })).events[0] as Event;
      const watched = await cli(["events", "watch", "--session", sessionId, "--after", first.eventId, "--count", "2", "--json"]);
      assert.equal(watched.code, 0, watched.err);
      const lines = watched.out.split("\n").map((l) => JSON.parse(l) as { type: string; sessionId: string; data: Record<string, string> });
      assert.deepEqual(lines.map((l) => l.type), ["session.paused", "session.revoked"]);
      assert.equal(lines[1]!.data.reason, "r");
      const bad = await cli(["events", "watch", "--type", "session.nope"]);
      assert.equal(bad.code, 1);
      assert.match(bad.err, /--type: "session.nope" is not an event type/);
    });

    test("bad requests: a malformed id names the field; an unknown one is NOT_FOUND", async () => {
      const stream = (req: unknown) => readUntil(events.watchEvents(req), () => true);
      await assert.rejects(stream({ afterEventId: "nope" }), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
        assert.match(e.details, /after_event_id/);
        return true;
      });
      await assert.rejects(stream({ afterEventId: "evt_00000000000000000000000000" }), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.NOT_FOUND);
        assert.match(e.details, /after_event_id/);
        return true;
      });
      await assert.rejects(events.listEvents({ pageToken: "%%%" }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /page_token/.test(e.details));
    });
  });
}

describe("WatchEvents over Connect, with heartbeats", () => {
  let server: RunningServer;
  before(async () => {
    server = await startServer({
      grpcAddress: "127.0.0.1:0",
      httpAddress: "127.0.0.1:0",
      dataDir: tempDataDir(),
      sweepIntervalMs: 60_000,
      logger: createLogger("silent"),
      eventHeartbeatMs: 150,
    });
  });
  after(async () => {
    await server?.close();
  });

  test("a quiet stream carries heartbeats; an event arrives between them", async () => {
    const transport = createConnectTransport({ baseUrl: `http://127.0.0.1:${server.httpPort}`, httpVersion: "1.1" });
    const client = createClient(EventService, transport);
    const sessionsClient = createClient(SessionService, transport);
    const abort = new AbortController();
    const got: (Event | undefined)[] = [];
    const createOne = () =>
      sessionsClient.createSession(
        create(CreateSessionRequestSchema, { agentId: "agent-hb", policy: { currencyCode: "USD" }, expiration: { case: "ttl", value: durationFromMs(60_000) } }),
      );
    let created: Promise<unknown> | undefined;
    try {
      for await (const m of client.watchEvents({}, { signal: abort.signal })) {
        got.push(m.event);
        // The first heartbeat says the stream is open: now act.
        created ??= createOne();
        const beats = got.filter((e) => e === undefined).length;
        if (beats >= 3 && got.some((e) => e !== undefined)) abort.abort();
      }
    } catch (e) {
      if (ConnectError.from(e).code !== Code.Canceled) throw e;
    }
    await created;
    assert.equal(got[0], undefined, "a heartbeat first, while nothing happened");
    assert.ok(got.filter((e) => e === undefined).length >= 3, "heartbeats while quiet");
    assert.deepEqual(got.filter((e) => e !== undefined).map((e) => e!.type), ["session.created"]);
  });
});

describe("WatchEvents when the server shuts down", () => {
  test("a watch ends UNAVAILABLE (shutting down), not OK; `warden events watch --count 5` exits 1 with one line after 1 of 5", async () => {
    const server = await startTestServer();
    let closing: Promise<void> | undefined;
    const close = (graceMs: number) => (closing ??= server.close(graceMs));
    try {
      const transport = createConnectTransport({ baseUrl: `http://127.0.0.1:${server.httpPort}`, httpVersion: "1.1" });
      const sessionsClient = createClient(SessionService, transport);
      const client = createClient(EventService, transport);
      // Both watches resume after a marker's event, so each has one event
      // to show (the next session's) once it is open, whenever that is.
      const marker = (await sessionsClient.createSession(sessionRequest("agent-events-shutdown", {}))).session!.sessionId;
      const from = (await client.listEvents({ filter: { sessionId: marker } })).events[0]!.eventId;
      const next = (await sessionsClient.createSession(sessionRequest("agent-events-shutdown", {}))).session!.sessionId;

      const cli = startWardenCli(`http://127.0.0.1:${server.httpPort}`, "events", "watch", "--after", from, "--count", "5");
      const stream = client.watchEvents({ afterEventId: from }, { timeoutMs: 0 })[Symbol.asyncIterator]();
      assert.equal((await stream.next()).value?.event?.sessionId, next);
      await cli.printed(new RegExp(next));
      const [run, end] = await Promise.all([
        cli.done,
        (async () => {
          const rest: unknown[] = [];
          try {
            for (let m = await stream.next(); !m.done; m = await stream.next()) rest.push(m.value.event);
            return `OK after ${rest.length} more`;
          } catch (e) {
            const c = ConnectError.from(e);
            return `${Code[c.code]}: ${c.rawMessage}`;
          }
        })(),
        close(5_000),
      ]);
      assert.match(end, /^Unavailable: .*shutting down.*after_event_id/, `the stream ended ${end}`);
      assert.equal(run.code, 1, `exit ${run.code} after 1 of 5 events; stderr: ${run.stderr}`);
      assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
      assert.match(run.stderr, /^warden: unavailable: .*shutting down/);
      assert.equal(run.stdout.trim().split("\n").length, 1, "the one event, printed");
    } finally {
      await close(0);
    }
  });
});
