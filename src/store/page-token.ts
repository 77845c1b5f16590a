import { Code, ConnectError } from "@connectrpc/connect";

/**
 * An opaque page token: the keyset position of a page's last row, as
 * base64url JSON. Opaque to clients, so the position can change shape
 * without an API change.
 */
export function pageToken(position: unknown): string {
  return Buffer.from(JSON.stringify(position)).toString("base64url");
}

/**
 * What a field of a position holds: a JS integer in the range of times
 * from year 1 to 9999 in milliseconds (a time, or a small count), a string
 * (an id), or an int64 as decimal text (a bigint column, compared in SQL).
 */
export type PositionField = "number" | "string" | "integer";

// Four-digit years: what toISOString writes past them ("+275760-…") is
// not a timestamp PostgreSQL reads.
const MIN_TIME_MS = -62135596800000; // 0001-01-01T00:00:00.000Z
const MAX_TIME_MS = 253402300799999; // 9999-12-31T23:59:59.999Z

/** The position a shape of {@link PositionField}s describes. */
export type Position<S extends Record<string, PositionField>> = { readonly [K in keyof S]: S[K] extends "number" ? number : string };

// Each check keeps what the query will do with the value from failing:
// a time past a Date's range, a NUL in a text parameter, an int64 overflow
// would each be INTERNAL, not the client's mistake.
const IS: Record<PositionField, (v: unknown) => boolean> = {
  number: (v) => Number.isSafeInteger(v) && (v as number) >= MIN_TIME_MS && (v as number) <= MAX_TIME_MS,
  string: (v) => typeof v === "string" && !v.includes("\u0000"),
  integer: (v) => typeof v === "string" && /^-?\d{1,19}$/.test(v) && BigInt(v) >= -(2n ** 63n) && BigInt(v) < 2n ** 63n,
};

/**
 * The position in a {@link pageToken}, checked against `shape`; undefined
 * for "" (the first page). Anything else, including a token that decodes
 * to the wrong fields, is INVALID_ARGUMENT naming `page_token`: a forged
 * token never reaches a query.
 */
export function readPageToken<S extends Record<string, PositionField>>(token: string, shape: S): Position<S> | undefined {
  if (token === "") return undefined;
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    v = undefined;
  }
  const ok = typeof v === "object" && v !== null && Object.entries(shape).every(([k, kind]) => IS[kind]((v as Record<string, unknown>)[k]));
  if (!ok) throw new ConnectError("page_token: not a token this server issued", Code.InvalidArgument);
  return v as Position<S>;
}
