import { create, toJsonString } from "@bufbuild/protobuf";
import { type Event, EventFilterSchema, EventSchema, ListEventsResponseSchema } from "../../gen/warden/v1/event_service_pb.js";
import { EVENT_TYPES } from "../../store/outbox.js";
import { CliError } from "../cli-error.js";
import { CLIENT_FLAGS, EXIT_OK, type CommandSpec } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { formatTable, formatTime } from "../format.js";
import type { FlagSpec, ParsedFlags } from "../parse-command-line.js";

const FILTER_FLAGS: readonly FlagSpec[] = [
  { name: "session", type: "string", value: "SESSION_ID", description: "only this session's events" },
  { name: "agent", type: "string", value: "AGENT_ID", description: "only this agent's events (required with an agent key)" },
  { name: "type", type: "string", multiple: true, value: "TYPE", description: "only these event types; repeat or comma-separate" },
];

/** The EventFilter of `--session`, `--agent` and `--type`. */
export function eventFilterOf(flags: ParsedFlags) {
  const types = [...new Set(flags.strings("type").flatMap((t) => t.split(",")).map((t) => t.trim()).filter((t) => t !== ""))];
  for (const t of types) {
    if (!(EVENT_TYPES as readonly string[]).includes(t)) throw new CliError(`--type: "${t}" is not an event type (${EVENT_TYPES.join(", ")})`);
  }
  return create(EventFilterSchema, { sessionId: flags.string("session") ?? "", agentId: flags.string("agent") ?? "", types });
}

/** One event on one line: time, type, session, agent, then its data as compact JSON. */
export function formatEventLine(e: Event): string {
  return [formatTime(e.createTime) ?? "", e.type, e.sessionId, e.agentId, JSON.stringify(e.data ?? {})].join("  ");
}

function formatEventsTable(events: readonly Event[]): string {
  if (events.length === 0) return "no events";
  return formatTable(
    [{ title: "time" }, { title: "event" }, { title: "type" }, { title: "session" }, { title: "data" }],
    events.map((e) => [formatTime(e.createTime) ?? "", e.eventId, e.type, e.sessionId, JSON.stringify(e.data ?? {})]),
  );
}

/** The `warden events …` commands. */
export const EVENT_COMMANDS: readonly CommandSpec[] = [
  {
    name: "events list",
    args: [],
    summary: "list recorded events, oldest first (what webhooks deliver)",
    notes: `Event types: ${EVENT_TYPES.join(", ")}.`,
    flags: [
      ...FILTER_FLAGS,
      ...pageFlags("events", 100),
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().events.listEvents({
        filter: eventFilterOf(ctx.flags),
        ...pageOf(ctx.flags),
      });
      ctx.output(ListEventsResponseSchema, res, () => {
        const table = formatEventsTable(res.events);
        return withNextPage(table, res.nextPageToken);
      });
      return EXIT_OK;
    },
  },
  {
    name: "events watch",
    args: [],
    summary: "print events as they are committed, one per line, until interrupted",
    notes:
      "With --json each event is one line of JSON (JSON Lines). To resume where a watch stopped, pass the last event id with --after. Exit code 1 when the stream ends before --count events (or at all, without --count): the server shut down.",
    flags: [
      ...FILTER_FLAGS,
      { name: "after", type: "string", value: "EVENT_ID", description: "start after this event (default: from now on)" },
      { name: "count", type: "string", value: "N", description: "stop after N events" },
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const countText = ctx.flags.string("count");
      const count = countText === undefined ? undefined : /^[1-9]\d{0,8}$/.test(countText) ? Number(countText) : NaN;
      if (Number.isNaN(count)) throw new CliError(`--count: "${countText}" is not a whole number above 0`);
      const json = ctx.flags.boolean("json");
      const abort = new AbortController();
      let seen = 0;
      let lastId = ctx.flags.string("after");
      try {
        const stream = ctx.clients().events.watchEvents(
          { filter: eventFilterOf(ctx.flags), afterEventId: lastId ?? "" },
          { timeoutMs: 0, signal: abort.signal },
        );
        for await (const res of stream) {
          // A response without an event is a heartbeat: nothing to print.
          if (res.event === undefined) continue;
          ctx.print(json ? toJsonString(EventSchema, res.event) : formatEventLine(res.event));
          lastId = res.event.eventId;
          if (count !== undefined && ++seen >= count) return EXIT_OK;
        }
      } finally {
        abort.abort();
      }
      // The server ended the stream (an older one does so on shutdown):
      // the events asked for did not all come, which is no success.
      const resume = lastId === undefined ? "watch again" : `resume with --after ${lastId}`;
      throw new CliError(`events watch: the stream ended after ${seen}${count === undefined ? "" : ` of ${count}`} events; ${resume}`);
    },
  },
];
