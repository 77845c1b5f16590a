import { Code, ConnectError } from "@connectrpc/connect";

/** The outcome of one item of a batch: its answer, or why it alone failed. */
export type Settled<R> = { readonly i: number; readonly ok: true; readonly value: R } | { readonly i: number; readonly ok: false; readonly error: ConnectError };

/** Options of {@link BatchQueue}. */
export interface BatchQueueOptions<Q, R> {
  /**
   * Runs one batch (for writes: in one transaction) and settles each item
   * by its index. Throwing fails the whole batch (nothing of it was stored).
   */
  readonly run: (batch: readonly Q[]) => Promise<readonly Settled<R>[]>;
  /** Most items per batch. */
  readonly maxBatch: number;
  /** Batches in flight at once, one per queue. Default 1. */
  readonly shards?: number;
}

/** PostgreSQL errors after which a whole batch may simply run again (serialization failure, deadlock). */
const RETRYABLE = new Set(["40001", "40P01"]);

/**
 * Whether a failed batch's error says the store could not be reached (a
 * retry may succeed: UNAVAILABLE) rather than that it refused the batch
 * (a bug or data it cannot take: INTERNAL, as a retry would fail alike).
 * SQLSTATE classes 08 (connection), 53 (insufficient resources) and 57P
 * (shutting down), and socket errors, are the store being away; so is an
 * error without a code (a pool that timed out, a connection that ended).
 */
function unreachable(code: string | undefined): boolean {
  if (code === undefined || /^(08|53|57P)/.test(code)) return true;
  return !/^[0-9A-Z]{5}$/.test(code);
}

interface Pending<Q, R> {
  readonly item: Q;
  resolve(r: R): void;
  reject(e: unknown): void;
}

/**
 * Batches of whatever arrives together. Items that arrive while a batch is
 * in flight queue up, and the next batch takes them all, so under load the
 * cost of a round trip or a transaction (and the row locks it holds
 * meanwhile) is shared by many items, and when idle an item runs at once,
 * alone. For writes this is group commit: nobody is answered before their
 * batch's `run` has returned, i.e. committed.
 *
 * Items in one shard never run concurrently: writers shard by what their
 * transactions lock (an agent, say), so those meet in one queue instead of
 * waiting on each other's row locks; readers spread over the shards.
 */
export class BatchQueue<Q, R> {
  private readonly queues: Pending<Q, R>[][];
  private readonly busy: boolean[];
  private nextShard = 0;

  constructor(private readonly o: BatchQueueOptions<Q, R>) {
    const shards = Math.max(1, o.shards ?? 1);
    this.queues = Array.from({ length: shards }, () => []);
    this.busy = Array.from({ length: shards }, () => false);
  }

  /** The number of queues; {@link submit} takes a shard below it. */
  get shards(): number {
    return this.queues.length;
  }

  /** Queues `item` on the next shard in turn: for items that lock nothing (reads). */
  submitAny(item: Q): Promise<R> {
    this.nextShard = (this.nextShard + 1) % this.queues.length;
    return this.submit(item, this.nextShard);
  }

  /** Queues `item` on `shard`; resolves once its batch has committed. */
  submit(item: Q, shard = 0): Promise<R> {
    return new Promise((resolve, reject) => {
      this.queues[shard]!.push({ item, resolve, reject });
      if (!this.busy[shard]) {
        this.busy[shard] = true;
        // Start after this I/O turn, not now: the calls read from the
        // sockets in the same turn then join the batch instead of each
        // opening a transaction of its own.
        setImmediate(() => void this.drain(shard));
      }
    });
  }

  private async drain(shard: number): Promise<void> {
    const queue = this.queues[shard]!;
    try {
      while (queue.length > 0) await this.runBatch(queue.splice(0, this.o.maxBatch));
    } finally {
      this.busy[shard] = false;
    }
  }

  private async runBatch(batch: Pending<Q, R>[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        const settled = await this.o.run(batch.map((p) => p.item));
        for (const s of settled) (s.ok ? batch[s.i]!.resolve(s.value) : batch[s.i]!.reject(s.error));
        return;
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (attempt < 3 && code !== undefined && RETRYABLE.has(code)) continue;
        const e = ConnectError.from(err, unreachable(code) ? Code.Unavailable : Code.Internal);
        for (const p of batch) p.reject(e);
        return;
      }
    }
  }
}
