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

/**
 * What makes `credential` unusable in a header, or undefined when nothing
 * does. Surrounding whitespace is no fault: `Headers` drops it.
 */
export function credentialFault(credential: string): string | undefined {
  const lead = /^[ \t\r\n]*/.exec(credential)![0].length;
  const rest = credential.slice(lead).replace(/[ \t\r\n]+$/, "");
  if (rest === "") return "it is blank";
  const bad = /[^\x21-\x7e]/.exec(rest);
  if (bad === null) return undefined;
  const c = bad[0];
  const what =
    c === "\n" || c === "\r" ? "a line break" : c === " " || c === "\t" ? "a space" : c < " " || c === "\x7f" ? "a control character" : "a non-ASCII character";
  return `it holds ${what} at character ${lead + bad.index + 1}`;
}
