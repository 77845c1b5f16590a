import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { EventService } from "../gen/warden/v1/event_service_pb.js";
import type { EventLog } from "../store/event-log.js";
import type { NotifyWatch } from "../store/notify-watch.js";

/** Options of {@link createEventService}. */
export interface EventServiceOptions {
  readonly log: EventLog;
  /** Wakes on every recorded event (the events channel). */
  readonly watch: NotifyWatch;
  /** A heartbeat goes out after this long without an event; default 5 s. */
  readonly heartbeatMs?: number;
}

/** Events read per statement while a watcher catches up. */
const CATCH_UP_PAGE = 500;

/**
 * EventService: the recorded events, listed or streamed. A watcher reads
 * by position, which is commit order, so resuming after the last event it
 * processed never skips one that committed late; it catches up in pages,
 * then waits for the next NOTIFY (or a poll) and reads again.
 */
export function createEventService(o: EventServiceOptions): ServiceImpl<typeof EventService> {
  const heartbeatMs = o.heartbeatMs ?? 5000;
  return {
    async listEvents(req) {
      return o.log.list(req.filter, req.pageSize, req.pageToken);
    },
    async *watchEvents(req, ctx) {
      // Mark before the first read: a commit between the read and the wait
      // then wakes the wait instead of being missed.
      let mark = await o.watch.mark();
      let after = req.afterEventId !== "" ? await o.log.positionOf(req.afterEventId, "after_event_id") : await o.log.head();
      let lastSentMs = Date.now();
      for (;;) {
        const page = await o.log.read(req.filter, after, CATCH_UP_PAGE);
        for (const event of page.events) yield { event };
        after = page.last;
        if (page.events.length > 0) lastSentMs = Date.now();
        if (page.more) continue;
        if (Date.now() - lastSentMs >= heartbeatMs) {
          yield {};
          lastSentMs = Date.now();
        }
        if (!(await o.watch.changed(mark, heartbeatMs - (Date.now() - lastSentMs), ctx.signal))) {
          // The call ended (the client canceled, its deadline passed): end with its reason.
          if (ctx.signal.aborted) throw ConnectError.from(ctx.signal.reason, Code.Canceled);
          // The server is shutting down. A watch never ends on its own, so
          // an OK end would read as "nothing more will come".
          throw new ConnectError("the server is shutting down; watch again with after_event_id set to the last event received", Code.Unavailable);
        }
        mark = await o.watch.mark();
      }
    },
  };
}
