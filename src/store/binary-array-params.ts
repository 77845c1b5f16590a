/**
 * Array parameters in PostgreSQL's binary format, for the `pg` driver.
 *
 * The store passes its batches as one array per column (`unnest($1::text[],
 * $2::bigint[], …)`). As text, each array is written out by `pg` as an
 * array literal, every element quoted and escaped, and parsed back by
 * PostgreSQL's array_in and each element's input function: of a decision
 * batch, ~13% of PostgreSQL's CPU and a few percent of the server's went
 * into that (the base64 of actions and decisions, the JSON of charges and
 * audit records, the ids, the counts). A Buffer parameter `pg` sends as
 * binary, which PostgreSQL reads with array_recv: lengths and bytes, nothing
 * to parse.
 *
 * Only a parameter every use of which in the statement casts it to one of
 * the array types below is encoded, and only when each element has exactly
 * one binary form (e.g. a timestamp given as `toISOString()` text or a
 * Date, an integer given as digits); otherwise it travels as text, as
 * before. PGlite takes text: its driver never calls this.
 */

/**
 * An element type: its OID; `prepare` gives a value's binary form as a
 * primitive (undefined: none here), `size` its length in bytes and `write`
 * puts it at `at`, returning the offset after it.
 */
export interface ElementType {
  readonly oid: number;
  prepare(v: unknown): number | bigint | string | undefined;
  size(p: number | bigint | string): number;
  write(p: number | bigint | string, out: Buffer, at: number): number;
}

const INT8_MIN = -(2n ** 63n);
const INT8_MAX = 2n ** 63n - 1n;
const DIGITS = /^-?\d+$/;
/** PostgreSQL's timestamp epoch, 2000-01-01T00:00:00Z, in Unix ms. */
const PG_EPOCH_MS = 946_684_800_000;
const TWO_32 = 4_294_967_296;

/** An int8 from a safe integer (no BigInt on the common path) or a bigint. */
function writeInt64(p: number | bigint, out: Buffer, at: number): number {
  if (typeof p === "bigint") return out.writeBigInt64BE(p, at);
  const hi = Math.floor(p / TWO_32);
  out.writeInt32BE(hi, at);
  return out.writeUInt32BE(p - hi * TWO_32, at + 4);
}

/** A safe integer, or a bigint in int8's range, from an integer given as a number, bigint or digits. */
function int64Of(v: unknown): number | bigint | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) ? v : undefined;
  let n: bigint;
  if (typeof v === "bigint") n = v;
  else if (typeof v === "string" && DIGITS.test(v)) {
    // Up to 15 digits a double holds it exactly.
    if (v.length <= 15) return Number(v);
    n = BigInt(v);
  } else return undefined;
  if (n < INT8_MIN || n > INT8_MAX) return undefined;
  return Number.isSafeInteger(Number(n)) ? Number(n) : n;
}

function smallInteger(bits: 16 | 32): Pick<ElementType, "prepare" | "size" | "write"> {
  const limit = 2 ** (bits - 1);
  return {
    prepare(v) {
      const n = int64Of(v);
      return typeof n === "number" && n >= -limit && n < limit ? n : undefined;
    },
    size: () => bits / 8,
    write: (p, out, at) => (bits === 16 ? out.writeInt16BE(p as number, at) : out.writeInt32BE(p as number, at)),
  };
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** The number in `s` at `i`, `n` digits long; -1 unless all are digits. */
function digitsAt(s: string, i: number, n: number): number {
  let x = 0;
  for (let k = i; k < i + n; k++) {
    const c = s.charCodeAt(k) - 48;
    if (c < 0 || c > 9) return -1;
    x = x * 10 + c;
  }
  return x;
}

/** Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil). */
function daysFromCivil(y: number, m: number, d: number): number {
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1;
  return era * 146_097 + yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy - 719_468;
}

/**
 * Unix ms of exactly what `Date.prototype.toISOString` makes for years
 * 0001-9999 (`2026-12-07T00:00:00.000Z`), a valid date and time; undefined
 * for any other text (PostgreSQL has no year 0: its text is refused
 * there). Read by hand: Date.parse and a regex took several times as long.
 */
function isoMs(s: string): number | undefined {
  if (s.length !== 24) return undefined;
  // - - T : : . Z
  if (s.charCodeAt(4) !== 45 || s.charCodeAt(7) !== 45 || s.charCodeAt(10) !== 84 || s.charCodeAt(13) !== 58) return undefined;
  if (s.charCodeAt(16) !== 58 || s.charCodeAt(19) !== 46 || s.charCodeAt(23) !== 90) return undefined;
  const y = digitsAt(s, 0, 4);
  const mo = digitsAt(s, 5, 2);
  const day = digitsAt(s, 8, 2);
  const h = digitsAt(s, 11, 2);
  const mi = digitsAt(s, 14, 2);
  const se = digitsAt(s, 17, 2);
  const ms = digitsAt(s, 20, 3);
  if (y < 1 || mo < 1 || mo > 12 || h < 0 || h > 23 || mi < 0 || mi > 59 || se < 0 || se > 59 || ms < 0) return undefined;
  const leap = mo === 2 && y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  if (day < 1 || day > DAYS_IN_MONTH[mo - 1]! + (leap ? 1 : 0)) return undefined;
  return daysFromCivil(y, mo, day) * 86_400_000 + h * 3_600_000 + mi * 60_000 + se * 1000 + ms;
}

const timestamptz: Pick<ElementType, "prepare" | "size" | "write"> = {
  prepare(v) {
    const ms = v instanceof Date ? v.getTime() : typeof v === "string" ? isoMs(v) : undefined;
    if (ms === undefined || !Number.isFinite(ms)) return undefined;
    const micros = (ms - PG_EPOCH_MS) * 1000;
    return Number.isSafeInteger(micros) ? micros : BigInt(ms - PG_EPOCH_MS) * 1000n;
  },
  size: () => 8,
  write: (p, out, at) => writeInt64(p as number | bigint, out, at),
};

const text: Pick<ElementType, "prepare" | "size" | "write"> = {
  // As `pg` would send them: a number or bigint as its digits.
  prepare: (v) => (typeof v === "string" ? v : typeof v === "number" || typeof v === "bigint" ? String(v) : undefined),
  size: (p) => Buffer.byteLength(p as string, "utf8"),
  write: (p, out, at) => at + out.write(p as string, at, "utf8"),
};

const int8: Pick<ElementType, "prepare" | "size" | "write"> = {
  prepare: int64Of,
  size: () => 8,
  write: (p, out, at) => writeInt64(p as number | bigint, out, at),
};

/** The array casts encoded, by the name the store's SQL uses. */
const TYPES: Record<string, ElementType> = {
  text: { oid: 25, ...text },
  bigint: { oid: 20, ...int8 },
  int8: { oid: 20, ...int8 },
  integer: { oid: 23, ...smallInteger(32) },
  int4: { oid: 23, ...smallInteger(32) },
  smallint: { oid: 21, ...smallInteger(16) },
  int2: { oid: 21, ...smallInteger(16) },
  timestamptz: { oid: 1184, ...timestamptz },
};

/**
 * The element type of each parameter (index 0 is `$1`) that `sql` uses
 * only as `$n::<type>[]` with one of the types above; undefined for any
 * other.
 */
export function arrayParamTypes(sql: string): (ElementType | undefined)[] {
  const seen = new Map<number, ElementType | null>();
  for (const m of sql.matchAll(/\$(\d+)(?:::(\w+)\[\])?/g)) {
    const n = Number(m[1]);
    const t = m[2] === undefined ? undefined : TYPES[m[2]];
    const before = seen.get(n);
    // Any use without a known array cast, or with another one, rules it out.
    seen.set(n, t === undefined || (before !== undefined && before !== t) ? null : t);
  }
  const out: (ElementType | undefined)[] = [];
  for (const [n, t] of seen) out[n - 1] = t ?? undefined;
  return out;
}

/**
 * `values` in PostgreSQL's binary array format (array_send's) with element
 * type `type`, or undefined when an element has no binary form here.
 */
export function encodeArray(type: ElementType, values: readonly unknown[]): Buffer | undefined {
  const prepared: (number | bigint | string | null)[] = new Array(values.length);
  const sizes: number[] = new Array(values.length);
  let size = values.length === 0 ? 12 : 20;
  let nulls = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) {
      nulls = 1;
      prepared[i] = null;
      sizes[i] = 0;
    } else {
      const p = type.prepare(v);
      if (p === undefined) return undefined;
      prepared[i] = p;
      sizes[i] = type.size(p);
    }
    size += 4 + sizes[i]!;
  }
  // array_send's layout: dimensions, has-nulls flag, element type, then
  // each dimension's length and lower bound, then each element's length
  // (-1: NULL) and bytes. An empty array has no dimensions.
  const out = Buffer.allocUnsafe(size);
  let o = out.writeInt32BE(values.length === 0 ? 0 : 1, 0);
  o = out.writeInt32BE(nulls, o);
  o = out.writeInt32BE(type.oid, o);
  if (values.length > 0) {
    o = out.writeInt32BE(values.length, o);
    o = out.writeInt32BE(1, o);
  }
  for (let i = 0; i < prepared.length; i++) {
    const p = prepared[i];
    if (p === null || p === undefined) {
      o = out.writeInt32BE(-1, o);
      continue;
    }
    o = out.writeInt32BE(sizes[i]!, o);
    o = type.write(p, out, o);
  }
  return out;
}

/**
 * Turns a statement's parameters into what `pg` sends: its array
 * parameters, as {@link arrayParamTypes} types them, in binary where
 * {@link encodeArray} can, the rest as they are. `types` is
 * `arrayParamTypes(sql)` (callers cache it per statement text).
 */
export function withBinaryArrays(types: readonly (ElementType | undefined)[], params: readonly unknown[]): unknown[] {
  let out: unknown[] | undefined;
  for (let i = 0; i < params.length; i++) {
    const t = types[i];
    const v = params[i];
    if (t === undefined || !Array.isArray(v)) continue;
    const b = encodeArray(t, v);
    if (b === undefined) continue;
    out ??= [...params];
    out[i] = b;
  }
  return out ?? (params as unknown[]);
}
