import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The credential of an `authorization: Bearer <credential>` request header,
 * or undefined when there is no such header. Any other scheme is refused
 * with UNAUTHENTICATED; the error never repeats the header.
 */
export function bearerToken(headers: Headers): string | undefined {
  const value = headers.get("authorization");
  if (value === null) return undefined;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(value);
  if (m === null) throw new ConnectError('authorization: expected "Bearer <credential>"', Code.Unauthenticated);
  return m[1]!;
}
