import { create } from "@bufbuild/protobuf";
import {
  type ClaimRelease,
  ClaimReleaseSchema,
  type LeaseRecord,
  type LeaseSettlement,
  LeaseReportSchema,
  type ReportLeasesRequest,
  ReportLeasesRequestSchema,
} from "../gen/warden/v1/sync_service_pb.js";

/** What a session has to tell the store about one of its leases. */
interface Pending {
  readonly sessionId: string;
  readonly leaseId: string;
  records: LeaseRecord[];
  settlements: LeaseSettlement[];
  release: boolean;
  releasedClaims: ClaimRelease[];
}

/** Options of {@link ReportQueue}. */
export interface ReportQueueOptions {
  readonly holder: string;
  /** Sends one report; rejects when the control plane cannot be reached. */
  readonly send: (req: ReportLeasesRequest) => Promise<{ rejected: string[] }>;
  readonly intervalMs: number;
  readonly onRejected?: (rejected: string[]) => void;
  readonly onError?: (err: unknown) => void;
  /** Called after every successful send. */
  readonly onSent?: (records: number) => void;
}

/** Longest wait between tries while sends fail. */
const MAX_RETRY_MS = 1000;

/**
 * Decisions a sidecar made from its leases, on their way to the store.
 *
 * At most `intervalMs` after something is queued, all that is pending goes
 * in one ReportLeases call (one transaction in the store). The timer runs
 * only while something waits: an idle sidecar is not woken 20 times a
 * second to find nothing to send. What fails stays queued, in order, and
 * goes with the next send, tried again after a backoff (doubling from
 * `intervalMs`, up to 1 s): nothing is dropped while the process lives, and
 * a retried send is harmless because the store keys records by action id.
 * Within a session and lease, records come before settlements, released
 * idempotency-key claims and the release, which is the order the store
 * applies them in.
 */
export class ReportQueue {
  private pending = new Map<string, Pending>();
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private failures = 0;

  constructor(private readonly o: ReportQueueOptions) {}

  start(): void {
    this.started = true;
    this.arm();
  }

  /** Sets the send timer, if the queue runs, holds something, and none is set. */
  private arm(): void {
    if (!this.started || this.timer !== undefined || this.pending.size === 0) return;
    const delay = this.failures === 0 ? this.o.intervalMs : Math.min(MAX_RETRY_MS, this.o.intervalMs * 2 ** this.failures);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, delay);
    this.timer.unref();
  }

  /** Records and settlements not yet acknowledged by the store. */
  get size(): number {
    let n = 0;
    for (const p of this.pending.values()) n += p.records.length + p.settlements.length + p.releasedClaims.length + (p.release ? 1 : 0);
    return n;
  }

  record(sessionId: string, leaseId: string, r: LeaseRecord): void {
    this.entry(sessionId, leaseId).records.push(r);
  }

  settle(sessionId: string, s: LeaseSettlement): void {
    this.entry(sessionId, "").settlements.push(s);
  }

  release(sessionId: string, leaseId: string): void {
    this.entry(sessionId, leaseId).release = true;
  }

  /** Gives back the claim of an idempotency key whose call ended without a record. */
  releaseClaim(sessionId: string, idempotencyKey: string, actionId: string): void {
    this.entry(sessionId, "").releasedClaims.push(create(ClaimReleaseSchema, { idempotencyKey, actionId }));
  }

  private entry(sessionId: string, leaseId: string): Pending {
    const key = `${sessionId}|${leaseId}`;
    let p = this.pending.get(key);
    if (p === undefined) {
      p = { sessionId, leaseId, records: [], settlements: [], release: false, releasedClaims: [] };
      this.pending.set(key, p);
      this.arm();
    }
    return p;
  }

  /**
   * Sends what is pending now and resolves when the store has it (or the
   * send failed, in which case it stays queued). One send at a time: a
   * flush during a send waits for it and then sends what came meanwhile.
   */
  async flush(): Promise<void> {
    while (this.inFlight !== undefined) await this.inFlight;
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    const reports = [...batch.values()]
      // Settlements of a session go after the records of its leases.
      .sort((a, b) => (a.leaseId === "" ? 1 : 0) - (b.leaseId === "" ? 1 : 0))
      .map((p) =>
        create(LeaseReportSchema, {
          sessionId: p.sessionId,
          leaseId: p.leaseId,
          records: p.records,
          settlements: p.settlements,
          release: p.release,
          releasedClaims: p.releasedClaims,
        }),
      );
    const records = reports.reduce((n, r) => n + r.records.length, 0);
    this.inFlight = this.o
      .send(create(ReportLeasesRequestSchema, { holder: this.o.holder, reports }))
      .then(
        (res) => {
          this.failures = 0;
          if (res.rejected.length > 0) this.o.onRejected?.(res.rejected);
          this.o.onSent?.(records);
        },
        (err: unknown) => {
          this.failures++;
          this.o.onError?.(err);
          // Put the batch back in front of what came meanwhile.
          for (const [key, p] of this.pending) {
            const old = batch.get(key);
            if (old === undefined) batch.set(key, p);
            else {
              old.records.push(...p.records);
              old.settlements.push(...p.settlements);
              old.releasedClaims.push(...p.releasedClaims);
              old.release ||= p.release;
            }
          }
          this.pending = batch;
        },
      )
      .finally(() => {
        this.inFlight = undefined;
      });
    await this.inFlight;
    // What came meanwhile, or a failed batch put back: its own timer.
    this.arm();
  }

  /** Sends until nothing is pending or `deadline` (epoch ms) passes. */
  async drain(deadline: number): Promise<boolean> {
    while (this.pending.size > 0 && Date.now() < deadline) {
      await this.flush();
      if (this.pending.size > 0) await new Promise((r) => setTimeout(r, Math.min(200, 50 * this.failures)));
    }
    return this.pending.size === 0;
  }

  stop(): void {
    this.started = false;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
