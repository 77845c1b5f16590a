import { Code, ConnectError } from "@connectrpc/connect";

/**
 * An opaque page token: the keyset position of a page's last row, as
 * base64url JSON. Opaque to clients, so the position can change shape
 * without an API change.
 */
export function pageToken(position: unknown): string {
  return Buffer.from(JSON.stringify(position)).toString("base64url");
}

/** The position in a {@link pageToken}; undefined for "" (the first page). */
export function readPageToken<T>(token: string): T | undefined {
  if (token === "") return undefined;
  try {
    return JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as T;
  } catch {
    throw new ConnectError("page_token: not a token this server issued", Code.InvalidArgument);
  }
}
