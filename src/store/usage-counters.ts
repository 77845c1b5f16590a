import { type CompiledPolicy, WINDOW_KINDS, type WindowKind } from "../core/compiled-policy.js";
import { counterKey, LIFETIME_START_MS, spanOf, type Totals } from "../core/evaluate.js";
import { INT64_MAX } from "../core/money.js";
import type { CalendarSpanCache } from "../core/windows.js";
import type { Queryable } from "./database.js";

/**
 * Usage lives in `scope_usage`: one row per scope ("s:<session>" or
 * "a:<agent>") holding the current window of each kind (day, week, month
 * start and the committed and held value and actions of each) and lifetime.
 * A decision thus reads and writes one row per scope, not one per window.
 *
 * A window of a kind rolls over when a newer one is used: its counters start
 * from zero at the new start. The old window limits nothing any more, so it
 * is dropped; a hold charged to it (its action's `charges` name the start)
 * that is later captured or released changes only the windows it was
 * charged to that are still stored: lifetime always, the rest when they
 * have not rolled over. So for every stored window,
 * committed + held is exactly what the ledger charged to it.
 */

/** One window's counters of one scope, as numbers the engine can add exactly. */
export interface Counter {
  readonly scopeKey: string;
  readonly window: WindowKind;
  startMs: number;
  committedValue: bigint;
  heldValue: bigint;
  committedActions: bigint;
  heldActions: bigint;
}

/** Committed plus held: what counts against a limit. */
export function totalsOf(c: Counter | undefined): Totals | undefined {
  return c === undefined ? undefined : { value: c.committedValue + c.heldValue, actions: c.committedActions + c.heldActions };
}

/** A counter address: scope, window kind and window start. */
export interface CounterAddress {
  readonly scopeKey: string;
  readonly window: WindowKind;
  readonly startMs: number;
  /**
   * The calendar the start was taken under (CompiledPolicy.calendar), for
   * a window in effect now ("current" mode); unset for lifetime and for
   * windows holds were charged to.
   */
  readonly calendar?: string;
}

/** The address of the window of `window` in effect at `atMs` under `policy`. */
export function currentAddress(scopeKey: string, policy: CompiledPolicy, window: WindowKind, atMs: number, spans: CalendarSpanCache): CounterAddress {
  const span = spanOf(policy, window, atMs, spans);
  return span === undefined ? { scopeKey, window, startMs: LIFETIME_START_MS } : { scopeKey, window, startMs: span.startMs, calendar: policy.calendar };
}

/** The stored windows of one scope; `startMs` NaN: never used. */
export type ScopeWindows = Record<WindowKind, Counter>;

/** A `scope_usage` row (int8 as text, as both drivers return it). */
type UsageRow = Record<string, string | Date | null>;

const START_COLUMNS = ["day", "week", "month"] as const;
const VALUE_FIELDS = ["committed_value", "held_value", "committed_actions", "held_actions"] as const;
const VALUE_PROPS = ["committedValue", "heldValue", "committedActions", "heldActions"] as const;

/** The columns of `scope_usage`, in the order its reads and writes list them. */
const USAGE_COLUMNS = [
  "scope_key",
  "calendar",
  ...START_COLUMNS.map((w) => `${w}_start`),
  ...WINDOW_KINDS.flatMap((w) => VALUE_FIELDS.map((f) => `${w}_${f}`)),
];

/** Each window's column names, built once: windowsOf runs for every scope a batch reads. */
const WINDOW_COLUMNS = Object.fromEntries(
  WINDOW_KINDS.map((w) => [w, { start: `${w}_start`, values: VALUE_FIELDS.map((f) => `${w}_${f}`) }]),
) as Record<WindowKind, { start: string; values: string[] }>;

/** The windows of `scopeKey` from its row; all zero (never used) when `row` is undefined or null. */
export function windowsOf(scopeKey: string, row: UsageRow | null | undefined): ScopeWindows {
  const out = {} as ScopeWindows;
  const found = row != null && row.scope_key != null;
  for (const w of WINDOW_KINDS) {
    const c: Counter = { scopeKey, window: w, startMs: NaN, committedValue: 0n, heldValue: 0n, committedActions: 0n, heldActions: 0n };
    if (w === "lifetime") c.startMs = LIFETIME_START_MS;
    if (found) {
      const cols = WINDOW_COLUMNS[w];
      if (w !== "lifetime") {
        const start = row[cols.start] as Date | null;
        c.startMs = start === null ? NaN : start.getTime();
      }
      for (let i = 0; i < 4; i++) c[VALUE_PROPS[i]!] = BigInt(row[cols.values[i]!] as string);
    }
    out[w] = c;
  }
  return out;
}

/**
 * How an address whose window is not the stored one is read:
 * - "current": an address is the window in effect at some time, under
 *   its calendar. A newer window than the stored one starts from zero (and
 *   is stored on save); under another calendar than the stored windows'
 *   the stored counts carry over into it, unless it starts after the stored
 *   one surely ended. An older one (a replica whose clock lags, another
 *   calendar's window that began earlier) reads and charges the stored,
 *   newer window, which is never less than the truth: no overspend. A
 *   stored window never moves back.
 * - "exact": an address is a window a hold was charged to. Only the stored
 *   window with that very start is live; any other reads as a detached zero
 *   counter whose changes are never saved (that window no longer limits).
 */
export type AddressMode = "current" | "exact";

const HOUR_MS = 3_600_000;
/**
 * The longest a window of each kind lasts in any time zone (a day across a
 * DST change, by up to 2 h in Antarctica/Troll; a week or a 31-day month
 * holding one): a window of another calendar starting before the stored
 * one's start plus this may overlap it.
 */
const LONGEST_WINDOW_MS: Record<WindowKind, number> = {
  day: 26 * HOUR_MS,
  week: (7 * 24 + 2) * HOUR_MS,
  month: (31 * 24 + 2) * HOUR_MS,
  lifetime: Infinity,
};

/**
 * How {@link loadCounters} ("current") reads a stored window of a kind,
 * which started at `storedStartMs` (NaN: never used) under
 * `storedCalendar` (null: unknown, taken as the address's), at address `a`
 * of that kind: "unused" (nothing stored: a's window starts from zero),
 * "stored" (a is no newer: it reads the stored window, counts and all),
 * "carried" (a newer window of another calendar that may overlap the
 * stored one: the counts carry into it) or "reset" (a newer window: it
 * starts from zero).
 */
export function storedWindowAt(storedStartMs: number, storedCalendar: string | null, a: CounterAddress): "unused" | "stored" | "carried" | "reset" {
  if (Number.isNaN(storedStartMs)) return "unused";
  if (a.startMs <= storedStartMs) return "stored";
  const was = storedCalendar ?? a.calendar;
  return was !== a.calendar && a.startMs < storedStartMs + LONGEST_WINDOW_MS[a.window] ? "carried" : "reset";
}

/**
 * The earliest time whose spend the counter at "current" address `a` of a
 * scope holds, once read by {@link loadCounters}, from the scope's stored
 * windows and calendar: the stored window's start when its counts carry
 * into (or are read at) `a`, else `a`'s own start. (A window that was
 * itself carried into from an earlier one holds spend from before its own
 * start, which its row no longer tells.)
 */
export function countsSince(stored: ScopeWindows, storedCalendar: string | null, a: CounterAddress): number {
  const c = stored[a.window];
  const how = storedWindowAt(c.startMs, storedCalendar, a);
  return how === "stored" || how === "carried" ? Math.min(a.startMs, c.startMs) : a.startMs;
}

/** Reads the `scope_usage` rows of scopes `$1`. */
export const READ_USAGE_SQL = `SELECT ${USAGE_COLUMNS.join(", ")} FROM scope_usage WHERE scope_key = ANY($1::text[])`;

/** Counters of some scopes, keyed by {@link counterKey} of the addresses asked for. */
export class UsageSet {
  /** Every scope read, with all of its windows: what {@link saveCounters} writes. */
  readonly scopes = new Map<string, ScopeWindows>();
  /** The calendar each scope's stored windows are in (migration 022); null when unknown. */
  readonly calendars = new Map<string, string | null>();
  /** Scopes that have a row already: {@link saveCounters} updates these and inserts the rest. */
  readonly stored = new Set<string>();
  private readonly byKey = new Map<string, Counter>();

  /** The counter of an address asked for. */
  get(key: string): Counter | undefined {
    return this.byKey.get(key);
  }

  /** @internal */
  set(key: string, c: Counter): void {
    this.byKey.set(key, c);
  }
}

/** The stored `scope_usage` rows of some scopes, by scope key: what {@link countersAt} reads. */
export type UsageRows = ReadonlyMap<string, UsageRow>;

/**
 * Reads the `scope_usage` rows of `scopeKeys`. Call it with the owning
 * scopes locked, in a statement that starts after the locks are taken (so
 * it sees every change made under them): on one connection, a statement
 * sent after the lock statement, awaited or not (statements of a
 * connection run one after another, each under READ COMMITTED seeing what
 * was committed when it started).
 */
export async function readUsage(tx: Queryable, scopeKeys: Iterable<string>): Promise<UsageRows> {
  const keys = [...new Set(scopeKeys)];
  const rows = new Map<string, UsageRow>();
  if (keys.length === 0) return rows;
  for (const r of (await tx.query<UsageRow>(READ_USAGE_SQL, [keys])).rows) rows.set(r.scope_key as string, r);
  return rows;
}

/**
 * Reads the counters at `addresses` (see {@link AddressMode}). Call it with
 * the owning scopes locked, as {@link readUsage}.
 */
export async function loadCounters(
  tx: Queryable,
  addresses: readonly CounterAddress[],
  mode: AddressMode = "current",
): Promise<UsageSet> {
  return countersAt(await readUsage(tx, addresses.map((a) => a.scopeKey)), addresses, mode);
}

/**
 * The counters at `addresses` from their scopes' stored rows (`rows` may
 * hold more scopes than the addresses name: only theirs are taken, and
 * only theirs are written back by {@link saveCounters}).
 */
export function countersAt(rows: UsageRows, addresses: readonly CounterAddress[], mode: AddressMode = "current"): UsageSet {
  const out = new UsageSet();
  const keys = new Set(addresses.map((a) => a.scopeKey));
  for (const k of keys) {
    const row = rows.get(k);
    if (row !== undefined) out.stored.add(k);
    out.scopes.set(k, windowsOf(k, row));
    out.calendars.set(k, (row?.calendar as string | null | undefined) ?? null);
  }
  if (mode === "current") {
    for (const a of addresses) {
      if (a.calendar === undefined) continue;
      const c = out.scopes.get(a.scopeKey)![a.window];
      // The stored calendar: the scope moves to the address's below, after
      // every address was judged against it.
      const how = storedWindowAt(c.startMs, out.calendars.get(a.scopeKey) ?? null, a);
      // A stored window never moves back: its start names what was charged
      // to it (a hold's charges, read in "exact" mode), and an earlier start
      // may have been a window of its own, whose counts are gone. An older
      // address reads and charges the stored, newer window (never less than
      // the truth): a replica whose clock lags, or another calendar whose
      // window in effect began earlier (an agent's policy moved east),
      // whose next window then rolls this one over.
      if (how === "stored") continue;
      // A newer window rolls the stored one over, so every address of that
      // kind then maps to the same (newest) window. Under another calendar
      // (an agent's policy moved time zone or week start) what was spent in
      // the stored window may lie in the new one: it carries over, unless
      // the new one starts after the stored one surely ended.
      c.startMs = a.startMs;
      if (how === "reset") c.committedValue = c.heldValue = c.committedActions = c.heldActions = 0n;
    }
    for (const a of addresses) if (a.calendar !== undefined) out.calendars.set(a.scopeKey, a.calendar);
  }
  for (const a of addresses) {
    const c = out.scopes.get(a.scopeKey)![a.window];
    const live = mode === "current" || c.startMs === a.startMs;
    out.set(
      counterKey(a.scopeKey, a.window, a.startMs),
      live ? c : { ...a, committedValue: 0n, heldValue: 0n, committedActions: 0n, heldActions: 0n },
    );
  }
  return out;
}

/**
 * Writes every scope of `usage` back as absolute values: an UPDATE of the
 * rows {@link loadCounters} found and an INSERT of the rest. Safe because
 * every writer holds the owners' row locks (see lockScopes), so nobody
 * else changed, created or removed them since; and cheaper than one upsert
 * (INSERT … ON CONFLICT DO UPDATE), which probes the key, fails its
 * speculative insert and then updates: the decision batch's costliest
 * write before this (a decision writes its session's and its agent's).
 */
export async function saveCounters(tx: Queryable, usage: UsageSet): Promise<void> {
  for (const { sql, params } of saveCountersSql(usage)) await tx.query(sql, params);
  // Saved again later in the transaction, the rows inserted now are updated.
  for (const k of usage.scopes.keys()) usage.stored.add(k);
}

/**
 * The statements of {@link saveCounters} (none when there is nothing to
 * write), each with its own `$1…` parameters: fold them into a larger
 * statement with appendStatement, as the decision batcher does. Run them
 * once: the new rows they insert are not marked stored in `usage`.
 */
export function saveCountersSql(usage: UsageSet): { sql: string; params: unknown[] }[] {
  const all = [...usage.scopes.values()];
  const old = all.filter((s) => usage.stored.has(s.day.scopeKey));
  const fresh = all.filter((s) => !usage.stored.has(s.day.scopeKey));
  const out: { sql: string; params: unknown[] }[] = [];
  if (old.length > 0) out.push({ sql: UPDATE_USAGE_SQL, params: columnsOf(usage, old) });
  if (fresh.length > 0) out.push({ sql: INSERT_USAGE_SQL, params: columnsOf(usage, fresh) });
  return out;
}

/** One array parameter per column of {@link USAGE_COLUMNS}. */
const USAGE_ARRAYS = USAGE_COLUMNS.map((c, i) => `$${i + 1}::${i < 2 ? "text" : c.endsWith("_start") ? "timestamptz" : "bigint"}[]`).join(", ");
const UPDATE_USAGE_SQL = `UPDATE scope_usage t SET ${USAGE_COLUMNS.slice(1).map((c) => `${c} = v.${c}`).join(", ")}
    FROM unnest(${USAGE_ARRAYS}) AS v(${USAGE_COLUMNS.join(", ")})
   WHERE t.scope_key = v.scope_key`;
const INSERT_USAGE_SQL = `INSERT INTO scope_usage (${USAGE_COLUMNS.join(", ")}) SELECT * FROM unnest(${USAGE_ARRAYS})`;

/** The parameters of a write of `scopes`: one array per column of {@link USAGE_COLUMNS}, in its order. */
function columnsOf(usage: UsageSet, scopes: readonly ScopeWindows[]): unknown[] {
  const params: unknown[] = [scopes.map((s) => s.day.scopeKey), scopes.map((s) => usage.calendars.get(s.day.scopeKey) ?? null)];
  for (const w of START_COLUMNS) params.push(scopes.map((s) => (Number.isNaN(s[w].startMs) ? null : new Date(s[w].startMs).toISOString())));
  for (const w of WINDOW_KINDS) for (const f of VALUE_PROPS) params.push(scopes.map((s) => int8Param(s[w][f])));
  return params;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * An int8 parameter: a number where that is exact (both drivers send it as
 * is, with no digits to make and parse), else its digits. A total past
 * int64 is stored as int64's largest: only spend no window limits can get
 * there (leases of sessions without value limits reserve none, so their
 * sidecars' records are counted as reported), and an int64 error would fail
 * the whole write, a report's or a batch's, for every session in it. The
 * engine then denies every further amount there (AMOUNT_OUT_OF_RANGE).
 */
function int8Param(v: bigint): number | string {
  if (v <= MAX_SAFE && v >= -MAX_SAFE) return Number(v);
  return (v > INT64_MAX ? INT64_MAX : v).toString();
}
