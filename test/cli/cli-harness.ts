import type { DescService } from "@bufbuild/protobuf";
import { createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import { AgentService } from "../../src/gen/warden/v1/agent_service_pb.js";
import { ApprovalService } from "../../src/gen/warden/v1/approval_service_pb.js";
import { PolicyService } from "../../src/gen/warden/v1/policy_service_pb.js";
import { SessionService } from "../../src/gen/warden/v1/session_service_pb.js";
import { WebhookService } from "../../src/gen/warden/v1/webhook_service_pb.js";
import { parseCommandLine, type ParsedFlags } from "../../src/cli/parse-command-line.js";
import { COMMANDS, runCli } from "../../src/cli/run-cli.js";

/** One request the in-memory server received. */
export interface Call {
  readonly method: string;
  readonly request: unknown;
  readonly baseUrl: string;
}

/** Service implementations of the in-memory server; unimplemented methods answer `unimplemented`. */
export interface FakeServer {
  readonly sessions?: Partial<ServiceImpl<typeof SessionService>>;
  readonly policy?: Partial<ServiceImpl<typeof PolicyService>>;
  readonly agents?: Partial<ServiceImpl<typeof AgentService>>;
  readonly webhooks?: Partial<ServiceImpl<typeof WebhookService>>;
  readonly approvals?: Partial<ServiceImpl<typeof ApprovalService>>;
}

/** What a command line did. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly calls: readonly Call[];
}

function recorded<T extends DescService>(impl: Partial<ServiceImpl<T>>, calls: Call[], baseUrl: string): Partial<ServiceImpl<T>> {
  const out: Record<string, unknown> = {};
  for (const [method, fn] of Object.entries(impl)) {
    out[method] = (req: unknown, ctx: unknown) => {
      calls.push({ method, request: req, baseUrl });
      return (fn as (r: unknown, c: unknown) => unknown)(req, ctx);
    };
  }
  return out as Partial<ServiceImpl<T>>;
}

/**
 * Runs a warden command line against an in-memory Connect router (the
 * real Connect client stack, no sockets, no Warden server), recording
 * every request it receives.
 */
export async function runWarden(argv: string[], server: FakeServer = {}, env: Record<string, string> = {}): Promise<RunResult> {
  const out: string[] = [];
  const err: string[] = [];
  const calls: Call[] = [];
  const code = await runCli(argv, {
    stdout: (t) => out.push(t),
    stderr: (t) => err.push(t),
    env,
    transport: (baseUrl) =>
      createRouterTransport(({ service }) => {
        service(SessionService, recorded(server.sessions ?? {}, calls, baseUrl));
        service(PolicyService, recorded(server.policy ?? {}, calls, baseUrl));
        service(AgentService, recorded(server.agents ?? {}, calls, baseUrl));
        service(WebhookService, recorded(server.webhooks ?? {}, calls, baseUrl));
        service(ApprovalService, recorded(server.approvals ?? {}, calls, baseUrl));
      }),
  });
  return { code, stdout: out.join("\n"), stderr: err.join("\n"), calls };
}

/** Parses `argv` with the flags of the named command, as runCli would. */
export function flagsOf(command: string, argv: string[]): ParsedFlags {
  const spec = COMMANDS.find((c) => c.name === command);
  if (spec === undefined) throw new Error(`no command ${command}`);
  return parseCommandLine(command, spec.flags, argv).flags;
}
