import { createRequire } from "node:module";
import type { DateTime } from "luxon";

// luxon (about 1 MB of heap and 2 MB of RSS once loaded) is loaded on
// first use, synchronously: UTC windows never need it, so neither does a
// sidecar whose policies are all in UTC.
let luxonModule: typeof import("luxon") | undefined;
const luxon = (): typeof import("luxon") => (luxonModule ??= createRequire(import.meta.url)("luxon") as typeof import("luxon"));

/** The calendar windows a limit can apply to (lifetime has no boundaries). */
export type CalendarWindow = "day" | "week" | "month";

/** A half-open span of time [startMs, endMs) in epoch milliseconds. */
export interface Span {
  readonly startMs: number;
  readonly endMs: number;
}

/** The day, week and month that contain one instant, in one time zone. */
export interface CalendarSpans {
  readonly day: Span;
  readonly week: Span;
  readonly month: Span;
}

/**
 * ISO weekday of the first day of a week: 1 = Monday … 7 = Sunday, the
 * numbering of both luxon and `warden.v1.Weekday`.
 */
export type IsoWeekday = 1 | 2 | 3 | 4 | 5 | 6 | 7;

/**
 * Whether `zone` is an IANA time zone name this runtime knows. Empty means
 * UTC and is valid. A UTC offset ("+05:00") is not a zone name, though
 * this runtime's Intl takes one: it has no DST, and other runtimes refuse it.
 */
export function isValidTimeZone(zone: string): boolean {
  return zone === "" || zone === "UTC" || (!/^[+\-\u2212]/.test(zone) && luxon().IANAZone.isValidZone(zone));
}

/**
 * Computes the calendar spans that contain `nowMs` in `zone`.
 *
 * Windows start at local midnight: a day is 23 or 25 hours long across a DST
 * change, a week starts at 00:00 of `weekStart`, a month at 00:00 on the 1st.
 * Where a zone skips midnight (a DST change at 00:00), the window starts at
 * the first instant of that local day, which luxon resolves forward; where
 * midnight occurs twice (a fall-back at 01:00 → 00:00), at the earlier one.
 */
export function calendarSpans(zone: string, weekStart: IsoWeekday, nowMs: number): CalendarSpans {
  if (zone === "" || zone === "UTC") return utcSpans(weekStart, nowMs);
  const local = luxon().DateTime.fromMillis(nowMs, { zone });
  const dayStart = firstInstantOfDay(local);
  const daysIntoWeek = (local.weekday - weekStart + 7) % 7;
  const weekStartDt = firstInstantOfDay(dayStart.minus({ days: daysIntoWeek }));
  const monthStart = firstInstantOfDay(local.startOf("month"));
  return {
    day: { startMs: dayStart.toMillis(), endMs: firstInstantOfDay(dayStart.plus({ days: 1 })).toMillis() },
    week: { startMs: weekStartDt.toMillis(), endMs: firstInstantOfDay(weekStartDt.plus({ weeks: 1 })).toMillis() },
    month: { startMs: monthStart.toMillis(), endMs: firstInstantOfDay(monthStart.plus({ months: 1 })).toMillis() },
  };
}

const DAY_MS = 86_400_000;

/**
 * {@link calendarSpans} in UTC, by arithmetic: days of 24 hours, no DST.
 * Most policies are in UTC, and luxon's first DateTime asks ICU for the
 * system locale, which maps about 8 MB of locale data into a process (a
 * sidecar) that otherwise never needs it.
 */
function utcSpans(weekStart: IsoWeekday, nowMs: number): CalendarSpans {
  const dayStart = Math.floor(nowMs / DAY_MS) * DAY_MS;
  const day = new Date(dayStart);
  const weekday = day.getUTCDay() === 0 ? 7 : day.getUTCDay();
  const weekStartMs = dayStart - ((weekday - weekStart + 7) % 7) * DAY_MS;
  // setUTCFullYear, not Date.UTC, which reads years 0-99 as 1900-1999.
  const monthStart = (m: number) => new Date(0).setUTCFullYear(day.getUTCFullYear(), m, 1);
  return {
    day: { startMs: dayStart, endMs: dayStart + DAY_MS },
    week: { startMs: weekStartMs, endMs: weekStartMs + 7 * DAY_MS },
    month: { startMs: monthStart(day.getUTCMonth()), endMs: monthStart(day.getUTCMonth() + 1) },
  };
}

/**
 * The first instant of the local day of `dt`.
 *
 * Fix: luxon's `startOf("day")` resolves an *ambiguous* local midnight (a
 * DST fall-back from 01:00 to 00:00, e.g. America/Havana in November) with
 * the offset `dt` has, so an instant after the fall-back got the second
 * 00:00 as its day start: one local day split into two counter keys, and
 * the day's (and week's and month's) limit could be spent twice. The day
 * starts at the earlier midnight, so step back while the previous
 * millisecond is still on the same local date.
 */
function firstInstantOfDay(dt: DateTime): DateTime {
  let start = dt.startOf("day");
  for (;;) {
    const before = start.minus({ milliseconds: 1 });
    if (before.year !== start.year || before.month !== start.month || before.day !== start.day) return start;
    const earlier = before.startOf("day");
    if (earlier.toMillis() >= start.toMillis()) return start; // no progress: never loop
    start = earlier;
  }
}

/**
 * A memo of {@link calendarSpans} per (zone, week start). Deciding asks for
 * the spans of the same few zones millions of times; the answer only changes
 * when `nowMs` leaves the current day, so the hot path costs a comparison
 * instead of a time-zone computation.
 */
export class CalendarSpanCache {
  private readonly byKey = new Map<string, CalendarSpans>();

  /** The spans that contain `nowMs`, computed at most once per day per key. */
  get(zone: string, weekStart: IsoWeekday, nowMs: number): CalendarSpans {
    const key = `${zone}|${weekStart}`;
    const hit = this.byKey.get(key);
    if (hit !== undefined && nowMs >= hit.day.startMs && nowMs < hit.day.endMs) return hit;
    const spans = calendarSpans(zone, weekStart, nowMs);
    // Bounded: zones are a small closed set, but be safe against abuse.
    if (this.byKey.size > 1024) this.byKey.clear();
    this.byKey.set(key, spans);
    return spans;
  }
}
