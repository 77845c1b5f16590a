import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { WardenClients } from "../client/create-warden-client.js";
import type { FlagSpec, ParsedFlags } from "./parse-command-line.js";

/** Exit code of success, and of an ALLOW decision. */
export const EXIT_OK = 0;
/** Exit code of every failure: bad input, server error, unreachable server. */
export const EXIT_ERROR = 1;
/**
 * Exit code of a DENY or NEEDS_APPROVAL decision. It is an answer, not an
 * error (nothing goes to stderr), but scripts need to branch on it.
 */
export const EXIT_NOT_ALLOWED = 2;

/** WardenClients are the Connect clients of the services (the TypeScript client's). */
export type { WardenClients };

/** CommandContext is what a command's `run` gets: its input and its outputs. */
export interface CommandContext {
  readonly flags: ParsedFlags;
  /** Positional arguments, already checked against the command's `args`. */
  readonly args: readonly string[];
  /** Writes a line (or block) to stdout. */
  print(text: string): void;
  /** Writes `warden: warning: <text>` to stderr: something the user should know, not a failure. */
  warn(text: string): void;
  /**
   * Prints `message` as proto3 JSON when `--json` was given, else the text
   * from `text()` (only built when needed).
   */
  output<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, text: () => string): void;
  /** The service clients; created on first use, so local errors never need a server. */
  clients(): WardenClients;
  /** The environment (for commands that read settings from it, like `keys bootstrap`). */
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** CommandSpec is one subcommand: its help and its implementation. */
export interface CommandSpec {
  /** Words after `warden`, e.g. "sessions create". */
  readonly name: string;
  /** Names of the positional arguments, e.g. ["SESSION_ID"]. */
  readonly args: readonly string[];
  /** One line for the command list. */
  readonly summary: string;
  /** More help text, shown by `warden <command> --help`. */
  readonly notes?: string;
  /** Every flag the command accepts, except --help. */
  readonly flags: readonly FlagSpec[];
  /** Runs the command and returns its exit code. */
  run(ctx: CommandContext): Promise<number>;
}

/** The default control-plane address when neither --server nor WARDEN_SERVER is set. */
export const DEFAULT_SERVER = "http://127.0.0.1:8080";

/** `--server`, accepted by every client command. */
export const SERVER_FLAG: FlagSpec = {
  name: "server",
  type: "string",
  value: "URL",
  description: `control plane address (env WARDEN_SERVER; default ${DEFAULT_SERVER})`,
};

/**
 * `--api-key`, accepted by every client command: sent as `authorization:
 * Bearer` on every call. The environment variable is the better way: a
 * flag shows in the process list.
 */
export const API_KEY_FLAG: FlagSpec = {
  name: "api-key",
  type: "string",
  value: "KEY",
  description: "API key sent on every call (env WARDEN_API_KEY, which keeps it out of the process list)",
};

/** `--json`, accepted by every command that prints a response. */
export const JSON_FLAG: FlagSpec = { name: "json", type: "boolean", description: "print the response as proto3 JSON" };

/** `--help`, accepted by every command. */
export const HELP_FLAG: FlagSpec = { name: "help", type: "boolean", short: "h", description: "show this help" };

/** `--idempotency-key`, for every mutating call that has one. */
export const IDEMPOTENCY_FLAG: FlagSpec = {
  name: "idempotency-key",
  type: "string",
  value: "KEY",
  description: "retries with the same key and request return the first answer",
};

/** The flags of a client command that prints a response. */
export const CLIENT_FLAGS: readonly FlagSpec[] = [SERVER_FLAG, API_KEY_FLAG, JSON_FLAG];
