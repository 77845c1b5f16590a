import { create, type JsonObject } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Event, type EventFilter, EventSchema } from "../gen/warden/v1/event_service_pb.js";
import type { Queryable } from "./database.js";
import { pageToken, readPageToken } from "./page-token.js";

interface EventRow {
  event_id: string;
  position: string;
  type: string;
  session_id: string;
  agent_id: string;
  create_time: Date;
  data: JsonObject | string;
}

/** A page of events and the position of its last one. */
export interface EventPage {
  readonly events: Event[];
  /** Position of the last event read (or `after` when none was). */
  readonly last: bigint;
  /** Whether more events matched than `limit`. */
  readonly more: boolean;
}

/**
 * Reads the events table in position order: the order events committed in
 * (see 007_event_positions.sql), so "after position p" never skips one.
 */
export interface EventLog {
  /** Events after `after` that match `filter`, at most `limit`. */
  read(filter: EventFilter | undefined, after: bigint, limit: number): Promise<EventPage>;
  /** The position of an event; NOT_FOUND (naming `field`) when there is none. */
  positionOf(eventId: string, field: string): Promise<bigint>;
  /** The newest position (0 when there are no events). */
  head(): Promise<bigint>;
  /** ListEvents: oldest first, keyset pages. */
  list(filter: EventFilter | undefined, pageSize: number, token: string): Promise<{ events: Event[]; nextPageToken: string }>;
}

const DEFAULT_PAGE = 100;

/** Creates an {@link EventLog} over `db`. */
export function createEventLog(db: Queryable): EventLog {
  const log: EventLog = {
    async read(filter, after, limit) {
      const where = ["position > $1"];
      const params: unknown[] = [after.toString()];
      if (filter?.sessionId) {
        params.push(filter.sessionId);
        where.push(`session_id = $${params.length}`);
      }
      if (filter?.agentId) {
        params.push(filter.agentId);
        where.push(`agent_id = $${params.length}`);
      }
      if (filter !== undefined && filter.types.length > 0) {
        params.push(filter.types);
        where.push(`type = ANY($${params.length}::text[])`);
      }
      const { rows } = await db.query<EventRow>(
        `SELECT event_id, position, type, session_id, agent_id, create_time, data FROM events
          WHERE ${where.join(" AND ")} ORDER BY position LIMIT ${limit + 1}`,
        params,
      );
      const page = rows.slice(0, limit);
      return { events: page.map(eventOf), last: page.length === 0 ? after : BigInt(page.at(-1)!.position), more: rows.length > limit };
    },
    async positionOf(eventId, field) {
      const { rows } = await db.query<{ position: string }>("SELECT position FROM events WHERE event_id = $1", [eventId]);
      if (rows.length === 0) throw new ConnectError(`${field}: event "${eventId}" not found`, Code.NotFound);
      return BigInt(rows[0]!.position);
    },
    async head() {
      const { rows } = await db.query<{ p: string | null }>("SELECT max(position) AS p FROM events");
      return BigInt(rows[0]?.p ?? 0);
    },
    async list(filter, pageSize, token) {
      // As read() takes them: "" is no filter, and types are a set.
      const query = {
        "filter.session_id": filter?.sessionId ?? "",
        "filter.agent_id": filter?.agentId ?? "",
        "filter.types": [...(filter?.types ?? [])].sort(),
      };
      const after = readPageToken(token, { p: "integer" }, query);
      const page = await log.read(filter, BigInt(after?.p ?? 0), pageSize === 0 ? DEFAULT_PAGE : pageSize);
      return { events: page.events, nextPageToken: page.more ? pageToken({ p: page.last.toString() }, query) : "" };
    },
  };
  return log;
}

function eventOf(r: EventRow): Event {
  return create(EventSchema, {
    eventId: r.event_id,
    type: r.type,
    createTime: timestampFromMs(r.create_time.getTime()),
    sessionId: r.session_id,
    agentId: r.agent_id,
    data: typeof r.data === "string" ? (JSON.parse(r.data) as JsonObject) : r.data,
  });
}
