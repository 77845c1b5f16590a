import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type CreateWebhookEndpointRequest,
  type RotateWebhookSecretRequest,
  type WebhookEndpoint,
  WebhookEndpointSchema,
  WebhookEndpointStatus,
} from "../gen/warden/v1/webhook_service_pb.js";
import type { Database, Queryable } from "../store/database.js";
import { newId } from "../store/ids.js";
import { pageToken, readPageToken } from "../store/page-token.js";
import { redactUrl } from "../server/redact-url.js";

const iso = (ms: number) => new Date(ms).toISOString();
const DEFAULT_PAGE = 50;

interface EndpointRow {
  endpoint_id: string;
  url: string;
  event_types: string[];
  status: number;
  disabled_reason: string;
  consecutive_failures: number;
  create_time: Date;
  update_time: Date;
  previous_secrets_expire_time: Date | null;
}

/**
 * A pending delivery of a disabled endpoint is parked: due at 'infinity',
 * beyond every claim's range of the due index, until enableEndpoint makes
 * it due again. Left due, every claim on every replica would walk past all
 * of them on each tick, for as long as the endpoint stayed disabled.
 */
const PARKED = "next_attempt_time = 'infinity'";

// Never the secret: it leaves the store only to sign (claimDue) and once on create.
const ENDPOINT_COLUMNS =
  "endpoint_id, url, event_types, status, disabled_reason, consecutive_failures, create_time, update_time, previous_secrets_expire_time";

/** A secret an endpoint had before a rotation, signing its deliveries too until `expire_ms` (migration 026). */
interface PreviousSecret {
  readonly secret: string;
  readonly expire_ms: number;
}

/** How long a replaced secret signs too when the rotation does not say. */
const DEFAULT_PREVIOUS_SECRET_TTL_MS = 24 * 3_600_000;
/**
 * The most earlier secrets that sign at once: rotations in quick
 * succession (one whose answer was lost, then another) keep the secrets
 * receivers may still hold, but each one is another HMAC per delivery.
 */
const MAX_PREVIOUS_SECRETS = 4;

/** A generated secret: 32 random bytes, as strong as the HMAC-SHA256 key can use. */
function newSecret(): string {
  return `whsec_${randomBytes(32).toString("base64url")}`;
}

/**
 * A delivery still pending under the claim that is settling it ($1
 * endpoint, $2 event, $4 the claim's lease end): one claimed again by
 * another dispatcher since (this claim lapsed) carries that claim's end,
 * and one already settled has none.
 */
const STILL_CLAIMED = "endpoint_id = $1 AND event_id = $2 AND status = 1 AND claim_expire_time = $4::timestamptz";

/**
 * Locks an endpoint's row before any of its deliveries': a failure that
 * disables the endpoint parks all of its deliveries, and would deadlock
 * with the settlements of the same tick's other deliveries (each holding
 * its delivery's row, waiting for the endpoint's) if they locked the other
 * way round.
 */
async function lockEndpoint(tx: Queryable, endpointId: string): Promise<void> {
  await tx.query("SELECT 1 FROM webhook_endpoints WHERE endpoint_id = $1 FOR UPDATE", [endpointId]);
}

/** An endpoint as the API shows it at `nowMs` (old secrets' period shown only while it runs). */
function endpointOf(r: EndpointRow, nowMs: number): WebhookEndpoint {
  return create(WebhookEndpointSchema, {
    endpointId: r.endpoint_id,
    // Its credentials are secrets, like the signing secret: never shown back.
    url: redactUrl(r.url),
    eventTypes: r.event_types,
    status: r.status as WebhookEndpointStatus,
    disabledReason: r.disabled_reason,
    consecutiveFailures: r.consecutive_failures,
    createTime: timestampFromMs(r.create_time.getTime()),
    updateTime: timestampFromMs(r.update_time.getTime()),
    previousSecretsExpireTime:
      r.previous_secrets_expire_time === null || r.previous_secrets_expire_time.getTime() <= nowMs ? undefined : timestampFromMs(r.previous_secrets_expire_time.getTime()),
  });
}

/** The previous_secrets column, as a jsonb value comes from either driver (parsed, or text). */
function previousSecretsOf(v: PreviousSecret[] | string): PreviousSecret[] {
  return typeof v === "string" ? (JSON.parse(v) as PreviousSecret[]) : v;
}

function notFound(id: string): ConnectError {
  return new ConnectError(`endpoint_id: webhook endpoint "${id}" not found`, Code.NotFound);
}

/** A delivery claimed by one dispatcher: the event, where to send it, and how to sign it. */
export interface ClaimedDelivery {
  readonly endpointId: string;
  readonly eventId: string;
  readonly url: string;
  /** The secrets that sign it: the current one first, then earlier ones still in their period. */
  readonly secrets: readonly string[];
  /** Attempts before this one. */
  readonly attempts: number;
  /**
   * The claim's lease end, as claimDue wrote it: the claim's token. Past
   * it another dispatcher may claim the delivery again, and then this
   * one's settlement is stale and changes nothing.
   */
  readonly claimExpireMs: number;
  readonly eventMs: number;
  /** The JSON body: `{id, type, time, session_id, agent_id, data}`. */
  readonly body: string;
}

/** Options of {@link createWebhookStore}. */
export interface WebhookStoreOptions {
  readonly db: Database;
  readonly now?: () => number;
}

/**
 * Webhook endpoints and their delivery queue (the `webhook_*` tables of
 * 005_events.sql). Deliveries are created with their events, by
 * `recordEvents` in the store's transactions; this claims and settles them.
 */
export class WebhookStore {
  readonly db: Database;
  readonly now: () => number;

  constructor(opts: WebhookStoreOptions) {
    this.db = opts.db;
    this.now = opts.now ?? Date.now;
  }

  /** Registers an endpoint; returns it with its secret (generated when not given). */
  async createEndpoint(req: CreateWebhookEndpointRequest): Promise<{ endpoint: WebhookEndpoint; secret: string }> {
    const nowMs = this.now();
    const secret = req.secret !== "" ? req.secret : newSecret();
    const { rows } = await this.db.query<EndpointRow>(
      `INSERT INTO webhook_endpoints (endpoint_id, url, event_types, secret, create_time, update_time)
       VALUES ($1, $2, $3::text[], $4, $5::timestamptz, $5::timestamptz) RETURNING ${ENDPOINT_COLUMNS}`,
      [newId("whe", nowMs), req.url, req.eventTypes, secret, iso(nowMs)],
    );
    return { endpoint: endpointOf(rows[0]!, nowMs), secret };
  }

  /**
   * Gives an endpoint a new secret (generated when not given). The one it
   * replaces signs too for the request's previous_secret_ttl (default 24 h),
   * beside earlier ones still in their own period; a ttl of zero drops
   * them all at once (a leaked secret).
   */
  async rotateSecret(req: RotateWebhookSecretRequest): Promise<{ endpoint: WebhookEndpoint; secret: string }> {
    const nowMs = this.now();
    const secret = req.secret !== "" ? req.secret : newSecret();
    const ttlMs = req.previousSecretTtl === undefined ? DEFAULT_PREVIOUS_SECRET_TTL_MS : durationMs(req.previousSecretTtl);
    return this.db.transaction(async (tx) => {
      const { rows } = await tx.query<{ secret: string; previous_secrets: PreviousSecret[] | string }>(
        "SELECT secret, previous_secrets FROM webhook_endpoints WHERE endpoint_id = $1 FOR UPDATE",
        [req.endpointId],
      );
      const old = rows[0];
      if (old === undefined) throw notFound(req.endpointId);
      if (old.secret === secret) throw new ConnectError("secret: is the endpoint's current secret; give another, or none to have one generated", Code.InvalidArgument);
      const earlier = previousSecretsOf(old.previous_secrets);
      const kept =
        ttlMs === 0
          ? []
          : [...earlier.filter((p) => p.expire_ms > nowMs && p.secret !== secret), { secret: old.secret, expire_ms: nowMs + ttlMs }].slice(-MAX_PREVIOUS_SECRETS);
      const until = kept.length === 0 ? null : iso(Math.max(...kept.map((p) => p.expire_ms)));
      const { rows: updated } = await tx.query<EndpointRow>(
        `UPDATE webhook_endpoints SET secret = $2, previous_secrets = $3::jsonb, previous_secrets_expire_time = $4::timestamptz, update_time = $5::timestamptz
          WHERE endpoint_id = $1 RETURNING ${ENDPOINT_COLUMNS}`,
        [req.endpointId, secret, JSON.stringify(kept), until, iso(nowMs)],
      );
      return { endpoint: endpointOf(updated[0]!, nowMs), secret };
    });
  }

  /** Reads an endpoint (without its secret). */
  async getEndpoint(endpointId: string): Promise<WebhookEndpoint> {
    const { rows } = await this.db.query<EndpointRow>(`SELECT ${ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = $1`, [endpointId]);
    if (rows[0] === undefined) throw notFound(endpointId);
    return endpointOf(rows[0], this.now());
  }

  /** Lists endpoints, newest first, with keyset paging. */
  async listEndpoints(pageSize: number, token: string): Promise<{ endpoints: WebhookEndpoint[]; nextPageToken: string }> {
    const size = pageSize === 0 ? DEFAULT_PAGE : pageSize;
    const nowMs = this.now();
    // No filters: a token binds to nothing but its shape (its position fields).
    const after = readPageToken(token, { id: "string" }, {})?.id;
    // Ids start with their creation time, so id order is creation order.
    const { rows } = await this.db.query<EndpointRow>(
      `SELECT ${ENDPOINT_COLUMNS} FROM webhook_endpoints ${after === undefined ? "" : "WHERE endpoint_id < $1"}
        ORDER BY endpoint_id DESC LIMIT ${size + 1}`,
      after === undefined ? [] : [after],
    );
    const page = rows.slice(0, size);
    return {
      endpoints: page.map((r) => endpointOf(r, nowMs)),
      nextPageToken: rows.length > size ? pageToken({ id: page.at(-1)!.endpoint_id }, {}) : "",
    };
  }

  /** Deletes an endpoint and its queued deliveries. */
  async deleteEndpoint(endpointId: string): Promise<void> {
    const { rows } = await this.db.query("DELETE FROM webhook_endpoints WHERE endpoint_id = $1 RETURNING endpoint_id", [endpointId]);
    if (rows.length === 0) throw notFound(endpointId);
  }

  /**
   * Re-enables an endpoint: its failure count starts again and deliveries
   * still pending (parked while it was disabled) are due at once; ones
   * abandoned stay abandoned.
   */
  async enableEndpoint(endpointId: string): Promise<WebhookEndpoint> {
    const nowMs = this.now();
    return this.db.transaction(async (tx) => {
      const { rows } = await tx.query<EndpointRow>(
        `UPDATE webhook_endpoints SET status = 1, disabled_reason = '', consecutive_failures = 0, update_time = $2::timestamptz
          WHERE endpoint_id = $1 RETURNING ${ENDPOINT_COLUMNS}`,
        [endpointId, iso(nowMs)],
      );
      if (rows[0] === undefined) throw notFound(endpointId);
      // Only what was parked: a delivery claimed now (its lease ahead) is
      // being sent by a dispatcher, and one waiting out a backoff keeps it.
      await tx.query(
        `UPDATE webhook_deliveries SET next_attempt_time = $2::timestamptz, update_time = $2::timestamptz WHERE endpoint_id = $1 AND status = 1 AND ${PARKED}`,
        [endpointId, iso(nowMs)],
      );
      return endpointOf(rows[0], this.now());
    });
  }

  /**
   * Claims up to `limit` due deliveries of active endpoints. `FOR UPDATE
   * SKIP LOCKED` lets every replica claim at once without taking the same
   * row; the claim then pushes the row's next attempt `leaseMs` ahead and
   * commits, so the HTTP call runs outside any transaction, and a
   * dispatcher that dies mid-call leaves the row due again after the lease
   * (at least once, never lost).
   */
  async claimDue(limit: number, leaseMs: number): Promise<ClaimedDelivery[]> {
    const nowMs = this.now();
    return this.db.transaction(async (tx) => {
      const { rows } = await tx.query<{
        endpoint_id: string;
        event_id: string;
        url: string;
        secret: string;
        previous_secrets: PreviousSecret[] | string;
        attempts: number;
        type: string;
        session_id: string;
        agent_id: string;
        create_time: Date;
        data: unknown;
      }>(
        `SELECT d.endpoint_id, d.event_id, w.url, w.secret, w.previous_secrets, d.attempts, e.type, e.session_id, e.agent_id, e.create_time, e.data
           FROM webhook_deliveries d
           JOIN webhook_endpoints w ON w.endpoint_id = d.endpoint_id
           JOIN events e ON e.event_id = d.event_id
          WHERE d.status = 1 AND d.next_attempt_time <= $1::timestamptz AND w.status = 1
          ORDER BY d.next_attempt_time, e.seq
          LIMIT ${limit}
          FOR UPDATE OF d SKIP LOCKED`,
        [iso(nowMs)],
      );
      if (rows.length === 0) return [];
      await tx.query(
        `UPDATE webhook_deliveries d SET next_attempt_time = $3::timestamptz, claim_expire_time = $3::timestamptz
           FROM unnest($1::text[], $2::text[]) AS u(endpoint_id, event_id)
          WHERE d.endpoint_id = u.endpoint_id AND d.event_id = u.event_id`,
        [rows.map((r) => r.endpoint_id), rows.map((r) => r.event_id), iso(nowMs + leaseMs)],
      );
      return rows.map((r) => ({
        endpointId: r.endpoint_id,
        eventId: r.event_id,
        url: r.url,
        secrets: [r.secret, ...previousSecretsOf(r.previous_secrets).filter((p) => p.expire_ms > nowMs).map((p) => p.secret)],
        attempts: r.attempts,
        claimExpireMs: nowMs + leaseMs,
        eventMs: r.create_time.getTime(),
        body: JSON.stringify({
          id: r.event_id,
          type: r.type,
          time: r.create_time.toISOString(),
          session_id: r.session_id,
          agent_id: r.agent_id,
          data: typeof r.data === "string" ? JSON.parse(r.data) : r.data,
        }),
      }));
    });
  }

  /** Settles a delivery that the receiver accepted; the endpoint's failure run ends. */
  async markDelivered(d: ClaimedDelivery): Promise<void> {
    const nowMs = this.now();
    await this.db.transaction(async (tx) => {
      await lockEndpoint(tx, d.endpointId);
      const { rows } = await tx.query(
        `UPDATE webhook_deliveries SET status = 2, attempts = attempts + 1, last_error = '', update_time = $3::timestamptz, claim_expire_time = NULL
          WHERE ${STILL_CLAIMED} RETURNING 1`,
        [d.endpointId, d.eventId, iso(nowMs), iso(d.claimExpireMs)],
      );
      // A stale claim: the delivery is another dispatcher's now, whose attempt settles it.
      if (rows.length === 0) return;
      await tx.query("UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE endpoint_id = $1 AND consecutive_failures <> 0", [d.endpointId]);
    });
  }

  /**
   * Records a failed attempt. The delivery is retried at `nextAttemptMs`,
   * or abandoned when that is undefined; the endpoint is disabled when an
   * event is abandoned or after `maxConsecutiveFailures` failures in a row.
   * Returns the endpoint's disabled reason when this disabled it.
   */
  async markFailed(
    d: ClaimedDelivery,
    error: string,
    nextAttemptMs: number | undefined,
    maxConsecutiveFailures: number,
    /** False for a failure of an attempt sent together with one already counted (see the dispatcher's tick). */
    count = true,
    /** The receiver answered 410 Gone: the endpoint is disabled now, its deliveries kept for a re-enable. */
    gone = false,
  ): Promise<string | undefined> {
    const nowMs = this.now();
    return this.db.transaction(async (tx) => {
      await lockEndpoint(tx, d.endpointId);
      const { rows: settled } = await tx.query(
        `UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = $5, status = $6,
                next_attempt_time = COALESCE($7::timestamptz, next_attempt_time), update_time = $3::timestamptz, claim_expire_time = NULL
          WHERE ${STILL_CLAIMED} RETURNING 1`,
        [d.endpointId, d.eventId, iso(nowMs), iso(d.claimExpireMs), error.slice(0, 500), nextAttemptMs === undefined ? 3 : 1, nextAttemptMs === undefined ? null : iso(nextAttemptMs)],
      );
      // A stale claim: not this dispatcher's failure to count any more.
      if (settled.length === 0) return undefined;
      const { rows } = await tx.query<{ consecutive_failures: number; status: number }>(
        "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + $2 WHERE endpoint_id = $1 RETURNING consecutive_failures, status",
        [d.endpointId, count ? 1 : 0],
      );
      const ep = rows[0];
      if (ep === undefined) return undefined;
      if (ep.status !== 1) {
        // Disabled while this attempt was in flight: the delivery waits with the rest.
        await tx.query(`UPDATE webhook_deliveries SET ${PARKED} WHERE endpoint_id = $1 AND event_id = $2 AND status = 1`, [d.endpointId, d.eventId]);
        return undefined;
      }
      const reason = gone
        ? `the receiver answered HTTP 410 Gone (event ${d.eventId}): it asked for no more deliveries`
        : nextAttemptMs === undefined
          ? `event ${d.eventId} was abandoned after ${d.attempts + 1} attempts over the retry period; last error: ${error.slice(0, 200)}`
          : // A delivery that failed that often, with no delivery to the
            // endpoint succeeding meanwhile: some eight hours of backoff.
            // (New events failing each round while a receiver restarts do
            // not add up to it on their own.)
            ep.consecutive_failures >= maxConsecutiveFailures && d.attempts + 1 >= maxConsecutiveFailures
            ? `${ep.consecutive_failures} consecutive failed deliveries; last error: ${error.slice(0, 200)}`
            : undefined;
      if (reason === undefined) return undefined;
      await tx.query(
        "UPDATE webhook_endpoints SET status = 2, disabled_reason = $2, update_time = $3::timestamptz WHERE endpoint_id = $1",
        [d.endpointId, reason, iso(nowMs)],
      );
      // What waits, not what other dispatchers are sending right then: each
      // of those parks itself if it fails (above), or is delivered.
      await tx.query(
        `UPDATE webhook_deliveries SET ${PARKED} WHERE endpoint_id = $1 AND status = 1 AND (claim_expire_time IS NULL OR claim_expire_time <= $2::timestamptz)`,
        [d.endpointId, iso(nowMs)],
      );
      return reason;
    });
  }
}

/** Creates a {@link WebhookStore} on `db` (migrated). */
export function createWebhookStore(opts: WebhookStoreOptions): WebhookStore {
  return new WebhookStore(opts);
}
