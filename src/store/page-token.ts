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
 * What a field of a position holds: a JS number, a string, or an integer
 * as decimal text (a bigint column, compared in SQL).
 */
export type PositionField = "number" | "string" | "integer";

/** The position a shape of {@link PositionField}s describes. */
export type Position<S extends Record<string, PositionField>> = { readonly [K in keyof S]: S[K] extends "number" ? number : string };

const IS: Record<PositionField, (v: unknown) => boolean> = {
  number: (v) => typeof v === "number" && Number.isFinite(v),
  string: (v) => typeof v === "string",
  integer: (v) => typeof v === "string" && /^-?\d{1,19}$/.test(v),
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
