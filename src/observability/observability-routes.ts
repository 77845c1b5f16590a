import type { HttpRoutes } from "../transport/connect-server.js";
import type { Readiness } from "./readiness.js";

/** The part of a prom-client `Registry` the routes use. */
export interface ScrapeSource {
  /** The exposition text of every metric. */
  metrics(): Promise<string>;
  /** Its media type, e.g. "text/plain; version=0.0.4; charset=utf-8". */
  readonly contentType: string;
}

/** Options of {@link createObservabilityRoutes}. */
export interface ObservabilityRoutesOptions {
  /** What `/metrics` serves: the registry of `createMetrics`. */
  readonly registry: ScrapeSource;
  /** What `/healthz` and `/readyz` report. */
  readonly readiness: Readiness;
  /** Called when collecting the metrics fails (the scrape gets a 500), so it can be logged. */
  readonly onError?: (err: unknown) => void;
}

/** The body of `/readyz`. */
export interface ReadyzBody {
  readonly ready: boolean;
  /** Set while the process drains before exit. */
  readonly shuttingDown?: true;
  /** Every condition, the ones not ready with a `detail` saying why. */
  readonly conditions: readonly { readonly name: string; readonly ready: boolean; readonly detail?: string }[];
}

/**
 * The plain HTTP routes of every role, for `createConnectServer`'s
 * `httpRoutes` (main HTTP listener and health listener alike):
 *
 * - `GET /metrics`: Prometheus text exposition of `registry`.
 * - `GET /healthz`: liveness, 200 "ok" until shutdown begins, then 503.
 *   It does not depend on the store or the control plane: a restart
 *   would not bring those back, and a liveness probe that fails with a
 *   dependency restarts every replica at once.
 * - `GET /readyz`: 200 when ready, 503 when not, with a JSON
 *   {@link ReadyzBody} listing the conditions and why any is not ready.
 *
 * HEAD is answered like GET without a body; other methods get 405. Any
 * other path is left to the next handler.
 */
export function createObservabilityRoutes(options: ObservabilityRoutesOptions): HttpRoutes {
  const { registry, readiness, onError } = options;
  return (req, res) => {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    if (path !== "/metrics" && path !== "/healthz" && path !== "/readyz") return false;
    const out = res as unknown as PlainResponse;
    const head = req.method === "HEAD";
    if (req.method !== "GET" && !head) {
      send(out, 405, "text/plain; charset=utf-8", "method not allowed\n", head, { allow: "GET, HEAD" });
      return true;
    }
    switch (path) {
      case "/metrics":
        registry.metrics().then(
          (text) => send(out, 200, registry.contentType, text, head),
          (err: unknown) => {
            onError?.(err);
            send(out, 500, "text/plain; charset=utf-8", "collecting metrics failed\n", head);
          },
        );
        break;
      case "/healthz":
        if (readiness.live) send(out, 200, "text/plain; charset=utf-8", "ok\n", head);
        else send(out, 503, "text/plain; charset=utf-8", "shutting down\n", head);
        break;
      case "/readyz": {
        const ready = readiness.ready;
        const body: ReadyzBody = { ready, ...(readiness.live ? {} : { shuttingDown: true as const }), conditions: readiness.conditions() };
        send(out, ready ? 200 : 503, "application/json", `${JSON.stringify(body)}\n`, head);
        break;
      }
    }
    return true;
  };
}

/** What both `http.ServerResponse` and `http2.Http2ServerResponse` offer, as the routes use it. */
interface PlainResponse {
  writeHead(status: number, headers: Record<string, string | number>): unknown;
  end(body?: string): unknown;
  readonly destroyed: boolean;
}

function send(res: PlainResponse, status: number, contentType: string, body: string, head: boolean, extra: Record<string, string> = {}): void {
  // The client may have gone while the metrics were collected.
  if (res.destroyed) return;
  res.writeHead(status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(body),
    // Probes and scrapes must see the current state, never a cached one.
    "cache-control": "no-store",
    ...extra,
  });
  res.end(head ? undefined : body);
}
