import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { CliError } from "../../src/cli/cli-error.js";
import {
  parseCount,
  parseCurrency,
  parseDuration,
  parseEnumWord,
  parseKeyValues,
  parseMoneyFlag,
  parsePageSize,
  parsePositiveMoneyFlag,
  parseServerUrl,
  parseTimestamp,
  shownServer,
  parseTimeZone,
  parseWeekday,
} from "../../src/cli/flags.js";
import { Weekday } from "../../src/gen/warden/v1/policy_pb.js";
import { SessionStatus, SessionStatusSchema } from "../../src/gen/warden/v1/session_pb.js";

/** Asserts that `fn` throws a CliError whose message starts with `prefix` and matches `pattern`. */
function throwsCli(fn: () => unknown, prefix: string, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CliError, `expected CliError, got ${String(e)}`);
    assert.ok(e.message.startsWith(prefix), `"${e.message}" should start with "${prefix}"`);
    if (pattern) assert.match(e.message, pattern);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
}

describe("parseDuration", () => {
  const cases: [string, bigint, number][] = [
    ["90s", 90n, 0],
    ["15m", 900n, 0],
    ["1h", 3600n, 0],
    ["7d", 604_800n, 0],
    ["1h30m", 5400n, 0],
    ["1d2h3m4s", 93_784n, 0],
    ["1500ms", 1n, 500_000_000],
    ["2m30s", 150n, 0],
  ];
  for (const [text, seconds, nanos] of cases) {
    test(`${text} is ${seconds}s ${nanos}ns`, () => {
      const d = parseDuration("--ttl", text);
      assert.equal(d.seconds, seconds);
      assert.equal(d.nanos, nanos);
    });
  }
  for (const bad of ["", "15", "1.5h", "h", "1y", "1h 30m", "-5m", "abc", "1hour"]) {
    test(`rejects "${bad}" naming the flag`, () => throwsCli(() => parseDuration("--idle-timeout", bad), "--idle-timeout: ", /duration/));
  }
  test("rejects zero", () => throwsCli(() => parseDuration("--by", "0s"), "--by: ", /greater than zero/));
});

describe("parseMoneyFlag", () => {
  test("converts decimal major units to micros exactly", () => {
    assert.equal(parseMoneyFlag("--max-per-day", "200"), 200_000_000n);
    assert.equal(parseMoneyFlag("--max-per-day", "12.50"), 12_500_000n);
    assert.equal(parseMoneyFlag("--max-per-day", "0.000001"), 1n);
    // 0.1 + 0.2 style float error must not appear.
    assert.equal(parseMoneyFlag("--max-per-day", "0.3"), 300_000n);
    assert.equal(parseMoneyFlag("--max-per-day", "9223372036854.775807"), 9_223_372_036_854_775_807n);
  });
  test("zero is a limit, not an error", () => assert.equal(parseMoneyFlag("--max-total", "0"), 0n));
  test("rejects text, naming the flag", () => throwsCli(() => parseMoneyFlag("--max-per-day", "abc"), '--max-per-day: "abc"'));
  test("rejects more than six decimals", () => throwsCli(() => parseMoneyFlag("--max-total", "1.0000001"), "--max-total: "));
  test("rejects negatives", () => throwsCli(() => parseMoneyFlag("--approval-above", "-1"), "--approval-above: ", /negative/));
  test("rejects amounts beyond int64", () => throwsCli(() => parseMoneyFlag("--max-total", "9223372036854.775808"), "--max-total: ", /too large/));
  test("rejects thousands separators and currency signs", () => {
    throwsCli(() => parseMoneyFlag("--amount", "1,000"), "--amount: ");
    throwsCli(() => parseMoneyFlag("--amount", "$5"), "--amount: ");
  });
  test("action amounts must be above zero", () => {
    assert.equal(parsePositiveMoneyFlag("--amount", "0.01"), 10_000n);
    throwsCli(() => parsePositiveMoneyFlag("--amount", "0"), "--amount: ", /greater than zero/);
  });
});

describe("parseTimestamp", () => {
  test("reads RFC 3339 with Z", () => {
    assert.equal(timestampDate(parseTimestamp("--expires", "2025-07-01T18:00:00Z")).toISOString(), "2025-07-01T18:00:00.000Z");
  });
  test("reads an offset", () => {
    assert.equal(timestampDate(parseTimestamp("--until", "2025-07-01T20:00+02:00")).toISOString(), "2025-07-01T18:00:00.000Z");
  });
  test("reads fractional seconds", () => {
    assert.equal(timestampDate(parseTimestamp("--until", "2025-07-01T18:00:00.250Z")).toISOString(), "2025-07-01T18:00:00.250Z");
  });
  test("a date alone is midnight UTC", () => {
    assert.equal(timestampDate(parseTimestamp("--until", "2025-07-01")).toISOString(), "2025-07-01T00:00:00.000Z");
  });
  for (const bad of ["2025-07-01T18:00:00", "2025-02-30T00:00:00Z", "2025-13-01", "tomorrow", "1751392800", "2025-07-01T24:00:00Z"]) {
    test(`rejects "${bad}"`, () => throwsCli(() => parseTimestamp("--expires", bad), `--expires: "${bad}"`, /ISO 8601/));
  }
});

describe("parseKeyValues", () => {
  test("splits at the first =", () => {
    assert.deepEqual(parseKeyValues("--label", ["team=payments", "url=a=b", "empty="]), { team: "payments", url: "a=b", empty: "" });
  });
  test("no items is an empty map", () => assert.deepEqual(parseKeyValues("--label", []), {}));
  test("rejects a missing =", () => throwsCli(() => parseKeyValues("--label", ["team"]), '--label: "team" is not key=value'));
  test("rejects an empty key", () => throwsCli(() => parseKeyValues("--meta", ["=x"]), '--meta: "=x" is not key=value'));
  test("rejects a key given twice", () => throwsCli(() => parseKeyValues("--label", ["a=1", "a=2"]), '--label: key "a" given twice'));
});

describe("other values", () => {
  test("currency is upper-cased and checked", () => {
    assert.equal(parseCurrency("--currency", "eur"), "EUR");
    throwsCli(() => parseCurrency("--currency", "EURO"), '--currency: "EURO"', /ISO 4217/);
  });
  test("counts are whole int64 numbers", () => {
    assert.equal(parseCount("--max-actions", "100"), 100n);
    assert.equal(parseCount("--max-actions", "0"), 0n);
    throwsCli(() => parseCount("--max-actions", "1.5"), '--max-actions: "1.5"');
    throwsCli(() => parseCount("--max-actions-per-day", "-1"), "--max-actions-per-day: ");
    throwsCli(() => parseCount("--max-actions", "9223372036854775808"), "--max-actions: ", /too large/);
  });
  test("page size is 1 to 1000", () => {
    assert.equal(parsePageSize("--page-size", "1000"), 1000);
    throwsCli(() => parsePageSize("--page-size", "0"), "--page-size: ");
    throwsCli(() => parsePageSize("--page-size", "1001"), "--page-size: ");
    throwsCli(() => parsePageSize("--page-size", "ten"), "--page-size: ");
  });
  test("weekdays by name or three-letter prefix", () => {
    assert.equal(parseWeekday("--week-start", "Monday"), Weekday.MONDAY);
    assert.equal(parseWeekday("--week-start", "sun"), Weekday.SUNDAY);
    assert.equal(parseWeekday("--week-start", "thu"), Weekday.THURSDAY);
    throwsCli(() => parseWeekday("--week-start", "t"), '--week-start: "t"');
    throwsCli(() => parseWeekday("--week-start", "funday"), '--week-start: "funday"');
  });
  test("time zones are checked against the zone database", () => {
    assert.equal(parseTimeZone("--time-zone", "Europe/Berlin"), "Europe/Berlin");
    throwsCli(() => parseTimeZone("--time-zone", "Mars/Olympus"), '--time-zone: "Mars/Olympus"');
  });
  test("enum words read the printed form", () => {
    assert.equal(parseEnumWord("--status", SessionStatusSchema, "active"), SessionStatus.ACTIVE);
    assert.equal(parseEnumWord("--status", SessionStatusSchema, "EXPIRED"), SessionStatus.EXPIRED);
    throwsCli(() => parseEnumWord("--status", SessionStatusSchema, "unspecified"), '--status: "unspecified"', /active, paused/);
    throwsCli(() => parseEnumWord("--status", SessionStatusSchema, "gone"), '--status: "gone"');
  });
  test("server URLs must be http or https", () => {
    assert.equal(parseServerUrl("--server", "http://localhost:9090/"), "http://localhost:9090");
    assert.equal(parseServerUrl("--server", "https://warden.example.com/api"), "https://warden.example.com/api");
    throwsCli(() => parseServerUrl("WARDEN_SERVER", "localhost:8080"), "WARDEN_SERVER: ");
    throwsCli(() => parseServerUrl("--server", "not a url"), '--server: "not a url"');
  });
  test("a server URL is used as it was parsed: spaces around it and a trailing slash go", () => {
    // The URL parser drops them when it checks the text; the text itself
    // would then reach the transport as an invalid URL.
    assert.equal(parseServerUrl("WARDEN_SERVER", "http://127.0.0.1:8080 "), "http://127.0.0.1:8080");
    assert.equal(parseServerUrl("--server", "\tHTTP://Warden.Example.com:9000/api/ \n"), "http://warden.example.com:9000/api");
  });
  test("a server URL with a query string or a fragment is refused, naming where it came from", () => {
    // Calls go to <server>/<service>/<method>: a query or fragment would make every path wrong.
    throwsCli(() => parseServerUrl("--server", "http://127.0.0.1:8080?region=eu"), '--server: "http://127.0.0.1:8080?…"', /query string or fragment/);
    throwsCli(() => parseServerUrl("WARDEN_SERVER", "http://127.0.0.1:8080/#main"), "WARDEN_SERVER: ", /query string or fragment/);
    throwsCli(() => parseServerUrl("--server", "http://127.0.0.1:8080/?"), "--server: ", /query string or fragment/);
    throwsCli(() => parseServerUrl("--server", "http://127.0.0.1:8080#"), "--server: ", /query string or fragment/);
  });
  test("a server URL's user name, password, query and fragment are never echoed in an error", () => {
    for (const [text, shown] of [
      ["http://bob:s3cret@127.0.0.1:8080?region=eu", "http://***@127.0.0.1:8080?…"],
      ["http://127.0.0.1:8080/?bob=s3cret", "http://127.0.0.1:8080/?…"],
      ["http://127.0.0.1:8080#bob=s3cret", "http://127.0.0.1:8080#…"],
      ["ftp://bob:s3cret@host/", "ftp://***@host/"],
      ["http://s3cret@host#x", "http://***@host#…"],
      ["http://bob:s3cret@host:99999", "http://***@host:99999"],
      ["bob:s3cret@host:8080", "***@host:8080"],
      ["localhost:8080?token=bob-s3cret", "localhost:8080?…"],
      // Unescaped in the password, these make the text no URL at all: the
      // error that shows it must still hide every part of it.
      ["http://bob:s3c/ret@127.0.0.1:1", "http://***@127.0.0.1:1"],
      ["http://bob:s3c#ret@127.0.0.1:1", "http://***@127.0.0.1:1"],
      ["http://bob:s3c?ret@127.0.0.1:1", "http://***@127.0.0.1:1"],
    ]) {
      throwsCli(() => parseServerUrl("--server", text!), `--server: "${shown}"`);
      assert.throws(() => parseServerUrl("--server", text!), (e: Error) => !/s3c|ret@|bob/.test(e.message));
    }
    // A URL parser takes the last "@" (this one parses), so does the mask.
    assert.equal(shownServer("http://bob:s3c@ret@127.0.0.1:1"), "http://***@127.0.0.1:1");
  });
});

describe("key=value flags and time flags keep what was given", () => {
  test("a key of __proto__ is refused, not dropped: a plain object's prototype setter would swallow it", () => {
    throwsCli(() => parseKeyValues("--label", ["__proto__=x"]), '--label: "__proto__" cannot be a key');
    throwsCli(() => parseKeyValues("--meta", ["a=1", "__proto__=a", "__proto__=b"]), "--meta: ");
    assert.deepEqual(Object.entries(parseKeyValues("--label", ["constructor=x", "toString=y"])), [["constructor", "x"], ["toString", "y"]]);
  });
  test("fractional seconds of a time flag are kept to the nanosecond", () => {
    assert.equal(parseTimestamp("--since", "2025-07-01T18:00:00.123456789Z").nanos, 123_456_789);
    assert.equal(parseTimestamp("--since", "2025-07-01T20:00:00.5+02:00").nanos, 500_000_000);
    const before1970 = parseTimestamp("--since", "1969-12-31T23:59:59.000000001Z");
    assert.deepEqual([before1970.seconds, before1970.nanos], [-1n, 1]);
    assert.equal(parseTimestamp("--since", "2025-07-01T18:00:00Z").nanos, 0);
  });
});
