import type { Queryable } from "./database.js";

/** A transaction's statements, as {@link trackStatements} keeps them. */
export interface TrackedStatements {
  /**
   * Runs the transaction's body on the tracked connection. Should it throw
   * after a statement failed, it throws that statement's error instead
   * (the first, in the order sent).
   */
  run<T>(body: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Resolves once every statement has succeeded; rejects with the first (in the order sent) that failed. */
  settled(): Promise<void>;
}

/**
 * Keeps every statement a transaction's body sends, so the transaction can
 * wait for those the body did not: a body may send its last writes without
 * awaiting them, and the COMMIT then goes out right behind them (one round
 * trip for both on a pipelined connection; see pg-database.ts). A statement
 * of a connection runs after the ones sent before it, so this changes
 * nothing of what the transaction does, only when its caller hears of it.
 *
 * When a statement fails, every later one of its transaction fails too
 * ("current transaction is aborted"); the first one says why, and is what
 * the transaction fails with. A failed statement thus fails its
 * transaction even if the body caught it: no body recovers from one (there
 * are no savepoints in the store), and one that did would need its own
 * tracking.
 */
export function trackStatements(inner: Queryable): TrackedStatements {
  const sent: Promise<unknown>[] = [];
  const firstFailure = async (): Promise<{ error: unknown } | undefined> => {
    for (const r of await Promise.allSettled(sent)) if (r.status === "rejected") return { error: r.reason };
    return undefined;
  };
  const tx: Queryable = {
    query<R>(sql: string, params?: readonly unknown[]) {
      const p = inner.query<R>(sql, params);
      // Handled here: a statement nobody awaits must not be an unhandled rejection.
      p.catch(() => {});
      sent.push(p);
      return p;
    },
  };
  return {
    async run(body) {
      try {
        return await body(tx);
      } catch (err) {
        throw (await firstFailure())?.error ?? err;
      }
    },
    async settled() {
      const failure = await firstFailure();
      if (failure !== undefined) throw failure.error;
    },
  };
}
