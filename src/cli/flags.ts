import { create, type DescEnum } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { INT64_MAX, parseDecimalMicros } from "../core/money.js";
import { Weekday } from "../gen/warden/v1/policy_pb.js";
import { CliError } from "./cli-error.js";

// Value parsers for flag text. Each takes the flag's name (with dashes) so
// that every error says which flag was wrong; none of them does I/O.

const NANOS_PER_UNIT: Record<string, bigint> = {
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60n * 1_000_000_000n,
  h: 3_600n * 1_000_000_000n,
  d: 86_400n * 1_000_000_000n,
};

/**
 * Parses a duration such as `90s`, `15m`, `1h`, `7d`, `1h30m` or `500ms`
 * into a positive google.protobuf.Duration. A bare number is rejected: "15"
 * could mean seconds or minutes, and guessing wrong silently is worse than
 * asking.
 */
export function parseDuration(flag: string, text: string): Duration {
  const trimmed = text.trim();
  const part = /(\d+)(ms|d|h|m|s)/y;
  let nanos = 0n;
  let pos = 0;
  while (pos < trimmed.length) {
    part.lastIndex = pos;
    const m = part.exec(trimmed);
    if (m === null) break;
    nanos += BigInt(m[1]!) * NANOS_PER_UNIT[m[2]!]!;
    pos = part.lastIndex;
  }
  if (trimmed === "" || pos !== trimmed.length) {
    throw new CliError(`${flag}: "${text}" is not a duration; use e.g. 90s, 15m, 1h, 7d or 1h30m`);
  }
  if (nanos === 0n) throw new CliError(`${flag}: duration must be greater than zero`);
  const seconds = nanos / 1_000_000_000n;
  if (seconds > 315_576_000_000n) throw new CliError(`${flag}: "${text}" is longer than 10000 years`);
  return create(DurationSchema, { seconds, nanos: Number(nanos % 1_000_000_000n) });
}

/**
 * Parses a money flag in decimal major units ("200", "12.50") into micros,
 * exactly. Zero is allowed: on a limit it means "nothing may be spent".
 */
export function parseMoneyFlag(flag: string, text: string): bigint {
  let micros: bigint;
  try {
    micros = parseDecimalMicros(text);
  } catch (err) {
    throw new CliError(`${flag}: ${(err as Error).message}, e.g. 12.50`);
  }
  if (micros < 0n) throw new CliError(`${flag}: amount must not be negative`);
  if (micros > INT64_MAX) throw new CliError(`${flag}: amount "${text}" is too large`);
  return micros;
}

/** Like {@link parseMoneyFlag}, for amounts of an action, which must be above zero. */
export function parsePositiveMoneyFlag(flag: string, text: string): bigint {
  const micros = parseMoneyFlag(flag, text);
  if (micros === 0n) throw new CliError(`${flag}: amount must be greater than zero`);
  return micros;
}

/** Parses an ISO 4217 code; lower case is accepted and upper-cased. */
export function parseCurrency(flag: string, text: string): string {
  const code = text.trim().toUpperCase();
  if (!/^[A-Z]{3}$/.test(code)) throw new CliError(`${flag}: "${text}" is not a 3-letter ISO 4217 currency code such as USD`);
  return code;
}

/** Parses a non-negative whole number that fits an int64 (action counts). */
export function parseCount(flag: string, text: string): bigint {
  if (!/^\d+$/.test(text.trim())) throw new CliError(`${flag}: "${text}" is not a whole number`);
  const n = BigInt(text.trim());
  if (n > INT64_MAX) throw new CliError(`${flag}: "${text}" is too large`);
  return n;
}

/** Parses a page size: a whole number from 1 to 1000, the server's maximum. */
export function parsePageSize(flag: string, text: string): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!(n >= 1 && n <= 1000)) throw new CliError(`${flag}: "${text}" is not a whole number from 1 to 1000`);
  return n;
}

const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/i;

/**
 * Parses an RFC 3339 time (`2025-07-01T18:00:00Z`, `2025-07-01T20:00+02:00`)
 * or a date (`2025-07-01`, midnight UTC). A time without a zone is rejected
 * because it would silently depend on the machine's zone. Impossible dates
 * such as February 30 are rejected rather than rolled over as `Date` would.
 */
export function parseTimestamp(flag: string, text: string): Timestamp {
  const m = ISO_TIME.exec(text.trim());
  const bad = () => new CliError(`${flag}: "${text}" is not an ISO 8601 time with a zone, e.g. 2025-07-01T18:00:00Z`);
  if (m === null) throw bad();
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const [hour, minute, second] = [Number(m[4] ?? 0), Number(m[5] ?? 0), Number(m[6] ?? 0)];
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth || hour > 23 || minute > 59 || second > 59) throw bad();
  const date = new Date(m[4] === undefined ? `${m[1]}-${m[2]}-${m[3]}T00:00:00Z` : text.trim().toUpperCase().replace(" ", "T"));
  if (Number.isNaN(date.getTime())) throw bad();
  // Date keeps milliseconds: the fraction, up to the nanoseconds the
  // syntax takes, is read from the text (an audit --since must not take
  // in records from before the instant given).
  const ts = timestampFromDate(date);
  ts.nanos = m[7] === undefined ? 0 : Number(m[7].slice(1).padEnd(9, "0"));
  return ts;
}

/**
 * Parses repeated `key=value` flags into a map. The value may be empty and
 * may contain `=`; the key may not be empty. A key given twice is an error
 * rather than "last one wins", which would hide a typo.
 */
export function parseKeyValues(flag: string, items: readonly string[]): Record<string, string> {
  const out = new Map<string, string>();
  for (const item of items) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new CliError(`${flag}: "${item}" is not key=value`);
    const key = item.slice(0, eq);
    // Assigned to a plain object (here, or by the generated code the map
    // goes into), "__proto__" would set the prototype, not a key: dropped
    // without a word.
    if (key === "__proto__") throw new CliError(`${flag}: "__proto__" cannot be a key`);
    if (out.has(key)) throw new CliError(`${flag}: key "${key}" given twice`);
    out.set(key, item.slice(eq + 1));
  }
  return Object.fromEntries(out);
}

/** Parses an IANA time zone name, checked against the runtime's zone database. */
export function parseTimeZone(flag: string, text: string): string {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: text });
  } catch {
    throw new CliError(`${flag}: "${text}" is not an IANA time zone such as Europe/Berlin or UTC`);
  }
  return text;
}

const WEEKDAYS: Record<string, Weekday> = {
  monday: Weekday.MONDAY,
  tuesday: Weekday.TUESDAY,
  wednesday: Weekday.WEDNESDAY,
  thursday: Weekday.THURSDAY,
  friday: Weekday.FRIDAY,
  saturday: Weekday.SATURDAY,
  sunday: Weekday.SUNDAY,
};

/** Parses a weekday name (`monday`, or its first three letters, any case). */
export function parseWeekday(flag: string, text: string): Weekday {
  const t = text.trim().toLowerCase();
  const match = Object.entries(WEEKDAYS).find(([name]) => t.length >= 3 && name.startsWith(t));
  if (match === undefined) throw new CliError(`${flag}: "${text}" is not a weekday; use monday … sunday`);
  return match[1];
}

/**
 * Parses an enum value given as a lower-case word, the way the CLI prints
 * it (`active` for SESSION_STATUS_ACTIVE). The zero value is not accepted.
 */
export function parseEnumWord(flag: string, schema: DescEnum, text: string): number {
  const t = text.trim().toLowerCase().replace(/-/g, "_");
  const names = schema.values.filter((v) => v.number !== 0);
  const match = names.find((v) => v.localName.toLowerCase() === t);
  if (match === undefined) {
    throw new CliError(`${flag}: "${text}" is not one of ${names.map((v) => v.localName.toLowerCase()).join(", ")}`);
  }
  return match.number;
}

/**
 * A server address as an error may show it: the user name and password
 * (`user:pw@`) as `***`, and the query or fragment as `?…` or `#…` (either
 * may carry a token). An error line ends up in terminals, CI logs and bug
 * reports. Works on text that is not a URL too, which is when it matters
 * most: a password holding `/`, `?`, `#` or `@` unescaped is what makes the
 * text fail to parse, so everything up to the last `@` is masked (more than
 * the user info when a path or query holds one: never less).
 */
export function shownServer(text: string): string {
  return text.replace(/^(\s*(?:[a-z][a-z0-9+.-]*:\/\/)?).*@/is, "$1***@").replace(/([?#]).*$/s, "$1…");
}

/**
 * Checks the server address and returns it as the URL parser read it,
 * without a trailing slash. `source` names where it came from (`--server`
 * or `WARDEN_SERVER`) so the message points at what to fix.
 */
export function parseServerUrl(source: string, text: string): string {
  const shown = shownServer(text);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new CliError(`${source}: "${shown}" is not a URL such as http://127.0.0.1:8080`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CliError(`${source}: "${shown}" must start with http:// or https://`);
  }
  // Calls go to <server>/<service>/<method>: after a query or a fragment
  // that path is lost, and every call would fail as a 404. An empty one
  // ("http://host/?") is not in url.search or url.hash, but is in href.
  if (/[?#]/.test(url.href)) {
    throw new CliError(`${source}: "${shown}" must not have a query string or fragment; give only the scheme, host, port and path`);
  }
  // The parser's form, not the text: it drops spaces and control characters
  // around the URL that the transport would otherwise choke on.
  return url.href.replace(/\/+$/, "");
}
