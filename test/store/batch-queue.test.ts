import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { BatchQueue, type Settled } from "../../src/store/batch-queue.js";

/** A queue whose batches are recorded, and whose run does what `behave` says. */
function recording(behave: (batch: readonly number[], attempt: number) => Promise<Settled<number>[]> | Settled<number>[], maxBatch = 100) {
  const batches: number[][] = [];
  let attempt = 0;
  const q = new BatchQueue<number, number>({
    maxBatch,
    run: async (batch) => {
      batches.push([...batch]);
      await new Promise((r) => setTimeout(r, 5));
      return behave(batch, ++attempt);
    },
  });
  return { q, batches };
}

const doubled = (batch: readonly number[]): Settled<number>[] => batch.map((n, i) => ({ i, ok: true, value: n * 2 }));

test("items submitted in one turn share a batch; those arriving meanwhile share the next; maxBatch splits", async () => {
  const batches: number[][] = [];
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const q = new BatchQueue<number, number>({
    maxBatch: 3,
    run: async (batch) => {
      batches.push([...batch]);
      // The first batch stays in flight until the test has queued more.
      if (batches.length === 1) await gate;
      return doubled(batch);
    },
  });
  const first = [1, 2, 3, 4].map((n) => q.submit(n));
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(batches, [[1, 2, 3]], "the first batch is in flight");
  const later = [5, 6].map((n) => q.submit(n));
  open();
  assert.deepEqual(await Promise.all([...first, ...later]), [2, 4, 6, 8, 10, 12]);
  assert.deepEqual(batches, [[1, 2, 3], [4, 5, 6]]);
});

test("an item that fails alone is rejected alone", async () => {
  const { q } = recording((batch) =>
    batch.map((n, i) => (n === 2 ? { i, ok: false, error: new ConnectError("two is wrong", Code.InvalidArgument) } : { i, ok: true, value: n })),
  );
  const [a, b, c] = await Promise.allSettled([1, 2, 3].map((n) => q.submit(n)));
  assert.deepEqual([a!.status, b!.status, c!.status], ["fulfilled", "rejected", "fulfilled"]);
  assert.equal(ConnectError.from((b as PromiseRejectedResult).reason).code, Code.InvalidArgument);
});

test("a deadlock or serialization failure runs the batch again, up to three times; other failures reject it, UNAVAILABLE when the store is away", async () => {
  const deadlock = Object.assign(new Error("deadlock detected"), { code: "40P01" });
  const retried = recording((batch, attempt) => {
    if (attempt < 3) throw deadlock;
    return doubled(batch);
  });
  assert.deepEqual(await Promise.all([1, 2].map((n) => retried.q.submit(n))), [2, 4]);
  assert.equal(retried.batches.length, 3);

  const always = recording(() => {
    throw deadlock;
  });
  await assert.rejects(always.q.submit(1), /deadlock/);
  assert.equal(always.batches.length, 3, "gives up after three attempts");

  const broken = recording(() => {
    throw new Error("connection refused");
  });
  const results = await Promise.allSettled([1, 2].map((n) => broken.q.submit(n)));
  for (const r of results) {
    assert.equal(r.status, "rejected");
    assert.equal(ConnectError.from((r as PromiseRejectedResult).reason).code, Code.Unavailable);
  }
  assert.equal(broken.batches.length, 1, "not retried");

  // The store refused the data (a NUL in text, a number out of range): a
  // retry would fail alike, so it is not UNAVAILABLE.
  const codeOf = async (err: Error) => {
    const q = recording(() => {
      throw err;
    }).q;
    return Code[ConnectError.from(await q.submit(1).catch((e: unknown) => e)).code];
  };
  assert.equal(await codeOf(Object.assign(new Error("invalid byte sequence"), { code: "22021" })), "Internal");
  assert.equal(await codeOf(Object.assign(new Error("bigint out of range"), { code: "22003" })), "Internal");
  assert.equal(await codeOf(Object.assign(new Error("connection failure"), { code: "08006" })), "Unavailable");
  assert.equal(await codeOf(Object.assign(new Error("the database system is shutting down"), { code: "57P03" })), "Unavailable");
  assert.equal(await codeOf(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })), "Unavailable");
});

test("shards run side by side; submitAny spreads items over them", async () => {
  let inFlight = 0;
  let most = 0;
  const q = new BatchQueue<number, number>({
    maxBatch: 100,
    shards: 2,
    run: async (batch) => {
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setTimeout(r, 10));
      inFlight--;
      return doubled(batch);
    },
  });
  assert.deepEqual(await Promise.all([1, 2, 3, 4].map((n) => q.submitAny(n))), [2, 4, 6, 8]);
  assert.equal(most, 2);
});
