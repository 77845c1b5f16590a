import { create } from "@bufbuild/protobuf";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { type Action, AuthorizeRequestSchema, CheckRequestSchema, type CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import type {
  AcquireLeaseRequest,
  AcquireLeaseResponse,
  ClaimIdempotencyKeysRequest,
  IdempotencyKeyClaimResult,
  Lease,
  ReportLeasesRequest,
} from "../../src/gen/warden/v1/sync_service_pb.js";
import { requestHash } from "../../src/services/request-hash.js";
import { ReportQueue } from "../../src/sidecar/report-queue.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { type ControlPlaneClients, type DecisionPath, SidecarEngine } from "../../src/sidecar/sidecar-engine.js";
import type { WardenStore } from "../../src/store/warden-store.js";

const NO_HASH = new Uint8Array(0);

/** Options of {@link inProcessSidecar}. */
export interface InProcessSidecarOptions {
  /** Runs between a lease grant's commit and its answer reaching the sidecar (to hold it on the wire). */
  readonly beforeGrantAnswer?: (lease: Lease | undefined) => Promise<void>;
  /** Stands in for the control plane's AcquireLease (to lose its answer, say). */
  readonly acquireLease?: (req: AcquireLeaseRequest) => Promise<Partial<AcquireLeaseResponse>>;
  /** Stands in for the control plane's Check and Authorize (the store's decide, by default). */
  readonly decide?: (method: "check" | "authorize", init: { sessionId: string; action: never }) => Promise<unknown>;
  /** Every call through the control plane, no leases. */
  readonly exactOnly?: boolean;
  readonly now?: () => number;
  /** Whether the sidecar heard from the control plane within its staleness bound (always, by default). */
  readonly fresh?: () => boolean;
  /** Stands in for the control plane's ClaimIdempotencyKeys (the store's claimKeys, by default). */
  readonly claimIdempotencyKeys?: (req: ClaimIdempotencyKeysRequest) => Promise<{ results: IdempotencyKeyClaimResult[] }>;
}

/**
 * A sidecar (engine, cache, report queue) wired to `store` in process, as
 * start-sidecar.ts wires one to a control plane: for tests that need to
 * step between a sidecar and the store. `paths` lists how each `check` was
 * decided; `asked` and `sent`, the lease requests and reports it made.
 */
export function inProcessSidecar(store: WardenStore, holder: string, o: InProcessSidecarOptions = {}) {
  // What the sidecar asked for and reported, in order.
  const asked: AcquireLeaseRequest[] = [];
  const sent: ReportLeasesRequest[] = [];
  const sync = {
    getSessionState: ({ sessionId }: { sessionId: string }) => store.sessionState(sessionId),
    acquireLease: async (req: AcquireLeaseRequest): Promise<Partial<AcquireLeaseResponse>> => {
      asked.push(req);
      if (o.acquireLease !== undefined) return o.acquireLease(req);
      const lease = await store.leases.acquire({ ...req, holder } as AcquireLeaseRequest);
      await o.beforeGrantAnswer?.(lease);
      return { lease };
    },
    reportLeases: async (req: ReportLeasesRequest) => {
      sent.push(req);
      return { rejected: await store.leases.report(req) };
    },
    claimIdempotencyKeys: o.claimIdempotencyKeys ?? (async (req: ClaimIdempotencyKeysRequest) => ({ results: await store.claimKeys(req.claims) })),
  };
  // The control plane's Check and Authorize, hashing a keyed request as its service does.
  const decide =
    o.decide ??
    ((method: "check" | "authorize", init: { sessionId: string; action: never; idempotencyKey?: string }) => {
      const key = init.idempotencyKey ?? "";
      const schema = method === "check" ? CheckRequestSchema : AuthorizeRequestSchema;
      const hash = key === "" ? NO_HASH : requestHash(schema, create(schema, init));
      return store.decide({ method, sessionId: init.sessionId, action: init.action, idempotencyKey: key, requestHash: hash });
    });
  const policy = {
    check: (init: { sessionId: string; action: never }) => decide("check", init),
    authorize: (init: { sessionId: string; action: never }) => decide("authorize", init),
  };
  const reports = new ReportQueue({ holder, intervalMs: 10, send: (req) => sync.reportLeases(req) });
  let engine: SidecarEngine | undefined;
  const cache = new SessionCache({
    maxSessions: 1000,
    maxBytes: 64 * 1024 * 1024,
    fetch: (id) => store.sessionState(id),
    onChange: (b, a) => engine?.onSessionChange(b, a),
    onAgentChange: (id) => engine?.onAgentChange(id),
  });
  engine = new SidecarEngine({
    cache,
    controlPlane: { sync, policy } as unknown as ControlPlaneClients,
    reports,
    holder,
    spans: new CalendarSpanCache(),
    leaseTtlMs: 30_000,
    exactOnly: o.exactOnly,
    fresh: o.fresh ?? (() => true),
    now: o.now,
  });
  const paths: DecisionPath[] = [];
  /** A Check through the sidecar; with a key, hashed as the sidecar's service hashes it. */
  const check = (sessionId: string, action: Action, idempotencyKey = "") => {
    const req = create(CheckRequestSchema, { sessionId, action, idempotencyKey });
    return engine.check(req, idempotencyKey === "" ? NO_HASH : requestHash(CheckRequestSchema, req), (p) => paths.push(p)) as Promise<CheckResponse>;
  };
  return { engine, cache, reports, paths, check, asked, sent };
}
