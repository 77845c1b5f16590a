import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import type { Queryable } from "./database.js";
import { appendAudit } from "./audit-log.js";
import { newId } from "./ids.js";

/** Every event type this server records; webhook endpoints subscribe to a subset. */
export const EVENT_TYPES = [
  "session.created",
  "session.extended",
  "session.paused",
  "session.resumed",
  "session.revoked",
  "session.expired",
  "session.exhausted",
  "session.failed",
  "session.completed",
  "session.limit_reached",
  "approval.requested",
  "approval.approved",
  "approval.denied",
  "approval.expired",
  "approval.canceled",
  "authorization.captured",
  "authorization.voided",
  "authorization.expired",
] as const;

/** The channel every recorded event notifies on commit (WatchEvents listens to it). */
export const EVENT_CHANNEL = "warden_events";

/** One of {@link EVENT_TYPES}. */
export type EventType = (typeof EVENT_TYPES)[number];

/** A state change to record, in the transaction that makes it. */
export interface NewEvent {
  readonly type: EventType;
  readonly sessionId: string;
  readonly agentId: string;
  /** What changed; serialised as the event's `data` object (snake_case keys). */
  readonly data: Record<string, unknown>;
  readonly nowMs: number;
}

/** The event that a session ending in `status` records, if any. */
export function endEventType(status: SessionStatus): EventType | undefined {
  switch (status) {
    case SessionStatus.REVOKED:
      return "session.revoked";
    case SessionStatus.COMPLETED:
      return "session.completed";
    case SessionStatus.EXPIRED:
      return "session.expired";
    case SessionStatus.EXHAUSTED:
      return "session.exhausted";
    case SessionStatus.FAILED:
      return "session.failed";
    default:
      return undefined;
  }
}

/**
 * Records events and, for every active webhook endpoint subscribed to an
 * event's type, a pending delivery due now: one statement, run in the
 * caller's transaction, so an event exists exactly when its change was
 * committed (the outbox pattern). Returns the new event ids, in order.
 *
 * Each event takes a position under the revision lock (see
 * 007_event_positions.sql), so call this after the transaction's row locks:
 * positions then become visible in order, and WatchEvents can resume from
 * one without missing an event that committed late. Endpoint rows are only
 * key-share locked (as the foreign key would), never locked for update,
 * so this adds no lock that could close a cycle with the revision lock.
 */
export async function recordEvents(tx: Queryable, events: readonly NewEvent[]): Promise<string[]> {
  if (events.length === 0) return [];
  const ids = events.map((e) => newId("evt", e.nowMs));
  await tx.query(
    // The subscribed endpoints are key-share locked as the foreign key
    // would lock them, but first (w): one being deleted meanwhile is waited
    // for and then left out. Found by the insert's check instead, it
    // failed the whole change (a session created, a decision batch) with a
    // foreign-key error once the delete committed.
    `WITH w AS (
       SELECT endpoint_id, event_types FROM webhook_endpoints
        WHERE status = 1 AND event_types && $2::text[]
          FOR KEY SHARE
     ), e AS (
       INSERT INTO events (event_id, type, session_id, agent_id, create_time, data, position)
       -- No ORDER BY: a function scan yields the arrays in order, and a sort
       -- could run after the positions were taken.
       SELECT u.event_id, u.type, u.session_id, u.agent_id, u.create_time, u.data::jsonb, warden_next_event_position()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
              AS u(event_id, type, session_id, agent_id, create_time, data)
       RETURNING event_id, type, create_time
     )
     INSERT INTO webhook_deliveries (endpoint_id, event_id, next_attempt_time, update_time)
     SELECT w.endpoint_id, e.event_id, e.create_time, e.create_time
       FROM e JOIN w ON e.type = ANY (w.event_types)`,
    [
      ids,
      events.map((e) => e.type),
      events.map((e) => e.sessionId),
      events.map((e) => e.agentId),
      events.map((e) => new Date(e.nowMs).toISOString()),
      events.map((e) => JSON.stringify(e.data)),
    ],
  );
  // Every event is also an audit record, chained per session (audit-log.ts).
  // Holds are audited where they change (hold-ledger.ts), so authorization.*
  // events are not recorded twice.
  await appendAudit(
    tx,
    events.flatMap((e, i) =>
      e.type.startsWith("authorization.")
        ? []
        : [{ chain: e.sessionId, type: e.type, nowMs: e.nowMs, sessionId: e.sessionId, agentId: e.agentId, data: { event_id: ids[i], ...e.data } }],
    ),
  );
  return ids;
}

/** Records one event; see {@link recordEvents}. */
export async function recordEvent(tx: Queryable, event: NewEvent): Promise<string> {
  return (await recordEvents(tx, [event]))[0]!;
}
