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

/** An element type: its OID, and its binary form of a value (undefined: none here). */
export interface ElementType {
  readonly oid: number;
  encode(v: unknown): Buffer | undefined;
}

const INT8_MIN = -(2n ** 63n);
const INT8_MAX = 2n ** 63n - 1n;
const DIGITS = /^-?\d+$/;
/** What `Date.prototype.toISOString` makes (UTC, milliseconds). */
const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
/** PostgreSQL's timestamp epoch, 2000-01-01T00:00:00Z, in Unix ms. */
const PG_EPOCH_MS = 946_684_800_000;

function integer(bytes: 2 | 4 | 8): ElementType["encode"] {
  return (v) => {
    let n: bigint;
    if (typeof v === "bigint") n = v;
    else if (typeof v === "number" && Number.isSafeInteger(v)) n = BigInt(v);
    else if (typeof v === "string" && DIGITS.test(v)) n = BigInt(v);
    else return undefined;
    const b = Buffer.allocUnsafe(bytes);
    if (bytes === 8) {
      if (n < INT8_MIN || n > INT8_MAX) return undefined;
      b.writeBigInt64BE(n);
    } else {
      const limit = bytes === 4 ? 2 ** 31 : 2 ** 15;
      if (n < -BigInt(limit) || n >= BigInt(limit)) return undefined;
      if (bytes === 4) b.writeInt32BE(Number(n));
      else b.writeInt16BE(Number(n));
    }
    return b;
  };
}

function timestamptz(v: unknown): Buffer | undefined {
  let ms: number;
  if (v instanceof Date) ms = v.getTime();
  else if (typeof v === "string" && ISO_MS.test(v)) ms = Date.parse(v);
  else return undefined;
  if (!Number.isFinite(ms)) return undefined;
  const b = Buffer.allocUnsafe(8);
  b.writeBigInt64BE(BigInt(ms - PG_EPOCH_MS) * 1000n);
  return b;
}

function text(v: unknown): Buffer | undefined {
  // As `pg` would send them: a number or bigint as its digits.
  if (typeof v === "string") return Buffer.from(v, "utf8");
  if (typeof v === "number" || typeof v === "bigint") return Buffer.from(String(v), "utf8");
  return undefined;
}

/** The array casts encoded, by the name the store's SQL uses. */
const TYPES: Record<string, ElementType> = {
  text: { oid: 25, encode: text },
  bigint: { oid: 20, encode: integer(8) },
  int8: { oid: 20, encode: integer(8) },
  integer: { oid: 23, encode: integer(4) },
  int4: { oid: 23, encode: integer(4) },
  smallint: { oid: 21, encode: integer(2) },
  int2: { oid: 21, encode: integer(2) },
  timestamptz: { oid: 1184, encode: timestamptz },
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
  const parts: (Buffer | null)[] = [];
  let size = values.length === 0 ? 12 : 20;
  let nulls = 0;
  for (const v of values) {
    const b = v === null || v === undefined ? null : type.encode(v);
    if (b === undefined) return undefined;
    if (b === null) nulls = 1;
    size += 4 + (b?.length ?? 0);
    parts.push(b);
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
  for (const p of parts) {
    o = out.writeInt32BE(p === null ? -1 : p.length, o);
    if (p !== null) o += p.copy(out, o);
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
