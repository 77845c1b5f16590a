import { parseArgs } from "node:util";
import { CliError } from "./cli-error.js";

/** FlagSpec describes one flag: how parseArgs reads it and how help shows it. */
export interface FlagSpec {
  /** Long name without dashes, e.g. `max-per-day`. */
  readonly name: string;
  readonly type: "string" | "boolean";
  /** May be given more than once; the values are collected in order. */
  readonly multiple?: boolean;
  readonly short?: string;
  /** Must be given; help shows it without brackets. */
  readonly required?: boolean;
  /** Placeholder shown in help, e.g. `AMOUNT`. String flags only. */
  readonly value?: string;
  readonly description: string;
}

/** ParsedFlags gives typed access to the flag values of one command line. */
export class ParsedFlags {
  constructor(private readonly values: Readonly<Record<string, string | boolean | (string | boolean)[] | undefined>>) {}

  /** The value of a single-valued string flag, or undefined when absent. */
  string(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === "string" ? v : undefined;
  }

  /** The values of a repeatable string flag, in the order given. */
  strings(name: string): string[] {
    const v = this.values[name];
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : [];
  }

  /** Whether a boolean flag was given. */
  boolean(name: string): boolean {
    return this.values[name] === true;
  }

  /** Whether a flag of any kind was given. */
  has(name: string): boolean {
    const v = this.values[name];
    return v !== undefined && !(Array.isArray(v) && v.length === 0);
  }
}

/** The result of {@link parseCommandLine}. */
export interface CommandLine {
  readonly flags: ParsedFlags;
  readonly positionals: string[];
}

/**
 * Parses `argv` strictly against `specs` with `node:util` parseArgs, and
 * turns its multi-line errors into one line that names the flag and the
 * command (`command` is e.g. "sessions create", for the help hint).
 *
 * Beyond parseArgs it rejects a single-valued flag given twice: parseArgs
 * would keep the last one silently, which hides mistakes such as two
 * different `--max-per-day` values.
 */
export function parseCommandLine(command: string, specs: readonly FlagSpec[], argv: readonly string[]): CommandLine {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = {};
  for (const s of specs) {
    options[s.name] = { type: s.type, ...(s.multiple ? { multiple: true } : {}), ...(s.short ? { short: s.short } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: true, tokens: true });
  } catch (err) {
    throw parseArgsError(err, command);
  }
  const seen = new Set<string>();
  for (const token of parsed.tokens) {
    if (token.kind !== "option") continue;
    const spec = specs.find((s) => s.name === token.name);
    if (spec?.multiple) continue;
    if (seen.has(token.name)) throw new CliError(`--${token.name} given more than once`);
    seen.add(token.name);
  }
  for (const s of specs) {
    if (s.required && parsed.values[s.name] === undefined) throw new CliError(`--${s.name} is required`);
  }
  return { flags: new ParsedFlags(parsed.values), positionals: parsed.positionals };
}

/**
 * Rewrites a parseArgs error (code `ERR_PARSE_ARGS_*`) as a one-line
 * CliError; any other error is returned unchanged. Exported so that the
 * same wording is used for errors of commands that call parseArgs
 * themselves (`warden serve`).
 */
export function parseArgsError(err: unknown, command?: string): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS_")) return err;
  const message = (err as Error).message;
  const flag = /'(-[^' <]+)/.exec(message)?.[1] ?? "flag";
  const help = command ? ` (see warden ${command} --help)` : "";
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") return new CliError(`unknown flag ${flag}${help}`);
  if (message.includes("argument missing")) return new CliError(`${flag} needs a value`);
  if (message.includes("ambiguous")) {
    // parseArgs refuses values that start with "-" because they look like
    // the next flag; usually a value was forgotten.
    return new CliError(`${flag} needs a value (to give one that starts with "-", write ${flag}=VALUE)`);
  }
  if (message.includes("does not take an argument")) return new CliError(`${flag} takes no value`);
  return new CliError(message.split("\n")[0]!);
}
