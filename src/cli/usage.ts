import { DEFAULT_SERVER, HELP_FLAG, type CommandSpec } from "./command.js";
import type { FlagSpec } from "./parse-command-line.js";
import { POLICY_FLAGS } from "./policy-flags.js";

const EXIT_CODES = `Exit codes:
  0  success; for authorize and check: the answer is ALLOW
  1  error: bad flag or value, server error, server unreachable (one line on stderr: "warden: …")
  2  authorize or check answered DENY or NEEDS_APPROVAL (printed on stdout; not an error)`;

const ENVIRONMENT = `Environment:
  WARDEN_SERVER  control plane address for client commands (default ${DEFAULT_SERVER}); --server wins`;

function flagLabel(f: FlagSpec): string {
  const long = `--${f.name}${f.type === "string" ? ` ${f.value ?? "VALUE"}` : ""}`;
  return f.short ? `-${f.short}, ${long}` : long;
}

function flagLines(flags: readonly FlagSpec[]): string {
  const labels = flags.map(flagLabel);
  const width = Math.max(...labels.map((l) => l.length));
  return flags.map((f, i) => `  ${labels[i]!.padEnd(width)}  ${f.description}${f.multiple && !f.description.includes("repeatable") ? " (repeatable)" : ""}`).join("\n");
}

/** The usage line of a command: `warden sessions get SESSION_ID [flags]`. */
export function usageLine(spec: CommandSpec): string {
  const required = spec.flags.filter((f) => f.required).map(flagLabel);
  return ["warden", spec.name, ...spec.args, ...required, "[flags]"].join(" ");
}

/**
 * The help of one command (`warden <command> --help`): usage, notes, and
 * every flag it accepts with a description, then the environment and exit
 * codes.
 */
export function formatCommandHelp(spec: CommandSpec): string {
  return [
    `Usage: ${usageLine(spec)}`,
    "",
    `${spec.summary[0]!.toUpperCase()}${spec.summary.slice(1)}.`,
    ...(spec.notes ? ["", spec.notes] : []),
    "",
    "Flags:",
    flagLines([...spec.flags, HELP_FLAG]),
    "",
    ENVIRONMENT,
    "",
    EXIT_CODES,
  ].join("\n");
}

function wrap(words: readonly string[], indent: string, width: number): string[] {
  const lines: string[] = [];
  let line = indent;
  for (const w of words) {
    if (line.length > indent.length && line.length + 1 + w.length > width) {
      lines.push(line);
      line = indent;
    }
    line += line.length > indent.length ? ` ${w}` : w;
  }
  if (line.length > indent.length) lines.push(line);
  return lines;
}

/**
 * The help of a command group (`warden sessions --help`) or of the whole
 * CLI (`warden --help`): every command with its arguments and every flag.
 * The policy flags, shared by three commands, are listed once.
 */
export function formatMainHelp(commands: readonly CommandSpec[], group?: string): string {
  const shown = group === undefined ? commands : commands.filter((c) => c.name.startsWith(`${group} `));
  // By identity, not name: authorize has a --currency of its own.
  const policyFlags = new Set<FlagSpec>(POLICY_FLAGS);
  const lines: string[] = [];
  for (const c of shown) {
    lines.push(`  ${[c.name, ...c.args].join(" ").padEnd(40)}  ${c.summary}`);
    const hasPolicy = c.flags.some((f) => policyFlags.has(f));
    const flags = c.flags
      .filter((f) => !policyFlags.has(f))
      .map((f) => (f.required ? flagLabel(f) : `[${flagLabel(f)}]${f.multiple ? "…" : ""}`));
    if (hasPolicy) flags.push("[policy flags]");
    lines.push(...wrap(flags, "      ", 100));
  }
  const head =
    group === undefined
      ? [
          "Usage: warden <command> [arguments] [flags]",
          "",
          "Warden keeps AI agents inside the limits a person gave them: sessions with budgets,",
          "and an allow / deny / needs-approval answer before every action.",
          "",
          "Commands:",
          `  ${"serve".padEnd(40)}  run the control plane and decision API (flags: warden serve --help)`,
          `  ${"control-plane".padEnd(40)}  run the control plane of a cluster (flags: warden control-plane --help)`,
          `  ${"sidecar".padEnd(40)}  run the sidecar beside one agent (flags: warden sidecar --help)`,
        ]
      : [`Usage: warden ${group} <command> [arguments] [flags]`, "", "Commands:"];
  const policy = shown.some((c) => c.flags.some((f) => policyFlags.has(f)))
    ? ["", "Policy flags (sessions create, sessions fork, agents set-policy):", flagLines(POLICY_FLAGS)]
    : [];
  return [
    ...head,
    ...lines,
    ...policy,
    "",
    "Money is given in decimal major units (12.50) and kept exact; durations as 90s, 15m, 1h, 7d, 1h30m;",
    "times as ISO 8601 with a zone (2025-07-01T18:00:00Z). --json prints responses as proto3 JSON.",
    `Every command also takes ${flagLabel(HELP_FLAG)}; "warden <command> --help" describes each flag.`,
    "",
    ENVIRONMENT,
    "",
    EXIT_CODES,
  ].join("\n");
}
