import type { Logger } from "../server/logger.js";
import { redactUrl } from "../server/redact-url.js";
import { EVENT_ID_HEADER, SIGNATURE_HEADER, signWebhookBody } from "./verify-webhook-signature.js";
import type { ClaimedDelivery, WebhookStore } from "./webhook-store.js";

/** Options of {@link createWebhookDispatcher}. */
export interface WebhookDispatcherOptions {
  readonly store: WebhookStore;
  readonly logger: Logger;
  /** How often due deliveries are claimed (`--webhook-interval`); default 1 s. */
  readonly intervalMs?: number;
  /** How long after its event a failing delivery is retried (`--webhook-retry-period`); default 3 days. */
  readonly retryPeriodMs?: number;
  /** The first retry's delay; each further one doubles, up to `maxBackoffMs`. Default 1 s. */
  readonly backoffBaseMs?: number;
  /** Default 1 h. */
  readonly maxBackoffMs?: number;
  /** Failed attempts in a row that disable an endpoint; default 20. */
  readonly maxConsecutiveFailures?: number;
  /** How long one request may take; default 10 s. */
  readonly requestTimeoutMs?: number;
  /** Most deliveries claimed (and sent concurrently) per tick; default 64. */
  readonly batchSize?: number;
  /** Draws in [0, 1) for jitter; `Math.random` by default. */
  readonly random?: () => number;
}

/** A running dispatcher. */
export interface WebhookDispatcher {
  /** Claims and sends one batch now; resolves to how many were attempted. */
  tick(): Promise<number>;
  /** Stops the loop and waits for the batch in flight. */
  stop(): Promise<void>;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * The delay before retry number `attempts` (1 = the first retry): the base
 * doubled per attempt, capped, then jittered down by up to half, so
 * endpoints that failed together do not all come back at once.
 */
export function backoffMs(attempts: number, baseMs: number, maxMs: number, random: () => number): number {
  const full = Math.min(baseMs * 2 ** Math.min(attempts - 1, 40), maxMs);
  return Math.round(full / 2 + (random() * full) / 2);
}

/**
 * Delivers queued webhook events: every interval it claims due deliveries
 * (safe on any number of replicas, see WebhookStore.claimDue), POSTs each
 * event as JSON, signed (`warden-signature: t=…,v1=…`), and settles it:
 * delivered on 2xx; otherwise retried with exponential backoff until the
 * retry period since the event runs out, when it is abandoned and its
 * endpoint disabled. Secrets and response bodies are never logged.
 */
/**
 * A receiver behind basic auth is configured as `https://user:pass@host/…`,
 * but fetch refuses URLs with credentials: they go as an Authorization
 * header instead (RFC 7617), the URL without them.
 */
export function splitCredentials(raw: string): { url: string; authorization?: string } {
  const u = new URL(raw);
  if (u.username === "" && u.password === "") return { url: raw };
  const pair = `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`;
  u.username = "";
  u.password = "";
  return { url: u.toString(), authorization: `Basic ${Buffer.from(pair).toString("base64")}` };
}

export function createWebhookDispatcher(o: WebhookDispatcherOptions): WebhookDispatcher {
  const store = o.store;
  const log = o.logger;
  const intervalMs = o.intervalMs ?? 1000;
  const retryPeriodMs = o.retryPeriodMs ?? 3 * DAY_MS;
  const baseMs = o.backoffBaseMs ?? 1000;
  const maxBackoff = o.maxBackoffMs ?? 60 * 60 * 1000;
  const maxFailures = o.maxConsecutiveFailures ?? 20;
  const timeoutMs = o.requestTimeoutMs ?? 10_000;
  const batchSize = o.batchSize ?? 64;
  const random = o.random ?? Math.random;
  const inFlight = new AbortController();

  /**
   * `counted`: the endpoints whose failure this tick already counted. The
   * deliveries of one tick go out together, so an endpoint down for a
   * second fails all of them at once: that is one failure in a row, not
   * one per queued event (else 20 queued events disable it at once).
   */
  async function send(d: ClaimedDelivery, counted: Set<string>): Promise<void> {
    let error: string | undefined;
    let gone = false;
    try {
      const t = Math.floor(store.now() / 1000);
      const { url, authorization } = splitCredentials(d.url);
      const res = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          [SIGNATURE_HEADER]: signWebhookBody(d.secrets, t, d.body),
          [EVENT_ID_HEADER]: d.eventId,
          "user-agent": "warden-webhooks/1",
          ...(authorization === undefined ? {} : { authorization }),
        },
        body: d.body,
        redirect: "manual",
        signal: AbortSignal.any([AbortSignal.timeout(timeoutMs), inFlight.signal]),
      });
      // Read (and drop) the body so the connection can be reused.
      await res.arrayBuffer().catch(() => undefined);
      if (res.status < 200 || res.status > 299) error = `HTTP ${res.status}`;
      // The receiver says the endpoint is gone for good: three days of
      // retries would only hammer it. Disabled now; what waits is kept.
      gone = res.status === 410;
    } catch (err) {
      // Stored, logged and shown as the endpoint's disabled reason: never
      // with the URL's password, should a message quote the URL.
      error = (err instanceof Error ? `${err.name}: ${err.message}` : String(err)).replaceAll(d.url, redactUrl(d.url));
    }
    // Cut short by stop(): not the endpoint's failure; the claim's lease brings it back.
    if (inFlight.signal.aborted) return;
    if (error === undefined) {
      await store.markDelivered(d);
      return;
    }
    const nowMs = store.now();
    const next = nowMs + backoffMs(d.attempts + 1, baseMs, maxBackoff, random);
    // A 410 keeps the delivery (parked with its endpoint), however late.
    const giveUp = !gone && next > d.eventMs + retryPeriodMs;
    const first = !counted.has(d.endpointId);
    counted.add(d.endpointId);
    const disabled = await store.markFailed(d, error, giveUp ? undefined : next, maxFailures, first, gone);
    const fields = { endpointId: d.endpointId, eventId: d.eventId, url: redactUrl(d.url), attempts: d.attempts + 1, error };
    if (disabled !== undefined) log.warn({ ...fields, reason: disabled }, "webhook endpoint disabled");
    else if (giveUp) log.warn(fields, "webhook delivery abandoned");
    else log.debug({ ...fields, retryInMs: next - nowMs }, "webhook delivery failed; will retry");
  }

  let running: Promise<number> | undefined;
  async function tick(): Promise<number> {
    // A lease longer than a request can take, so no other replica re-sends it meanwhile.
    const claimed = await store.claimDue(batchSize, timeoutMs * 3);
    const counted = new Set<string>();
    await Promise.all(
      claimed.map((d) => send(d, counted).catch((err: unknown) => log.warn({ err, endpointId: d.endpointId, eventId: d.eventId }, "webhook settle failed"))),
    );
    return claimed.length;
  }
  const timer = setInterval(() => {
    if (running !== undefined) return;
    running = tick()
      .catch((err: unknown) => {
        log.warn({ err }, "webhook dispatch failed");
        return 0;
      })
      .finally(() => {
        running = undefined;
      });
  }, intervalMs);
  timer.unref();

  return {
    tick,
    async stop() {
      clearInterval(timer);
      // Requests in flight are cut short; their deliveries come due again after the claim's lease.
      inFlight.abort();
      await running;
    },
  };
}
