import type { WindowKind } from "../core/compiled-policy.js";
import { counterKey, type Totals } from "../core/evaluate.js";
import type { Queryable } from "./database.js";

/** One stored counter, as numbers the engine can add exactly. */
export interface Counter {
  readonly scopeKey: string;
  readonly window: WindowKind;
  readonly startMs: number;
  committedValue: bigint;
  heldValue: bigint;
  committedActions: bigint;
  heldActions: bigint;
}

/** Committed plus held: what counts against a limit. */
export function totalsOf(c: Counter | undefined): Totals | undefined {
  return c === undefined ? undefined : { value: c.committedValue + c.heldValue, actions: c.committedActions + c.heldActions };
}

interface CounterRow {
  scope_key: string;
  window_kind: WindowKind;
  window_start: Date;
  committed_value: string;
  held_value: string;
  committed_actions: string;
  held_actions: string;
}

/** A counter address: scope, window kind and window start. */
export interface CounterAddress {
  readonly scopeKey: string;
  readonly window: WindowKind;
  readonly startMs: number;
}

/**
 * Reads the counters at `addresses` (absent ones read as zero and are
 * created on write), keyed by {@link counterKey}. Call it with the owning
 * scopes locked.
 */
export async function loadCounters(tx: Queryable, addresses: readonly CounterAddress[]): Promise<Map<string, Counter>> {
  const out = new Map<string, Counter>();
  for (const a of addresses) {
    out.set(counterKey(a.scopeKey, a.window, a.startMs), {
      ...a,
      committedValue: 0n,
      heldValue: 0n,
      committedActions: 0n,
      heldActions: 0n,
    });
  }
  if (out.size === 0) return out;
  const all = [...out.values()];
  const { rows } = await tx.query<CounterRow>(
    `SELECT c.scope_key, c.window_kind, c.window_start, c.committed_value, c.held_value,
            c.committed_actions, c.held_actions
       FROM usage_counters c
       JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(scope_key, window_kind, window_start)
         ON c.scope_key = k.scope_key AND c.window_kind = k.window_kind AND c.window_start = k.window_start`,
    [all.map((c) => c.scopeKey), all.map((c) => c.window), all.map((c) => new Date(c.startMs).toISOString())],
  );
  for (const r of rows) {
    const c = out.get(counterKey(r.scope_key, r.window_kind, r.window_start.getTime()))!;
    c.committedValue = BigInt(r.committed_value);
    c.heldValue = BigInt(r.held_value);
    c.committedActions = BigInt(r.committed_actions);
    c.heldActions = BigInt(r.held_actions);
  }
  return out;
}

/**
 * Writes counters back as absolute values, in one statement. Safe because
 * every writer holds the owners' row locks (see lockScopes), so nobody else
 * changed them since {@link loadCounters}.
 */
export async function saveCounters(tx: Queryable, counters: Iterable<Counter>): Promise<void> {
  const all = [...counters];
  if (all.length === 0) return;
  await tx.query(
    `INSERT INTO usage_counters (scope_key, window_kind, window_start, committed_value, held_value, committed_actions, held_actions)
     SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
     ON CONFLICT (scope_key, window_kind, window_start) DO UPDATE SET
       committed_value = EXCLUDED.committed_value, held_value = EXCLUDED.held_value,
       committed_actions = EXCLUDED.committed_actions, held_actions = EXCLUDED.held_actions`,
    [
      all.map((c) => c.scopeKey),
      all.map((c) => c.window),
      all.map((c) => new Date(c.startMs).toISOString()),
      all.map((c) => c.committedValue.toString()),
      all.map((c) => c.heldValue.toString()),
      all.map((c) => c.committedActions.toString()),
      all.map((c) => c.heldActions.toString()),
    ],
  );
}
