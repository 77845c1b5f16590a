import { Code } from "@connectrpc/connect";
import { collectDefaultMetrics, Counter, Gauge, Histogram, type Metric, Registry } from "prom-client";
import { Outcome, Reason } from "../gen/warden/v1/decision_pb.js";

/**
 * Upper bounds (seconds) of `warden_decision_duration_seconds`: 10 µs to 1 s.
 * A sidecar decides from its cache in microseconds and the store path takes
 * milliseconds, so both ends need resolution.
 */
export const DECISION_DURATION_BUCKETS: readonly number[] = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];

/** How often the event-loop delay histogram (`nodejs_eventloop_lag_*`) samples, in ms. */
export const EVENT_LOOP_SAMPLE_MS = 100;

/** Upper bounds (seconds) of `warden_store_query_duration_seconds`: 50 µs (PGlite) to 10 s (a stuck lock). */
export const STORE_QUERY_DURATION_BUCKETS: readonly number[] = [
  0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** What a lease went through, the `op` label of `warden_lease_operations_total`. */
export type LeaseOperation = "grant" | "renew" | "return" | "expire" | "reconcile";

/**
 * What a sidecar's claim of an idempotency key found, the `result` label of
 * `warden_idempotency_claims_total`: the key claimed for this call, a first
 * answer replayed, another call still deciding it (ABORTED), or no claim
 * (the control plane unreachable, so the call was decided unclaimed).
 */
export type ClaimResult = "claimed" | "answered" | "in_progress" | "unclaimed";

/**
 * What {@link Metrics.recordDecision} reads of a decision: a
 * `warden.v1.Decision` message, or the init object a handler may return.
 */
export interface DecisionLike {
  readonly outcome?: Outcome;
  readonly reasons?: readonly Reason[];
}

/** What the store ran, the `op` label of `warden_store_query_duration_seconds`. */
export type StoreOperation = "query" | "transaction";

/** Options of {@link createMetrics}. */
export interface MetricsOptions {
  /**
   * Also export the standard process metrics of prom-client (CPU, memory,
   * event-loop lag, GC, handles). Default true.
   */
  readonly processMetrics?: boolean;
  /**
   * Export a sidecar's families: the sync gauges
   * (`warden_control_plane_connected`, `warden_sync_lag_seconds`,
   * `warden_sync_staleness_seconds`, `warden_sync_staleness_bound_seconds`,
   * `warden_sync_revision`) and those of its reports to the control plane
   * (`warden_report_backlog`, `warden_report_backlog_age_seconds`,
   * `warden_reports_total`, `warden_reported_records_total`,
   * `warden_report_settlements_rejected_total`). Only a sidecar has a
   * control plane to follow; elsewhere a constant `connected 0` would read
   * as an outage. Default false.
   */
  readonly sync?: boolean;
  /** Clock (epoch ms) for the staleness gauge; the wall clock by default. */
  readonly now?: () => number;
}

/**
 * The metrics of one Warden process, over a registry of its own.
 *
 * The decision and cache-lookup recorders are on the hot path (a sidecar
 * decides in microseconds), so they only bump plain numbers in a cell
 * found by small integer or interned-string keys; the numbers are handed
 * to prom-client when the registry is scraped. prom-client's own
 * `labels(...).inc()` hashes the label object on every call (about 250 ns,
 * 320 ns for a histogram observation, measured on the CI machine), which
 * would cost more than a cached decision itself.
 */
export interface Metrics {
  /** The registry to scrape: `await registry.metrics()`, with `registry.contentType`. */
  readonly registry: Registry;
  /**
   * Records one decision: `warden_decisions_total` once per reason (reason
   * `NONE` when it lists none, as a plain ALLOW does), and its latency in
   * `warden_decision_duration_seconds`. `method` is e.g. "authorize" or
   * "check"; `path` says how it was decided: "store" on `warden serve`,
   * one of the sidecar's DECISION_PATHS ("lease", "replay", …) on a sidecar.
   */
  recordDecision(method: string, decision: DecisionLike, seconds: number, path: string): void;
  /**
   * Counts a decision call that failed instead of deciding, in
   * `warden_decision_errors_total`; `code` is the gRPC code name, e.g.
   * "INVALID_ARGUMENT" (see {@link grpcCodeName}).
   */
  recordDecisionError(method: string, code: string): void;
  /** Counts one session-cache lookup in `warden_cache_requests_total`. */
  recordCacheLookup(hit: boolean): void;
  /**
   * Where `warden_cache_sessions` and `warden_cache_bytes` come from: read
   * at scrape time, so nothing has to poll the cache to keep them current.
   */
  watchCacheSize(read: () => { sessions: number; bytes: number }): void;
  /** Adds to `warden_lease_operations_total{op}`. */
  recordLeaseOperation(op: LeaseOperation, count?: number): void;
  /** Adds one to `warden_idempotency_claims_total{result}`. */
  recordClaim(result: ClaimResult): void;
  /**
   * Adds to `warden_lease_reconciled_micros_total`: the unreported budget
   * (micros) of leases written off as spent when they were reconciled (their
   * sidecar stopped reporting, and may have allowed it). Negative amounts
   * are ignored (a counter only grows).
   */
  recordReconciledMicros(micros: bigint | number): void;
  /**
   * Adds to `warden_hold_written_off_micros_total`: the amount of sidecars'
   * holds the sweeper closed past their expiry and grace with no word from
   * their sidecar, counted as spent (it may have captured them and died).
   */
  recordHoldWrittenOffMicros(micros: bigint | number): void;
  /**
   * The sidecar's connection to the control plane, in
   * `warden_control_plane_connected`; connecting also counts as contact for
   * the staleness gauge.
   */
  setControlPlaneConnected(connected: boolean): void;
  /**
   * Records a change applied from the control plane: its revision
   * (`warden_sync_revision`), how long after its commit it was applied
   * (`warden_sync_lag_seconds`), and contact for the staleness gauge.
   */
  recordSyncApplied(revision: bigint | number, lagSeconds: number): void;
  /**
   * Notes that the control plane was heard from (any message, a heartbeat
   * too). `warden_sync_staleness_seconds` is the time since the last such
   * contact, computed at scrape time, so it grows while nothing arrives.
   */
  markSyncContact(): void;
  /** Observes one store statement or transaction in `warden_store_query_duration_seconds`. */
  observeStoreQuery(op: StoreOperation, seconds: number): void;
  /** `warden_sync_staleness_bound_seconds`: past this staleness the sidecar denies spending. */
  setStalenessBound(seconds: number): void;
  /**
   * Where `warden_report_backlog` (entries the store has not acknowledged)
   * and `warden_report_backlog_age_seconds` (how long the oldest has
   * waited) come from: read at scrape time.
   */
  watchReportBacklog(read: () => { entries: number; oldestAgeMs: number }): void;
  /** Adds one to `warden_reports_total{result}`: a ReportLeases call and how it went. */
  recordReportSend(result: ReportResult): void;
  /** Adds to `warden_reported_records_total`: decision records the store acknowledged. */
  recordReportedRecords(count: number): void;
  /** Adds to `warden_report_settlements_rejected_total`: captures or voids the store refused. */
  recordRejectedSettlements(count: number): void;
}

/** How a sidecar's report went, the `result` label of `warden_reports_total`. */
export type ReportResult = "sent" | "failed" | "refused";

/**
 * Creates the registry of every `warden_*` metric family (see
 * {@link Metrics}) plus, by default, the process metrics. Each call has its
 * own registry, never prom-client's global one, so several servers in one
 * process (tests) do not collide.
 */
export function createMetrics(options: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  const registers = [registry];
  const now = options.now ?? Date.now;
  // The event-loop delay histogram samples every 100 ms, not every 10 ms
  // (the default): its timer wakes the process each time, and at 10 ms
  // that was most of an idle sidecar's CPU. Stalls of 100 ms and more are
  // still all caught; shorter ones, in proportion to their length.
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });

  // Decisions: per method, a count per (outcome, reason) pair not yet handed
  // to the counter, keyed by a small integer so a lookup allocates nothing.
  const decisionCells = new Map<string, DecisionCells>();
  const decisions = new Counter({
    name: "warden_decisions_total",
    help: "Decisions, once per reason of each (reason NONE when a decision lists none).",
    labelNames: ["method", "outcome", "reason"] as const,
    registers,
    collect() {
      for (const cells of decisionCells.values()) {
        for (const [key, pending] of cells.counts) {
          if (pending === 0) continue;
          this.inc({ method: cells.method, outcome: enumName(Outcome, Math.floor(key / reasonSlots)), reason: reasonName((key % reasonSlots) - 1) }, pending);
          cells.counts.set(key, 0);
        }
      }
    },
  });
  const durations = new CellHistogram(
    "warden_decision_duration_seconds",
    "Time to decide, by method and decision path.",
    ["method", "path"],
    DECISION_DURATION_BUCKETS,
  );
  registry.registerMetric(durations as unknown as Metric);
  const errors = new Counter({
    name: "warden_decision_errors_total",
    help: "Decision calls that failed with an error instead of deciding, by gRPC code.",
    labelNames: ["method", "code"] as const,
    registers,
  });

  let cacheHits = 0;
  let cacheMisses = 0;
  const cacheRequests = new Counter({
    name: "warden_cache_requests_total",
    help: "Session-cache lookups, by result.",
    labelNames: ["result"] as const,
    registers,
    collect() {
      this.inc({ result: "hit" }, cacheHits);
      this.inc({ result: "miss" }, cacheMisses);
      cacheHits = cacheMisses = 0;
    },
  });
  // Both series exist from the start, so rate() and hit ratios work at once.
  cacheRequests.inc({ result: "hit" }, 0);
  cacheRequests.inc({ result: "miss" }, 0);
  let readCacheSize: (() => { sessions: number; bytes: number }) | undefined;
  new Gauge({
    name: "warden_cache_sessions",
    help: "Sessions in the cache.",
    registers,
    collect() {
      this.set(readCacheSize?.().sessions ?? 0);
    },
  });
  new Gauge({
    name: "warden_cache_bytes",
    help: "Estimated memory taken by the cached sessions.",
    registers,
    collect() {
      this.set(readCacheSize?.().bytes ?? 0);
    },
  });

  /**
   * A counter with one label whose values are all known: each series
   * exists at 0 from the start (so rates start at zero), and its child is
   * resolved once, not per increment.
   */
  const enumCounter = <V extends string>(name: string, help: string, label: string, values: readonly V[], to = registers) => {
    const counter = new Counter({ name, help, labelNames: [label], registers: to });
    const children = new Map<string, { inc(n?: number): void }>();
    for (const v of values) {
      counter.inc({ [label]: v }, 0);
      children.set(v, counter.labels({ [label]: v }));
    }
    return (v: V, n = 1) => children.get(v)?.inc(n);
  };
  const leaseOp = enumCounter<LeaseOperation>(
    "warden_lease_operations_total",
    "Budget lease operations, by op (grant, renew, return, expire, reconcile).",
    "op",
    ["grant", "renew", "return", "expire", "reconcile"],
  );
  const claim = enumCounter<ClaimResult>(
    "warden_idempotency_claims_total",
    "A sidecar's claims of idempotency keys, by result (claimed, answered, in_progress, unclaimed).",
    "result",
    ["claimed", "answered", "in_progress", "unclaimed"],
  );
  const reconciled = new Counter({
    name: "warden_lease_reconciled_micros_total",
    help: "Unreported budget (micros) of leases written off as spent when they were reconciled (their sidecar stopped reporting).",
    registers,
  });
  const holdWrittenOff = new Counter({
    name: "warden_hold_written_off_micros_total",
    help: "Amount (micros) of sidecars' holds closed past their expiry with no word from their sidecar, counted as spent.",
    registers,
  });

  // Registered only on request (see MetricsOptions.sync); the recorders
  // work either way so callers need no branches.
  const syncRegisters = options.sync === true ? registers : [];
  let lastContact = now();
  const connected = new Gauge({ name: "warden_control_plane_connected", help: "1 while connected to the control plane, else 0.", registers: syncRegisters });
  const lag = new Gauge({
    name: "warden_sync_lag_seconds",
    help: "Time from a change's commit on the control plane to its application here, for the latest change.",
    registers: syncRegisters,
  });
  new Gauge({
    name: "warden_sync_staleness_seconds",
    help: "Time since the control plane was last heard from.",
    registers: syncRegisters,
    collect() {
      this.set(Math.max(0, now() - lastContact) / 1000);
    },
  });
  const revision = new Gauge({ name: "warden_sync_revision", help: "Revision of the latest change applied from the control plane.", registers: syncRegisters });
  const stalenessBound = new Gauge({
    name: "warden_sync_staleness_bound_seconds",
    help: "Past this staleness (--staleness-bound) the sidecar denies spending with CONTROL_PLANE_UNAVAILABLE.",
    registers: syncRegisters,
  });
  let readBacklog: (() => { entries: number; oldestAgeMs: number }) | undefined;
  new Gauge({
    name: "warden_report_backlog",
    help: "Decision records, settlements and releases the control plane has not acknowledged yet: what a crash of this sidecar would lose.",
    registers: syncRegisters,
    collect() {
      this.set(readBacklog?.().entries ?? 0);
    },
  });
  new Gauge({
    name: "warden_report_backlog_age_seconds",
    help: "How long the oldest entry of warden_report_backlog has waited (0 when there is none).",
    registers: syncRegisters,
    collect() {
      this.set((readBacklog?.().oldestAgeMs ?? 0) / 1000);
    },
  });
  const reportSend = enumCounter<ReportResult>(
    "warden_reports_total",
    "ReportLeases calls to the control plane, by result (sent; failed: kept and retried; refused: the store refused a session's report, kept apart).",
    "result",
    ["sent", "failed", "refused"],
    syncRegisters,
  );
  const reportedRecords = new Counter({ name: "warden_reported_records_total", help: "Decision records the control plane acknowledged.", registers: syncRegisters });
  const rejectedSettlements = new Counter({
    name: "warden_report_settlements_rejected_total",
    help: "Captures or voids made here that the store refused (see the sidecar's log).",
    registers: syncRegisters,
  });

  const storeDurations = new Histogram({
    name: "warden_store_query_duration_seconds",
    help: "Time of store statements and transactions, by op.",
    labelNames: ["op"] as const,
    buckets: [...STORE_QUERY_DURATION_BUCKETS],
    registers,
  });
  // A store call takes a hundred microseconds or more, so prom-client's
  // bound children are cheap enough here.
  const storeChildren = { query: storeDurations.labels({ op: "query" }), transaction: storeDurations.labels({ op: "transaction" }) };
  storeDurations.zero({ op: "query" });
  storeDurations.zero({ op: "transaction" });

  return {
    registry,
    recordDecision(method, decision, seconds, path) {
      let cells = decisionCells.get(method);
      if (cells === undefined) decisionCells.set(method, (cells = { method, counts: new Map() }));
      const base = (decision.outcome ?? Outcome.UNSPECIFIED) * reasonSlots;
      const reasons = decision.reasons;
      if (reasons === undefined || reasons.length === 0) {
        cells.counts.set(base, (cells.counts.get(base) ?? 0) + 1);
      } else {
        for (let i = 0; i < reasons.length; i++) {
          const key = base + reasons[i]! + 1;
          cells.counts.set(key, (cells.counts.get(key) ?? 0) + 1);
        }
      }
      durations.observe(method, path, seconds);
    },
    recordDecisionError(method, code) {
      errors.inc({ method, code });
    },
    recordCacheLookup(hit) {
      if (hit) cacheHits++;
      else cacheMisses++;
    },
    watchCacheSize(read) {
      readCacheSize = read;
    },
    recordLeaseOperation(op, count = 1) {
      leaseOp(op, count);
    },
    recordClaim(result) {
      claim(result);
    },
    recordReconciledMicros(micros) {
      const n = Number(micros);
      if (n > 0) reconciled.inc(n);
    },
    recordHoldWrittenOffMicros(micros) {
      const n = Number(micros);
      if (n > 0) holdWrittenOff.inc(n);
    },
    setControlPlaneConnected(isConnected) {
      connected.set(isConnected ? 1 : 0);
      if (isConnected) lastContact = now();
    },
    recordSyncApplied(rev, lagSeconds) {
      revision.set(Number(rev));
      lag.set(Math.max(0, lagSeconds));
      lastContact = now();
    },
    markSyncContact() {
      lastContact = now();
    },
    observeStoreQuery(op, seconds) {
      storeChildren[op].observe(seconds);
    },
    setStalenessBound(seconds) {
      stalenessBound.set(seconds);
    },
    watchReportBacklog(read) {
      readBacklog = read;
    },
    recordReportSend(result) {
      reportSend(result);
    },
    recordReportedRecords(count) {
      if (count > 0) reportedRecords.inc(count);
    },
    recordRejectedSettlements(count) {
      if (count > 0) rejectedSettlements.inc(count);
    },
  };
}

/**
 * The gRPC name of a Connect code, e.g. `Code.InvalidArgument` →
 * "INVALID_ARGUMENT", as the README's error table and grpcurl spell it.
 */
export function grpcCodeName(code: Code): string {
  return (grpcCodeNames[code] ??= (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase());
}

const grpcCodeNames: Record<number, string> = {};

/** Reasons fit below this (the enum has 23 values); a decision cell key is outcome × slots + reason + 1. */
const reasonSlots = 1024;

interface DecisionCells {
  readonly method: string;
  /** Counts not yet handed to the counter, by outcome × reasonSlots + reason + 1 (0 for no reason). */
  readonly counts: Map<number, number>;
}

function reasonName(reason: number): string {
  return reason < 0 ? "NONE" : enumName(Reason, reason);
}

/** The generated enum's name for a value (prefix stripped: "ALLOW", "LIMIT_DAILY_VALUE"), or the number for one this build does not know. */
function enumName(e: Record<number, string>, value: number): string {
  return e[value] ?? String(value);
}

/** One label set's buckets (not cumulative), sum and count. */
interface HistogramCell {
  readonly labels: Record<string, string>;
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

/**
 * A histogram with two labels whose observations cost a couple of map
 * lookups and a bucket search, rendered by prom-client's registry like its
 * own histograms (same `_bucket{le}`, `_sum`, `_count` series). It
 * implements the part of prom-client's metric interface that the registry
 * reads: `name`, `help`, `type`, `aggregator`, `get()` and `reset()`.
 */
class CellHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly #cells = new Map<string, Map<string, HistogramCell>>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly [string, string],
    readonly buckets: readonly number[],
  ) {}

  observe(a: string, b: string, value: number): void {
    let byB = this.#cells.get(a);
    if (byB === undefined) this.#cells.set(a, (byB = new Map()));
    let cell = byB.get(b);
    if (cell === undefined) {
      cell = { labels: { [this.labelNames[0]]: a, [this.labelNames[1]]: b }, counts: new Float64Array(this.buckets.length), sum: 0, count: 0 };
      byB.set(b, cell);
    }
    const buckets = this.buckets;
    for (let i = 0; i < buckets.length; i++) {
      if (value <= buckets[i]!) {
        cell.counts[i]!++;
        break;
      }
    }
    cell.sum += value;
    cell.count++;
  }

  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] }> {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const byB of this.#cells.values()) {
      for (const cell of byB.values()) {
        let cumulative = 0;
        for (let i = 0; i < this.buckets.length; i++) {
          cumulative += cell.counts[i]!;
          values.push({ labels: { ...cell.labels, le: this.buckets[i]! }, value: cumulative, metricName: `${this.name}_bucket` });
        }
        values.push({ labels: { ...cell.labels, le: "+Inf" }, value: cell.count, metricName: `${this.name}_bucket` });
        values.push({ labels: cell.labels, value: cell.sum, metricName: `${this.name}_sum` });
        values.push({ labels: cell.labels, value: cell.count, metricName: `${this.name}_count` });
      }
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#cells.clear();
  }
}
