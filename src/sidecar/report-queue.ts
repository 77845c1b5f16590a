import { create, type DescMessage } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type ClaimRelease,
  ClaimReleaseSchema,
  type LeaseRecord,
  LeaseRecordSchema,
  type LeaseSettlement,
  LeaseSettlementSchema,
  LeaseReportSchema,
  type ReportLeasesRequest,
  ReportLeasesRequestSchema,
} from "../gen/warden/v1/sync_service_pb.js";
import { encodedSizeBound } from "./encoded-size-bound.js";

/** What a session has to tell the store about one of its leases. */
interface Pending {
  readonly sessionId: string;
  readonly leaseId: string;
  records: LeaseRecord[];
  settlements: LeaseSettlement[];
  release: boolean;
  releasedClaims: ClaimRelease[];
  /** When its first entry was queued (epoch ms): the age of what waits longest. */
  since: number;
}

/** Options of {@link ReportQueue}. */
export interface ReportQueueOptions {
  readonly holder: string;
  /** Sends one report; rejects when the control plane cannot be reached. */
  readonly send: (req: ReportLeasesRequest) => Promise<{ rejected: string[] }>;
  readonly intervalMs: number;
  readonly onRejected?: (rejected: string[]) => void;
  readonly onError?: (err: unknown) => void;
  /** Called when the store first refuses a session's reports outright (they stay queued, apart). */
  readonly onRefused?: (sessionId: string, err: ConnectError) => void;
  /** Called after every successful send. */
  readonly onSent?: (records: number) => void;
  /** Called after every send, with how it went ("refused": the store refused a session's report outright). */
  readonly onSend?: (result: "sent" | "failed" | "refused") => void;
  /** Epoch ms; the wall clock by default. */
  readonly now?: () => number;
}

/** Longest wait between tries while sends fail. */
const MAX_RETRY_MS = 1000;

/**
 * Most entries (records, settlements, claims, releases) in one
 * ReportLeases call, and most bytes they may encode to. A backlog built up
 * while the control plane was away (an agent retrying every millisecond
 * leaves thousands of records), or records carrying an action's metadata
 * (up to 32 KB each), would otherwise go in one message past the
 * transport's limit (4 MiB), be refused, put back and refused again for
 * good. The bytes leave a margin under that limit for the reports' framing.
 */
export const MAX_SEND_ENTRIES = 2000;
export const MAX_SEND_BYTES = 3 * 1024 * 1024;

/** The three kinds of item a session's entry lists, in the order the store applies them. */
const ITEM_FIELDS = [
  ["records", LeaseRecordSchema],
  ["settlements", LeaseSettlementSchema],
  ["releasedClaims", ClaimReleaseSchema],
] as const;

/**
 * What an item adds to a request, at most: its bytes, with its tag and
 * length. Not remembered: the bound costs less than a WeakMap's upkeep,
 * and a send looks at each item about once.
 */
function sizeOf(schema: DescMessage, item: object): number {
  return encodedSizeBound(schema, item) + 10;
}

/** When the oldest record or settlement of an entry was made (epoch ms), if any has a time. */
function oldestTime(p: Pending): number | undefined {
  let t: number | undefined;
  for (const r of p.records) if (r.createTime !== undefined) t = Math.min(t ?? Infinity, timestampMs(r.createTime));
  for (const st of p.settlements) if (st.time !== undefined) t = Math.min(t ?? Infinity, timestampMs(st.time));
  return t;
}

/** The bytes a session's entry adds to a request (its ids and framing counted generously). */
function bytesOf(p: Pending): number {
  let n = 512;
  for (const [field, schema] of ITEM_FIELDS) for (const item of p[field]) n += sizeOf(schema, item);
  return n;
}

/** Errors that say the store will refuse the same report again, whatever it is sent with. */
const REFUSALS = new Set([Code.InvalidArgument, Code.NotFound, Code.PermissionDenied, Code.FailedPrecondition, Code.OutOfRange]);

function isRefusal(err: ConnectError): boolean {
  return REFUSALS.has(err.code);
}

/** Records, settlements, released claims and the release of one entry. */
function entriesOf(p: Pending): number {
  return p.records.length + p.settlements.length + p.releasedClaims.length + (p.release ? 1 : 0);
}

function bySession(groups: Map<string, Map<string, Pending>>, key: string, p: Pending): void {
  let g = groups.get(p.sessionId);
  if (g === undefined) groups.set(p.sessionId, (g = new Map()));
  g.set(key, p);
}

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
  /** The batch being sent: not yet acknowledged, so part of the backlog. */
  private sending: Map<string, Pending> | undefined;
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private failures = 0;
  /** Entries the store has acknowledged, ever: how a flush sees progress. */
  private acked = 0;
  /** Sessions whose reports the store refused outright: sent alone, at most once a MAX_RETRY_MS. */
  private readonly refused = new Set<string>();
  private refusedRetryAt = 0;

  private readonly now: () => number;

  constructor(private readonly o: ReportQueueOptions) {
    this.now = o.now ?? Date.now;
  }

  start(): void {
    this.started = true;
    this.arm();
  }

  /** Sets the send timer, if the queue runs, holds something, and none is set. */
  private arm(): void {
    if (!this.started || this.timer !== undefined || this.pending.size === 0) return;
    let delay = this.failures === 0 ? this.o.intervalMs : Math.min(MAX_RETRY_MS, this.o.intervalMs * 2 ** this.failures);
    // Only refused sessions' reports left: nothing to send before their retry.
    if (this.refused.size > 0 && [...this.pending.values()].every((p) => this.refused.has(p.sessionId))) delay = Math.max(delay, this.refusedRetryAt - this.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, delay);
    this.timer.unref();
  }

  /** Records and settlements not yet acknowledged by the store. */
  get size(): number {
    let n = 0;
    for (const p of this.pending.values()) n += entriesOf(p);
    return n;
  }

  /**
   * What the store has not acknowledged yet, queued or being sent: how many
   * entries, and how long the oldest has waited (0 when none). This is what
   * a crash of this process would lose (design.md §4: the lease it came
   * from counts as spent until it is reconciled), and its age is the
   * report delay as it stands.
   */
  backlog(): { entries: number; oldestAgeMs: number } {
    let entries = 0;
    let oldest = Infinity;
    for (const batch of [this.pending, this.sending]) {
      for (const p of batch?.values() ?? []) {
        entries += entriesOf(p);
        if (p.since < oldest) oldest = p.since;
      }
    }
    return { entries, oldestAgeMs: entries === 0 ? 0 : Math.max(0, this.now() - oldest) };
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
      p = { sessionId, leaseId, records: [], settlements: [], release: false, releasedClaims: [], since: this.now() };
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
    // What is pending now goes, a send of at most MAX_SEND_ENTRIES at a
    // time, for as long as sends get through.
    let left = this.size;
    while (this.pending.size > 0 && left > 0) {
      const acked = this.acked;
      const batch = this.takeChunk();
      this.sending = batch;
      this.inFlight = this.sendBatch(batch).finally(() => {
        this.sending = undefined;
        this.inFlight = undefined;
      });
      await this.inFlight;
      if (this.acked === acked) break;
      left -= this.acked - acked;
    }
    // What came meanwhile, or a failed batch put back: its own timer.
    this.arm();
  }

  /**
   * Takes what the next send carries: whole sessions, in the order they
   * were queued, up to {@link MAX_SEND_ENTRIES} and {@link MAX_SEND_BYTES}
   * (the rest waits for the next send, due at once). A session's entries go
   * together, since its settlements must follow the records of the holds
   * they settle. One session above a limit alone goes in parts, in the
   * order the store applies them: every record, then settlements, then
   * released claims, and its releases with the last part.
   */
  private takeChunk(): Map<string, Pending> {
    const sessions = new Map<string, Map<string, Pending>>();
    for (const [key, p] of this.pending) bySession(sessions, key, p);
    const chunk = new Map<string, Pending>();
    const retryRefused = this.now() >= this.refusedRetryAt;
    let n = 0;
    let bytes = 0;
    for (const [sessionId, entries] of sessions) {
      // A session the store refused is never the head of a send, or it
      // would hold every session queued behind it: it goes along (sent
      // apart, see sendBatch) when its retry is due, and waits otherwise.
      let size = 0;
      let sessionBytes = 0;
      for (const p of entries.values()) {
        size += entriesOf(p);
        sessionBytes += bytesOf(p);
      }
      if (this.refused.has(sessionId)) {
        if (!retryRefused) continue;
        // Sent apart, in one message of its own: in parts if it is big.
        if (size > MAX_SEND_ENTRIES || sessionBytes > MAX_SEND_BYTES) this.takePart(entries, chunk);
        else {
          for (const [key, p] of entries) {
            chunk.set(key, p);
            this.pending.delete(key);
          }
        }
        continue;
      }
      if (n > 0 && (n + size > MAX_SEND_ENTRIES || bytes + sessionBytes > MAX_SEND_BYTES)) break;
      if (n === 0 && (size > MAX_SEND_ENTRIES || sessionBytes > MAX_SEND_BYTES)) {
        this.takePart(entries, chunk);
        break;
      }
      for (const [key, p] of entries) {
        chunk.set(key, p);
        this.pending.delete(key);
      }
      n += size;
      bytes += sessionBytes;
    }
    return chunk;
  }

  /**
   * Moves into `chunk` what of one session fits in a send, in the order
   * the store applies it: records (of every lease), then settlements, then
   * released claims; at least one item. What is left stays queued; an
   * entry left with nothing but its release goes, with it, once all the
   * rest has.
   */
  private takePart(entries: Map<string, Pending>, chunk: Map<string, Pending>): void {
    let room = MAX_SEND_ENTRIES;
    let bytes = MAX_SEND_BYTES;
    const partOf = (key: string, p: Pending) => {
      let part = chunk.get(key);
      if (part === undefined) chunk.set(key, (part = { ...p, records: [], settlements: [], releasedClaims: [], release: false }));
      return part;
    };
    for (const [field, schema] of ITEM_FIELDS) {
      for (const [key, p] of entries) {
        const items: object[] = p[field];
        let i = 0;
        for (; i < items.length && room > 0; i++) {
          const size = sizeOf(schema, items[i]!);
          if (size > bytes && room < MAX_SEND_ENTRIES) break;
          bytes -= size;
          room--;
        }
        if (i > 0) {
          (partOf(key, p)[field] as object[]).push(...items.splice(0, i));
          // What stays waits since its oldest item was queued, as far as
          // the items tell (a record's or settlement's time).
          p.since = Math.max(p.since, oldestTime(p) ?? p.since);
        }
        if (items.length > 0) return;
      }
    }
    for (const [key, p] of entries) {
      if (p.release) partOf(key, p).release = true;
      this.pending.delete(key);
    }
  }

  /**
   * Sends a batch: the sessions the store refused before each alone (and
   * only once their retry is due), the rest together. A report the store
   * refuses outright (a session it will not take from this sidecar, a
   * malformed record) would otherwise be put back and sent again with
   * everything queued after it, and refused again, for good: nothing more
   * would reach the store. So a refused batch of several sessions is sent
   * again session by session; those refused alone stay queued, apart.
   */
  private async sendBatch(batch: Map<string, Pending>): Promise<void> {
    const now = this.now();
    const together = new Map<string, Pending>();
    const apart = new Map<string, Map<string, Pending>>();
    for (const [key, p] of batch) {
      if (!this.refused.has(p.sessionId)) together.set(key, p);
      else if (now >= this.refusedRetryAt) bySession(apart, key, p);
      else this.putBack(new Map([[key, p]]));
    }
    if (apart.size > 0) this.refusedRetryAt = now + MAX_RETRY_MS;
    if (together.size > 0) {
      const err = await this.send(together);
      if (err === undefined) this.failures = 0;
      else if (!isRefusal(err)) {
        this.o.onSend?.("failed");
        this.failures++;
        this.putBack(together);
      } else {
        this.o.onSend?.("refused");
        for (const [key, p] of together) bySession(apart, key, p);
      }
    }
    for (const [sessionId, entries] of apart) {
      const err = await this.send(entries);
      if (err === undefined) {
        this.refused.delete(sessionId);
        continue;
      }
      this.o.onSend?.(isRefusal(err) ? "refused" : "failed");
      if (isRefusal(err) && !this.refused.has(sessionId)) {
        this.refused.add(sessionId);
        this.o.onRefused?.(sessionId, err);
      }
      this.putBack(entries);
    }
  }

  /** One ReportLeases call; returns why it failed, or undefined. */
  private async send(entries: Map<string, Pending>): Promise<ConnectError | undefined> {
    const reports = [...entries.values()]
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
    try {
      const res = await this.o.send(create(ReportLeasesRequestSchema, { holder: this.o.holder, reports }));
      // Acknowledged: no longer part of the backlog.
      for (const [key, p] of entries) {
        this.sending?.delete(key);
        this.acked += entriesOf(p);
      }
      if (res.rejected.length > 0) this.o.onRejected?.(res.rejected);
      this.o.onSend?.("sent");
      this.o.onSent?.(reports.reduce((n, r) => n + r.records.length, 0));
      return undefined;
    } catch (err) {
      this.o.onError?.(err);
      return ConnectError.from(err);
    }
  }

  /** Puts entries back in front of what came meanwhile, in order. */
  private putBack(entries: Map<string, Pending>): void {
    // Queued again: counted in the backlog once, from the queue.
    for (const key of entries.keys()) this.sending?.delete(key);
    const merged = new Map(entries);
    for (const [key, p] of this.pending) {
      const old = merged.get(key);
      if (old === undefined) merged.set(key, p);
      else {
        old.since = Math.min(old.since, p.since);
        old.records.push(...p.records);
        old.settlements.push(...p.settlements);
        old.releasedClaims.push(...p.releasedClaims);
        old.release ||= p.release;
      }
    }
    this.pending = merged;
  }

  /**
   * Sends until nothing is pending or being sent, or `deadline` (epoch ms)
   * passes. A send in flight counts: should it fail, what it carried is
   * queued again and must still go.
   */
  async drain(deadline: number): Promise<boolean> {
    const busy = () => this.pending.size > 0 || this.inFlight !== undefined;
    while (busy() && Date.now() < deadline) {
      await this.flush();
      if (busy()) await new Promise((r) => setTimeout(r, Math.min(200, 50 * Math.max(1, this.failures))));
    }
    return !busy();
  }

  stop(): void {
    this.started = false;
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
