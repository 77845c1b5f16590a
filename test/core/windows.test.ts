/**
 * Calendar windows. Every expected instant is written as a local wall-clock
 * time plus the UTC offset the zone's rules give at that moment (see the
 * comment on each case), so the expectations do not come from luxon.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CalendarSpanCache, calendarSpans, type IsoWeekday, isValidTimeZone, type Span } from "../../src/core/windows.js";
import { DAY, HOUR, local, MINUTE, utc } from "./fixtures.js";

const iso = (ms: number) => new Date(ms).toISOString();

/** Compares spans as ISO strings, so a failure reads as dates. */
function assertSpan(actual: Span, startMs: number, endMs: number, what: string): void {
  assert.deepEqual({ start: iso(actual.startMs), end: iso(actual.endMs) }, { start: iso(startMs), end: iso(endMs) }, what);
}

const ALL_WEEKDAYS: IsoWeekday[] = [1, 2, 3, 4, 5, 6, 7];

describe("isValidTimeZone", () => {
  test("empty (UTC) and IANA names are valid", () => {
    for (const zone of ["", "UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Auckland", "America/Santiago", "Etc/GMT+5"]) {
      assert.equal(isValidTimeZone(zone), true, zone);
    }
  });

  test("unknown names are invalid", () => {
    // UTC offsets too: not zone names, though Node's Intl takes them.
    for (const zone of ["Mars/Olympus_Mons", "Europe/Berlinn", "not a zone", "America/", "+05:00", "-0330", "+05"]) {
      assert.equal(isValidTimeZone(zone), false, zone);
    }
  });
});

describe("calendarSpans in UTC", () => {
  // Wednesday 2026-07-15.
  const now = utc(2026, 7, 15, 12, 34, 56, 789);

  test("day, week (from Monday) and month of an instant; empty zone is UTC", () => {
    for (const zone of ["", "UTC"]) {
      const s = calendarSpans(zone, 1, now);
      assertSpan(s.day, utc(2026, 7, 15), utc(2026, 7, 16), `${zone} day`);
      assertSpan(s.week, utc(2026, 7, 13), utc(2026, 7, 20), `${zone} week`);
      assertSpan(s.month, utc(2026, 7, 1), utc(2026, 8, 1), `${zone} month`);
    }
  });

  test("windows are half-open: midnight belongs to the new day", () => {
    const midnight = utc(2026, 7, 16);
    const before = calendarSpans("UTC", 1, midnight - 1);
    const at = calendarSpans("UTC", 1, midnight);
    assertSpan(before.day, utc(2026, 7, 15), midnight, "last ms of the 15th");
    assertSpan(at.day, midnight, utc(2026, 7, 17), "first ms of the 16th");
  });

  test("week starts on each weekday (1 = Monday … 7 = Sunday)", () => {
    // Wed 15 Jul 2026: the latest Monday is the 13th, Tuesday 14th, Wednesday
    // the 15th itself, Thursday 9th, Friday 10th, Saturday 11th, Sunday 12th.
    const expectedStartDay: Record<IsoWeekday, number> = { 1: 13, 2: 14, 3: 15, 4: 9, 5: 10, 6: 11, 7: 12 };
    for (const ws of ALL_WEEKDAYS) {
      const start = utc(2026, 7, expectedStartDay[ws]);
      assertSpan(calendarSpans("UTC", ws, now).week, start, start + 7 * DAY, `week start ${ws}`);
    }
  });

  test("the first instant of the week-start day opens a new week; the ms before is the old week", () => {
    // Mon 2026-07-13 … Sun 2026-07-19: weekday w starts on 12 + w.
    for (const ws of ALL_WEEKDAYS) {
      const start = utc(2026, 7, 12 + ws);
      assertSpan(calendarSpans("UTC", ws, start).week, start, start + 7 * DAY, `at start, week start ${ws}`);
      assertSpan(calendarSpans("UTC", ws, start - 1).week, start - 7 * DAY, start, `ms before, week start ${ws}`);
    }
  });

  test("month ends: Jan 31 → Feb, 30- and 31-day months", () => {
    const lastOfJan = calendarSpans("UTC", 1, utc(2026, 1, 31, 23, 59, 59, 999));
    assertSpan(lastOfJan.month, utc(2026, 1, 1), utc(2026, 2, 1), "January");
    assertSpan(lastOfJan.day, utc(2026, 1, 31), utc(2026, 2, 1), "Jan 31");
    const firstOfFeb = calendarSpans("UTC", 1, utc(2026, 2, 1));
    assertSpan(firstOfFeb.month, utc(2026, 2, 1), utc(2026, 3, 1), "February 2026");
    assert.equal(firstOfFeb.month.endMs - firstOfFeb.month.startMs, 28 * DAY, "Feb 2026 has 28 days");
    const april = calendarSpans("UTC", 1, utc(2026, 4, 30, 23, 59)).month;
    assertSpan(april, utc(2026, 4, 1), utc(2026, 5, 1), "April");
    assert.equal(april.endMs - april.startMs, 30 * DAY, "April has 30 days");
    const may = calendarSpans("UTC", 1, utc(2026, 5, 1)).month;
    assert.equal(may.endMs - may.startMs, 31 * DAY, "May has 31 days");
  });

  test("leap years: 2028-02-29 exists and Feb 2028 has 29 days; 2027 has no Feb 29", () => {
    const leapDay = calendarSpans("UTC", 1, utc(2028, 2, 29, 12));
    assertSpan(leapDay.day, utc(2028, 2, 29), utc(2028, 3, 1), "2028-02-29");
    assertSpan(leapDay.month, utc(2028, 2, 1), utc(2028, 3, 1), "Feb 2028");
    assert.equal(leapDay.month.endMs - leapDay.month.startMs, 29 * DAY);
    // 2028-02-29 is a Tuesday: its Monday-week runs 28 Feb → 6 Mar.
    assertSpan(leapDay.week, utc(2028, 2, 28), utc(2028, 3, 6), "week of the leap day");

    // 2027-02-28 is followed directly by 2027-03-01.
    const lastOfFeb2027 = calendarSpans("UTC", 1, utc(2027, 2, 28, 23, 59, 59, 999));
    assertSpan(lastOfFeb2027.day, utc(2027, 2, 28), utc(2027, 3, 1), "2027-02-28");
    assert.equal(lastOfFeb2027.month.endMs - lastOfFeb2027.month.startMs, 28 * DAY, "Feb 2027 has 28 days");
    const next = calendarSpans("UTC", 1, utc(2027, 2, 28, 23, 59, 59, 999) + 1);
    assertSpan(next.month, utc(2027, 3, 1), utc(2027, 4, 1), "March 2027 follows Feb 28");
  });

  test("year boundary: a week spans Dec 2026 → Jan 2027", () => {
    // 2027-01-01 is a Friday; its Monday-week started Mon 2026-12-28.
    const lastMs = calendarSpans("UTC", 1, utc(2026, 12, 31, 23, 59, 59, 999));
    assertSpan(lastMs.day, utc(2026, 12, 31), utc(2027, 1, 1), "Dec 31");
    assertSpan(lastMs.month, utc(2026, 12, 1), utc(2027, 1, 1), "December");
    assertSpan(lastMs.week, utc(2026, 12, 28), utc(2027, 1, 4), "week over new year");
    const firstMs = calendarSpans("UTC", 1, utc(2027, 1, 1));
    assertSpan(firstMs.day, utc(2027, 1, 1), utc(2027, 1, 2), "Jan 1");
    assertSpan(firstMs.month, utc(2027, 1, 1), utc(2027, 2, 1), "January");
    assert.deepEqual(firstMs.week, lastMs.week, "same week on both sides of new year");
  });

  test("UTC by arithmetic gives exactly what luxon gives for Etc/UTC", () => {
    // "" and "UTC" take a path without luxon (no ICU); "Etc/UTC" goes
    // through luxon's IANA zone. Instants: every boundary-ish ms around
    // midnights of month ends, leap days and new years, plus a spread of
    // pseudo-random instants from 1970 to 2100, before and after 1970.
    const instants: number[] = [0, -1, 1, -DAY, utc(1969, 12, 31, 23, 59, 59, 999), utc(2100, 3, 1) - 1];
    for (const [y, m, d] of [[2026, 1, 31], [2026, 2, 28], [2028, 2, 29], [2026, 12, 31], [2000, 2, 29], [2099, 12, 31]] as const) {
      const midnight = utc(y, m, d) + DAY;
      instants.push(midnight - 1, midnight, midnight + 1, midnight - HOUR, midnight + MINUTE);
    }
    let seed = 42;
    for (let i = 0; i < 300; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      instants.push(Math.floor((seed / 2 ** 31) * 4_200_000_000_000) - 100_000_000_000);
    }
    for (const nowMs of instants) {
      for (const weekStart of ALL_WEEKDAYS) {
        const expected = calendarSpans("Etc/UTC", weekStart, nowMs);
        assert.deepEqual(calendarSpans("UTC", weekStart, nowMs), expected, `${iso(nowMs)} week from ${weekStart}`);
        assert.deepEqual(calendarSpans("", weekStart, nowMs), expected, `${iso(nowMs)} week from ${weekStart} (empty zone)`);
      }
    }
  });
});

describe("calendarSpans in America/New_York (EST -5, EDT -4)", () => {
  const NY = "America/New_York";

  test("an ordinary winter day starts at 05:00Z", () => {
    const s = calendarSpans(NY, 1, utc(2027, 1, 15, 3)); // 22:00 EST on the 14th
    assertSpan(s.day, local(2027, 1, 14, 0, 0, -5), local(2027, 1, 15, 0, 0, -5), "Jan 14");
  });

  test("spring forward 2026-03-08 (02:00 → 03:00): a 23-hour day", () => {
    const start = local(2026, 3, 8, 0, 0, -5);
    const end = local(2026, 3, 9, 0, 0, -4);
    for (const t of [start, local(2026, 3, 8, 1, 59, -5), local(2026, 3, 8, 3, 0, -4), end - 1]) {
      assertSpan(calendarSpans(NY, 1, t).day, start, end, `at ${iso(t)}`);
    }
    assert.equal(end - start, 23 * HOUR);
    // March: 1 Mar 00:00 EST → 1 Apr 00:00 EDT, one hour short of 31 days.
    const march = calendarSpans(NY, 1, start).month;
    assertSpan(march, local(2026, 3, 1, 0, 0, -5), local(2026, 4, 1, 0, 0, -4), "March");
    assert.equal(march.endMs - march.startMs, 31 * DAY - HOUR);
  });

  test("fall back 2026-11-01 (02:00 → 01:00): a 25-hour day; both 01:30s belong to it", () => {
    const start = local(2026, 11, 1, 0, 0, -4);
    const end = local(2026, 11, 2, 0, 0, -5);
    const firstOneThirty = local(2026, 11, 1, 1, 30, -4);
    const secondOneThirty = local(2026, 11, 1, 1, 30, -5);
    assert.equal(secondOneThirty - firstOneThirty, HOUR);
    for (const t of [start, firstOneThirty, secondOneThirty, end - 1]) {
      assertSpan(calendarSpans(NY, 1, t).day, start, end, `at ${iso(t)}`);
    }
    assert.equal(end - start, 25 * HOUR);
    assertSpan(calendarSpans(NY, 1, end).day, end, local(2026, 11, 3, 0, 0, -5), "Nov 2");
  });

  test("a week from Wednesday spans the Oct → Nov month boundary and the fall-back", () => {
    // Wed 2026-10-28 00:00 EDT → Wed 2026-11-04 00:00 EST: 7 days + 1 hour.
    const start = local(2026, 10, 28, 0, 0, -4);
    const end = local(2026, 11, 4, 0, 0, -5);
    for (const t of [start, local(2026, 10, 31, 23, 59, -4), local(2026, 11, 1, 12, 0, -5), end - 1]) {
      assertSpan(calendarSpans(NY, 3, t).week, start, end, `at ${iso(t)}`);
    }
    assert.equal(end - start, 7 * DAY + HOUR);
    const nov = calendarSpans(NY, 3, local(2026, 11, 1, 12, 0, -5)).month;
    assertSpan(nov, local(2026, 11, 1, 0, 0, -4), local(2026, 12, 1, 0, 0, -5), "November");
    const oct = calendarSpans(NY, 3, local(2026, 10, 31, 23, 59, -4)).month;
    assert.equal(oct.endMs, nov.startMs, "October ends where November starts");
  });

  test("local calendar, not UTC: 23:00 EST on Dec 31 is still December", () => {
    const t = local(2026, 12, 31, 23, 0, -5); // 2027-01-01T04:00Z
    const s = calendarSpans(NY, 1, t);
    assertSpan(s.month, local(2026, 12, 1, 0, 0, -5), local(2027, 1, 1, 0, 0, -5), "December in New York");
  });
});

describe("calendarSpans in Europe/Berlin (CET +1, CEST +2)", () => {
  const BER = "Europe/Berlin";

  test("spring forward 2026-03-29: a 23-hour day; March is 31 days less an hour", () => {
    const s = calendarSpans(BER, 1, utc(2026, 3, 29, 12));
    assertSpan(s.day, local(2026, 3, 29, 0, 0, 1), local(2026, 3, 30, 0, 0, 2), "Mar 29");
    assert.equal(s.day.endMs - s.day.startMs, 23 * HOUR);
    assertSpan(s.month, local(2026, 3, 1, 0, 0, 1), local(2026, 4, 1, 0, 0, 2), "March");
  });

  test("a week from Sunday spans the spring-forward and the Mar → Apr boundary", () => {
    // Sun 2026-03-29 00:00 CET → Sun 2026-04-05 00:00 CEST: 7 days less an hour.
    const start = local(2026, 3, 29, 0, 0, 1);
    const end = local(2026, 4, 5, 0, 0, 2);
    for (const t of [start, local(2026, 4, 1, 0, 0, 2), end - 1]) {
      assertSpan(calendarSpans(BER, 7, t).week, start, end, `at ${iso(t)}`);
    }
    assert.equal(end - start, 7 * DAY - HOUR);
  });

  test("fall back 2026-10-25: a 25-hour day, and a Monday week an hour longer than 7 days", () => {
    const s = calendarSpans(BER, 1, utc(2026, 10, 25, 1, 30)); // 02:30 CET, after the repeat
    assertSpan(s.day, local(2026, 10, 25, 0, 0, 2), local(2026, 10, 26, 0, 0, 1), "Oct 25");
    assert.equal(s.day.endMs - s.day.startMs, 25 * HOUR);
    assertSpan(s.week, local(2026, 10, 19, 0, 0, 2), local(2026, 10, 26, 0, 0, 1), "week of Oct 19");
    assert.deepEqual(calendarSpans(BER, 1, utc(2026, 10, 25, 0, 30)).day, s.day, "02:30 CEST, before the repeat");
  });

  test("Feb 2028 in Berlin has 29 days", () => {
    const s = calendarSpans(BER, 1, local(2028, 2, 29, 23, 59, 1));
    assertSpan(s.day, local(2028, 2, 29, 0, 0, 1), local(2028, 3, 1, 0, 0, 1), "2028-02-29");
    assertSpan(s.month, local(2028, 2, 1, 0, 0, 1), local(2028, 3, 1, 0, 0, 1), "Feb 2028");
    assert.equal(s.month.endMs - s.month.startMs, 29 * DAY);
  });
});

describe("calendarSpans in Australia/Lord_Howe (+10:30 standard, +11 summer: a 30-minute shift)", () => {
  const LH = "Australia/Lord_Howe";

  test("spring forward 2026-10-04 (02:00 → 02:30): a 23.5-hour day", () => {
    const s = calendarSpans(LH, 1, local(2026, 10, 4, 12, 0, 11));
    assertSpan(s.day, local(2026, 10, 4, 0, 0, 10.5), local(2026, 10, 5, 0, 0, 11), "Oct 4");
    assert.equal(s.day.endMs - s.day.startMs, 23.5 * HOUR);
    // October: 1 Oct 00:00 +10:30 → 1 Nov 00:00 +11.
    assertSpan(s.month, local(2026, 10, 1, 0, 0, 10.5), local(2026, 11, 1, 0, 0, 11), "October");
    // Monday week 28 Sep → 5 Oct ends on the short day.
    assertSpan(s.week, local(2026, 9, 28, 0, 0, 10.5), local(2026, 10, 5, 0, 0, 11), "week");
  });

  test("fall back 2026-04-05 (02:00 → 01:30): a 24.5-hour day; both 01:45s belong to it", () => {
    const start = local(2026, 4, 5, 0, 0, 11);
    const end = local(2026, 4, 6, 0, 0, 10.5);
    assert.equal(end - start, 24.5 * HOUR);
    for (const t of [start, local(2026, 4, 5, 1, 45, 11), local(2026, 4, 5, 1, 45, 10.5), end - 1]) {
      assertSpan(calendarSpans(LH, 1, t).day, start, end, `at ${iso(t)}`);
    }
    assertSpan(calendarSpans(LH, 1, start - 1).day, local(2026, 4, 4, 0, 0, 11), start, "Apr 4");
  });
});

describe("calendarSpans in Asia/Kolkata (+5:30, no DST)", () => {
  const IN = "Asia/Kolkata";

  test("days start at 18:30Z; the boundary instant is the new day", () => {
    const boundary = local(2026, 7, 15, 0, 0, 5.5);
    assert.equal(boundary, utc(2026, 7, 14, 18, 30));
    assertSpan(calendarSpans(IN, 1, boundary).day, boundary, boundary + DAY, "Jul 15");
    assertSpan(calendarSpans(IN, 1, boundary - 1).day, boundary - DAY, boundary, "Jul 14");
  });

  test("local calendar: 20:00Z on Dec 31 is already January 2027", () => {
    const s = calendarSpans(IN, 1, utc(2026, 12, 31, 20));
    assertSpan(s.day, local(2027, 1, 1, 0, 0, 5.5), local(2027, 1, 2, 0, 0, 5.5), "Jan 1");
    assertSpan(s.month, local(2027, 1, 1, 0, 0, 5.5), local(2027, 2, 1, 0, 0, 5.5), "January");
    assertSpan(s.week, local(2026, 12, 28, 0, 0, 5.5), local(2027, 1, 4, 0, 0, 5.5), "week over new year");
  });

  test("a 30-day month and a leap February", () => {
    const june = calendarSpans(IN, 1, utc(2026, 6, 15)).month;
    assertSpan(june, local(2026, 6, 1, 0, 0, 5.5), local(2026, 7, 1, 0, 0, 5.5), "June");
    assert.equal(june.endMs - june.startMs, 30 * DAY);
    const feb = calendarSpans(IN, 1, utc(2028, 2, 28, 20)).month; // 01:30 on Feb 29 local
    assertSpan(feb, local(2028, 2, 1, 0, 0, 5.5), local(2028, 3, 1, 0, 0, 5.5), "Feb 2028");
    assert.equal(feb.endMs - feb.startMs, 29 * DAY);
  });
});

describe("calendarSpans in Pacific/Auckland (NZST +12, NZDT +13; southern hemisphere)", () => {
  const NZ = "Pacific/Auckland";

  test("spring forward in September: 2026-09-27 is 23 hours", () => {
    const s = calendarSpans(NZ, 1, local(2026, 9, 27, 12, 0, 13));
    assertSpan(s.day, local(2026, 9, 27, 0, 0, 12), local(2026, 9, 28, 0, 0, 13), "Sep 27");
    assert.equal(s.day.endMs - s.day.startMs, 23 * HOUR);
  });

  test("fall back in April: 2026-04-05 is 25 hours; April is 30 days and an hour", () => {
    const s = calendarSpans(NZ, 1, local(2026, 4, 5, 2, 30, 12)); // second 02:30
    assertSpan(s.day, local(2026, 4, 5, 0, 0, 13), local(2026, 4, 6, 0, 0, 12), "Apr 5");
    assert.equal(s.day.endMs - s.day.startMs, 25 * HOUR);
    assertSpan(s.month, local(2026, 4, 1, 0, 0, 13), local(2026, 5, 1, 0, 0, 12), "April");
    assert.equal(s.month.endMs - s.month.startMs, 30 * DAY + HOUR);
    // Sunday week starting on the long day: 5 Apr 00:00 +13 → 12 Apr 00:00 +12.
    const sundayWeek = calendarSpans(NZ, 7, local(2026, 4, 5, 2, 30, 12)).week;
    assertSpan(sundayWeek, local(2026, 4, 5, 0, 0, 13), local(2026, 4, 12, 0, 0, 12), "Sunday week");
    // Monday week ending on it: 30 Mar 00:00 +13 → 6 Apr 00:00 +12.
    assertSpan(s.week, local(2026, 3, 30, 0, 0, 13), local(2026, 4, 6, 0, 0, 12), "Monday week");
  });
});

describe("calendarSpans in America/Santiago (-4 / -3; DST switches at midnight)", () => {
  const CL = "America/Santiago";

  test("2026-09-06 has no 00:00 (00:00 → 01:00): the day starts at its first instant", () => {
    // Saturday 5 Sep 00:00 -04 → the jump at 04:00Z (= Sun 00:00 -04 = 01:00 -03).
    const jump = local(2026, 9, 6, 0, 0, -4);
    const sunday = calendarSpans(CL, 1, local(2026, 9, 6, 12, 0, -3)).day;
    assertSpan(sunday, jump, local(2026, 9, 7, 0, 0, -3), "Sep 6");
    assert.equal(sunday.endMs - sunday.startMs, 23 * HOUR);
    assertSpan(calendarSpans(CL, 1, jump).day, jump, sunday.endMs, "the jump instant itself");
    assertSpan(calendarSpans(CL, 1, jump - 1).day, local(2026, 9, 5, 0, 0, -4), jump, "Saturday Sep 5, 24 hours");
  });

  test("a Sunday week that starts on the skipped midnight", () => {
    const s = calendarSpans(CL, 7, local(2026, 9, 9, 12, 0, -3));
    assertSpan(s.week, local(2026, 9, 6, 0, 0, -4), local(2026, 9, 13, 0, 0, -3), "week of Sep 6");
    assert.equal(s.week.endMs - s.week.startMs, 7 * DAY - HOUR);
    assertSpan(s.month, local(2026, 9, 1, 0, 0, -4), local(2026, 10, 1, 0, 0, -3), "September");
  });

  test("2026-04-05 falls back at midnight (24:00 → 23:00): Saturday is 25 hours", () => {
    const start = local(2026, 4, 4, 0, 0, -3);
    const end = local(2026, 4, 5, 0, 0, -4);
    assert.equal(end - start, 25 * HOUR);
    for (const t of [local(2026, 4, 4, 23, 30, -3), local(2026, 4, 4, 23, 30, -4), end - 1]) {
      assertSpan(calendarSpans(CL, 6, t).day, start, end, `at ${iso(t)}`);
      assertSpan(calendarSpans(CL, 6, t).week, start, local(2026, 4, 11, 0, 0, -4), `Saturday week at ${iso(t)}`);
    }
    assertSpan(calendarSpans(CL, 6, end).day, end, local(2026, 4, 6, 0, 0, -4), "Sunday Apr 5");
  });
});

describe("calendarSpans in America/Havana (-5 / -4; midnight happens twice in November)", () => {
  const CU = "America/Havana";

  test("2026-11-01 (01:00 CDT → 00:00 CST): the day starts at the first midnight, for every instant in it", () => {
    const start = local(2026, 11, 1, 0, 0, -4);
    const end = local(2026, 11, 2, 0, 0, -5);
    assert.equal(end - start, 25 * HOUR);
    // 00:30 before the fall-back, 00:30 after it, noon, the last ms.
    for (const t of [start, local(2026, 11, 1, 0, 30, -4), local(2026, 11, 1, 0, 0, -5), local(2026, 11, 1, 0, 30, -5), local(2026, 11, 1, 12, 0, -5), end - 1]) {
      const s = calendarSpans(CU, 7, t);
      assertSpan(s.day, start, end, `day at ${iso(t)}`);
      assertSpan(s.week, start, local(2026, 11, 8, 0, 0, -5), `Sunday week at ${iso(t)}`);
      assertSpan(s.month, start, local(2026, 12, 1, 0, 0, -5), `November at ${iso(t)}`);
    }
    assertSpan(calendarSpans(CU, 7, start - 1).day, local(2026, 10, 31, 0, 0, -4), start, "Oct 31");
  });

  test("later in November the month and week still start at the first midnight of Nov 1", () => {
    const s = calendarSpans(CU, 7, local(2026, 11, 3, 9, 0, -5));
    assertSpan(s.week, local(2026, 11, 1, 0, 0, -4), local(2026, 11, 8, 0, 0, -5), "week");
    assertSpan(s.month, local(2026, 11, 1, 0, 0, -4), local(2026, 12, 1, 0, 0, -5), "month");
  });

  test("2026-03-08 has no 00:00 (00:00 → 01:00): the day starts at the jump", () => {
    const s = calendarSpans(CU, 7, local(2026, 3, 10, 12, 0, -4));
    assertSpan(s.week, local(2026, 3, 8, 0, 0, -5), local(2026, 3, 15, 0, 0, -4), "week from the skipped midnight");
  });
});

describe("calendarSpans partitions time (a year of instants, several zones)", () => {
  /** Local calendar date and ISO weekday by Intl, independent of luxon's arithmetic. */
  function localDateOf(zone: string): (ms: number) => { ymd: string; day: number; weekday: number; ym: string } {
    const fmt = new Intl.DateTimeFormat("en-US", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", weekday: "short" });
    const WD: Record<string, number> = { Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6, Sun: 7 };
    return (ms) => {
      const p = Object.fromEntries(fmt.formatToParts(ms).map((x) => [x.type, x.value]));
      return { ymd: `${p.year}-${p.month}-${p.day}`, ym: `${p.year}-${p.month}`, day: Number(p.day), weekday: WD[p.weekday!]! };
    };
  }

  const cases: [string, IsoWeekday][] = [
    ["UTC", 1],
    ["America/New_York", 3],
    ["Europe/Berlin", 7],
    ["Australia/Lord_Howe", 2],
    ["Asia/Kolkata", 4],
    ["Pacific/Auckland", 5],
    ["America/Santiago", 6],
    ["America/Havana", 7],
  ];

  for (const [zone, ws] of cases) {
    test(`${zone}, weeks from ${ws}: each day of 2026 is a span from the first instant of a local date to the next`, () => {
      const dateOf = localDateOf(zone);
      // Walk day by day; in each day also probe 90 minutes in (past a DST
      // change at midnight, 01:00 or 02:00), noon and the last millisecond.
      let t = utc(2026, 1, 1);
      while (t < utc(2027, 1, 2)) {
        const s = calendarSpans(zone, ws, t);
        for (const probe of [s.day.startMs + 90 * MINUTE, s.day.startMs + 12 * HOUR, s.day.endMs - 1]) {
          assert.deepEqual(calendarSpans(zone, ws, probe), s, `${iso(probe)} is in the same day, week and month as ${iso(t)}`);
        }
        for (const [name, span] of Object.entries(s) as [string, Span][]) {
          if (!(span.startMs <= t && t < span.endMs)) assert.fail(`${name} ${iso(span.startMs)}..${iso(span.endMs)} does not hold ${iso(t)}`);
        }
        const here = dateOf(t);
        // The day: starts on t's local date, the ms before is another date; ends where the next date starts.
        assert.equal(dateOf(s.day.startMs).ymd, here.ymd, `day start of ${iso(t)}`);
        assert.notEqual(dateOf(s.day.startMs - 1).ymd, here.ymd, `day of ${iso(t)} starts at its first instant`);
        assert.equal(dateOf(s.day.endMs - 1).ymd, here.ymd, `day end of ${iso(t)}`);
        assert.notEqual(dateOf(s.day.endMs).ymd, here.ymd, `day end of ${iso(t)} is the next date`);
        const hours = (s.day.endMs - s.day.startMs) / HOUR;
        assert.ok([23, 23.5, 24, 24.5, 25].includes(hours), `day of ${iso(t)} is ${hours} hours`);
        // The week: starts at the first instant of a `ws` weekday, at most 6 days back, lasts ~7 days.
        const weekStart = dateOf(s.week.startMs);
        assert.equal(weekStart.weekday, ws, `week of ${iso(t)} starts on weekday ${ws}`);
        assert.notEqual(dateOf(s.week.startMs - 1).weekday, ws, `week of ${iso(t)} starts at its first instant`);
        assert.equal(dateOf(s.week.endMs).weekday, ws, `week of ${iso(t)} ends at the next weekday ${ws}`);
        assert.notEqual(dateOf(s.week.endMs - 1).weekday, ws, `week end of ${iso(t)}`);
        assert.ok(Math.abs(s.week.endMs - s.week.startMs - 7 * DAY) <= HOUR, `week of ${iso(t)} is about 7 days`);
        // The month: starts at the first instant of the 1st of t's local month.
        const monthStart = dateOf(s.month.startMs);
        assert.equal(monthStart.ym, here.ym, `month of ${iso(t)}`);
        assert.equal(monthStart.day, 1, `month of ${iso(t)} starts on the 1st`);
        assert.notEqual(dateOf(s.month.startMs - 1).ym, here.ym, `month of ${iso(t)} starts at its first instant`);
        assert.equal(dateOf(s.month.endMs).day, 1, `month of ${iso(t)} ends at the next 1st`);
        assert.equal(dateOf(s.month.endMs - 1).ym, here.ym, `month end of ${iso(t)}`);
        // Contiguity: the previous day ends where this one starts.
        assert.equal(calendarSpans(zone, ws, s.day.startMs - 1).day.endMs, s.day.startMs, `days meet at ${iso(s.day.startMs)}`);
        t = s.day.endMs; // checked above to be the first instant of the next date
      }
    });
  }
});

describe("CalendarSpanCache", () => {
  test("returns the same object within a day and equal to calendarSpans", () => {
    const cache = new CalendarSpanCache();
    const first = cache.get("UTC", 1, utc(2026, 7, 15, 0, 0));
    assert.deepEqual(first, calendarSpans("UTC", 1, utc(2026, 7, 15)));
    assert.equal(cache.get("UTC", 1, utc(2026, 7, 15, 12)), first);
    assert.equal(cache.get("UTC", 1, utc(2026, 7, 16) - 1), first);
  });

  test("recomputes after crossing midnight, and when time goes back", () => {
    const cache = new CalendarSpanCache();
    const today = cache.get("UTC", 1, utc(2026, 7, 15, 12));
    const tomorrow = cache.get("UTC", 1, utc(2026, 7, 16));
    assert.notEqual(tomorrow, today);
    assertSpan(tomorrow.day, utc(2026, 7, 16), utc(2026, 7, 17), "next day");
    assert.equal(tomorrow.day.startMs, today.day.endMs);
    // Crossing a week boundary through the cache (Sunday → Monday).
    const monday = cache.get("UTC", 1, utc(2026, 7, 20, 0, 0, 0, 1));
    assertSpan(monday.week, utc(2026, 7, 20), utc(2026, 7, 27), "next week");
    // Back to the 15th: not the cached Monday.
    assertSpan(cache.get("UTC", 1, utc(2026, 7, 15, 13)).day, utc(2026, 7, 15), utc(2026, 7, 16), "back in time");
  });

  test("follows the zone's midnight, not UTC's", () => {
    const cache = new CalendarSpanCache();
    const NY = "America/New_York";
    const evening = cache.get(NY, 1, local(2026, 7, 15, 19, 0, -4)); // 23:00Z
    assert.equal(cache.get(NY, 1, local(2026, 7, 15, 21, 0, -4)), evening, "UTC midnight passed, New York's not");
    const next = cache.get(NY, 1, local(2026, 7, 16, 0, 0, -4));
    assert.notEqual(next, evening);
    assertSpan(next.day, local(2026, 7, 16, 0, 0, -4), local(2026, 7, 17, 0, 0, -4), "New York Jul 16");
  });

  test("keeps zones and week starts apart", () => {
    const cache = new CalendarSpanCache();
    const t = utc(2026, 7, 15, 12);
    const mondayWeeks = cache.get("UTC", 1, t);
    const sundayWeeks = cache.get("UTC", 7, t);
    const berlin = cache.get("Europe/Berlin", 1, t);
    assertSpan(sundayWeeks.week, utc(2026, 7, 12), utc(2026, 7, 19), "Sunday week");
    assertSpan(mondayWeeks.week, utc(2026, 7, 13), utc(2026, 7, 20), "Monday week");
    assertSpan(berlin.day, local(2026, 7, 15, 0, 0, 2), local(2026, 7, 16, 0, 0, 2), "Berlin day");
    assert.equal(cache.get("UTC", 1, t), mondayWeeks);
    assert.equal(cache.get("UTC", 7, t), sundayWeeks);
  });

  test("gives the same day whether first asked before or after a fall-back at midnight", () => {
    const CU = "America/Havana";
    const afterFallBack = local(2026, 11, 1, 0, 30, -5);
    const beforeFallBack = local(2026, 11, 1, 0, 30, -4);
    const warm = new CalendarSpanCache();
    const viaWarm = (warm.get(CU, 1, beforeFallBack), warm.get(CU, 1, afterFallBack));
    const cold = new CalendarSpanCache().get(CU, 1, afterFallBack);
    assert.deepEqual(cold.day, viaWarm.day);
    assertSpan(cold.day, local(2026, 11, 1, 0, 0, -4), local(2026, 11, 2, 0, 0, -5), "Havana Nov 1");
  });
});
