import { readFileSync } from "node:fs";
import { toJsonString } from "@bufbuild/protobuf";
import type { Transport } from "@connectrpc/connect";
import { CliError } from "./cli-error.js";
import { createServiceClients, withBearer } from "../client/create-warden-client.js";
import { createCliTransport } from "./clients.js";
import { CLIENT_FLAGS, DEFAULT_SERVER, EXIT_ERROR, EXIT_OK, HELP_FLAG, type CommandContext, type CommandSpec, type WardenClients } from "./command.js";
import { ACTION_COMMANDS } from "./commands/actions.js";
import { AGENT_COMMANDS } from "./commands/agents.js";
import { KEY_COMMANDS } from "./commands/keys.js";
import { SESSION_COMMANDS } from "./commands/sessions.js";
import { WEBHOOK_COMMANDS } from "./commands/webhooks.js";
import { EVENT_COMMANDS } from "./commands/events.js";
import { APPROVAL_COMMANDS } from "./commands/approvals.js";
import { AUDIT_COMMANDS } from "./commands/audit.js";
import { describeError } from "./describe-error.js";
import { parseServerUrl } from "./flags.js";
import { parseCommandLine } from "./parse-command-line.js";
import { formatCommandHelp, formatMainHelp, usageLine } from "./usage.js";

/** Every client command of the CLI, in the order help lists them. */
export const COMMANDS: readonly CommandSpec[] = [...SESSION_COMMANDS, ...AGENT_COMMANDS, ...ACTION_COMMANDS, ...KEY_COMMANDS, ...WEBHOOK_COMMANDS, ...EVENT_COMMANDS, ...APPROVAL_COMMANDS, ...AUDIT_COMMANDS];

/** The first words of two-word commands ("sessions" of "sessions create"). */
const GROUPS = [...new Set(COMMANDS.filter((c) => c.name.includes(" ")).map((c) => c.name.split(" ")[0]!))];

/** Where runCli reads and writes; injectable so tests need no process. */
export interface CliOptions {
  /** Receives each block of standard output (without the trailing newline). */
  readonly stdout?: (text: string) => void;
  /** Receives each line of standard error (without the trailing newline). */
  readonly stderr?: (text: string) => void;
  /** Environment; defaults to process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /**
   * Creates the transport to the control plane at `baseUrl`. Defaults to
   * the Connect protocol over HTTP/1.1; tests pass an in-memory router.
   */
  readonly transport?: (baseUrl: string) => Transport;
}

function wantsHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: string };
  return pkg.version ?? "unknown";
}

/**
 * The command line with client flags given before the command (`warden
 * --server URL sessions list`, as many CLIs take them) moved after it,
 * where the command's own flags are parsed; given twice, the command's
 * parser says so. Before `--`, for a value that looks like a flag.
 */
function hoistClientFlags(argv: readonly string[]): readonly string[] {
  const lead: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    const f = CLIENT_FLAGS.find((c) => a === `--${c.name}` || a.startsWith(`--${c.name}=`));
    if (f === undefined) break;
    lead.push(a);
    // A string flag's value is the next word unless given with "=".
    if (f.type === "string" && !a.includes("=") && i + 1 < argv.length) lead.push(argv[++i]!);
  }
  if (lead.length === 0) return argv;
  const rest = argv.slice(i);
  const end = rest.indexOf("--");
  return end === -1 ? [...rest, ...lead] : [...rest.slice(0, end), ...lead, ...rest.slice(end)];
}

/**
 * Runs one `warden` command line and returns its exit code: 0 on success
 * and ALLOW, 2 on DENY or NEEDS_APPROVAL, 1 on any error (reported as one
 * `warden: …` line on stderr). It never calls process.exit, so `warden
 * serve` keeps running after it returns.
 */
export async function runCli(argv: readonly string[], options: CliOptions = {}): Promise<number> {
  const stdout = options.stdout ?? ((text: string) => void process.stdout.write(`${text}\n`));
  const stderr = options.stderr ?? ((text: string) => void process.stderr.write(`${text}\n`));
  const env = options.env ?? process.env;
  let server: string | undefined;
  try {
    const [first, ...rest] = hoistClientFlags(argv);
    if (first === "serve") {
      // The server is loaded only for `serve`, so client commands start fast
      // and never load the store or its drivers.
      const { serveCommand } = await import("../server/serve-command.js");
      await serveCommand(rest);
      return EXIT_OK;
    }
    if (first === "control-plane") {
      const { controlPlaneCommand } = await import("../control-plane/control-plane-command.js");
      await controlPlaneCommand(rest);
      return EXIT_OK;
    }
    if (first === "sidecar") {
      // The sidecar never loads the store or its drivers either.
      const { sidecarCommand } = await import("../sidecar/sidecar-command.js");
      await sidecarCommand(rest);
      return EXIT_OK;
    }
    if (first === undefined || first === "--help" || first === "-h") {
      stdout(formatMainHelp(COMMANDS));
      return EXIT_OK;
    }
    if (first === "help") return runCli([...rest, "--help"], options);
    if (first === "--version" || first === "-v") {
      stdout(version());
      return EXIT_OK;
    }
    let name = first;
    let args = rest;
    if (GROUPS.includes(first)) {
      const sub = rest[0];
      if (sub === undefined || sub.startsWith("-")) {
        if (wantsHelp(rest)) {
          stdout(formatMainHelp(COMMANDS, first));
          return EXIT_OK;
        }
        const subs = COMMANDS.filter((c) => c.name.startsWith(`${first} `)).map((c) => c.name.slice(first.length + 1));
        throw new CliError(`${first} needs a command: ${subs.join(", ")} (see warden ${first} --help)`);
      }
      name = `${first} ${sub}`;
      args = rest.slice(1);
    }
    const spec = COMMANDS.find((c) => c.name === name);
    if (spec === undefined) {
      const group = GROUPS.includes(first) ? first : "";
      throw new CliError(`unknown command "${name}" (see warden ${group ? `${group} ` : ""}--help)`);
    }
    if (wantsHelp(args)) {
      stdout(formatCommandHelp(spec));
      return EXIT_OK;
    }
    const { flags, positionals } = parseCommandLine(spec.name, [...spec.flags, HELP_FLAG], args);
    if (positionals.length < spec.args.length) {
      throw new CliError(`${spec.name}: missing ${spec.args.slice(positionals.length).join(" ")} (usage: ${usageLine(spec)})`);
    }
    if (positionals.length > spec.args.length) {
      throw new CliError(`${spec.name}: unexpected argument "${positionals[spec.args.length]}" (usage: ${usageLine(spec)})`);
    }
    for (const [i, value] of positionals.entries()) {
      if (value.trim() === "") throw new CliError(`${spec.name}: ${spec.args[i]} must not be empty`);
    }

    const flagServer = flags.string("server");
    server = flagServer ?? env.WARDEN_SERVER ?? DEFAULT_SERVER;
    const serverSource = flagServer !== undefined ? "--server" : env.WARDEN_SERVER !== undefined ? "WARDEN_SERVER" : "default server";
    let clients: WardenClients | undefined;
    const json = flags.boolean("json");
    const ctx: CommandContext = {
      flags,
      args: positionals,
      env,
      print: stdout,
      warn: (text) => stderr(`warden: warning: ${text}`),
      output(schema, message, text) {
        stdout(json ? toJsonString(schema, message, { prettySpaces: 2 }) : text());
      },
      clients() {
        if (clients === undefined) {
          const baseUrl = parseServerUrl(serverSource, server!);
          // Sent on every call when given; a server without --require-auth ignores it.
          const apiKey = flags.string("api-key") ?? (env.WARDEN_API_KEY || undefined);
          clients = createServiceClients(withBearer((options.transport ?? createCliTransport)(baseUrl), apiKey));
        }
        return clients;
      },
    };
    return await spec.run(ctx);
  } catch (err) {
    stderr(`warden: ${describeError(err, server)}`);
    return EXIT_ERROR;
  }
}
