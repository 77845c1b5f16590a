import { createHash } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { canonicalJson } from "../audit/canonical-json.js";

/**
 * What a list request asks for besides where its page starts: every
 * parameter but page_size and page_token, keyed by its field name as the
 * API spells it (`agent_id`, `filter.types`: the refusal names them), with
 * the values the query uses, normalized as it reads them (a set sorted, a
 * time as the instant compared). AIP-158: a token is only good for the
 * query that made it; page_size may change from page to page.
 */
export type PageQuery = Readonly<Record<string, unknown>>;

/**
 * A short hash of a {@link PageQuery}: 8 bytes of SHA-256 of its canonical
 * JSON, base64url. Catches a token carried over to another filter, not a
 * forger: a client can write any token it likes, and gets what it asked
 * for; the position checks keep that from reaching a query.
 */
function queryHash(query: PageQuery): string {
  return createHash("sha256").update(canonicalJson(query)).digest().subarray(0, 8).toString("base64url");
}

const QUERY_HASH = /^[A-Za-z0-9_-]{11}$/;

/**
 * An opaque page token: the keyset position of a page's last row and the
 * hash of the query that listed it (`q`, beside the position's fields, so
 * a server from before the hash still reads the position), as base64url
 * JSON. Opaque to clients, so the position can change shape without an
 * API change.
 */
export function pageToken(position: Readonly<Record<string, unknown>> & { readonly q?: never }, query: PageQuery): string {
  return Buffer.from(JSON.stringify({ ...position, q: queryHash(query) })).toString("base64url");
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
 * token never reaches a query. So is a token made for another `query`
 * (another filter, or another list): its position means nothing here, and
 * would skip or repeat rows.
 */
export function readPageToken<S extends Record<string, PositionField>>(token: string, shape: S, query: PageQuery): Position<S> | undefined {
  if (token === "") return undefined;
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    v = undefined;
  }
  const fields = v as Record<string, unknown>;
  const ok =
    typeof v === "object" &&
    v !== null &&
    Object.entries(shape).every(([k, kind]) => IS[kind](fields[k])) &&
    (fields.q === undefined || (typeof fields.q === "string" && QUERY_HASH.test(fields.q)));
  if (!ok) throw new ConnectError("page_token: not a token this server issued", Code.InvalidArgument);
  const { q, ...position } = fields;
  // A token without `q` was issued before tokens carried one (a replica
  // not yet upgraded, mid-listing): its query is unknown, so it is read
  // as it always was rather than failing a listing that is on track.
  if (q !== undefined && q !== queryHash(query)) throw new ConnectError(`page_token: was issued for a different query (${sameAs(query)})`, Code.InvalidArgument);
  return position as Position<S>;
}

/** What a client must keep from page to page, for the refusal. */
function sameAs(query: PageQuery): string {
  const names = Object.keys(query);
  if (names.length === 0) return "pass the next_page_token of this same list";
  const list = names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  return `${list} must be the same as on the first page; only page_size may change`;
}
