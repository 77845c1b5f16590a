import { Code, ConnectError } from "@connectrpc/connect";
import { MalformedCredentialError } from "../client/create-warden-client.js";
import { CliError } from "./cli-error.js";
import { shownServer } from "./flags.js";
import { parseArgsError } from "./parse-command-line.js";

/**
 * Names a Connect code the way the Connect protocol spells it on the wire:
 * `invalid_argument`, `not_found`. (connect-es has this as a private helper.)
 */
export function codeName(code: Code): string {
  const name = Code[code];
  if (typeof name !== "string") return String(code);
  return name[0]!.toLowerCase() + name.slice(1).replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function oneLine(text: string): string {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .join("; ");
}

/**
 * Describes any error as the one line that follows `warden: ` on stderr.
 * A ConnectError shows its code name and raw message (without the
 * bracketed code connect-es puts into `message`); when the server could not
 * be reached, the line says which address was tried and how to change it.
 */
export function describeError(err: unknown, server?: string): string {
  if (err instanceof CliError) return oneLine(err.message);
  // The CLI's only credential is its API key: name where it came from.
  if (err instanceof MalformedCredentialError) {
    return `--api-key (or WARDEN_API_KEY): not a usable API key: only visible ASCII characters may appear in one, and ${err.reason}`;
  }
  if (err instanceof ConnectError) {
    const text = `${codeName(err.code)}: ${oneLine(err.rawMessage)}`;
    if (err.code === Code.Unavailable && server !== undefined) {
      return `${text} (is warden serve running at ${shownServer(server)}? set --server or WARDEN_SERVER)`;
    }
    return text;
  }
  const mapped = parseArgsError(err);
  if (mapped instanceof Error) return oneLine(mapped.message) || mapped.name;
  return oneLine(String(err));
}
