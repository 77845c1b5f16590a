import { parseArgs } from "node:util";
import { redactUrl } from "./redact-url.js";

/** The three ways to run Warden (design.md §2). */
export type Role = "serve" | "control-plane" | "sidecar";

/** One flag of a role, with the environment variable that sets it too. */
export interface FlagSpec {
  /** Long flag name without dashes, e.g. "grpc-listen". */
  readonly name: string;
  /** Environment variable read when the flag is absent. */
  readonly env: string;
  /** Default when neither is given; undefined: unset (optional or required). */
  readonly default?: string;
  /** Set: the role refuses to start without it. */
  readonly required?: boolean;
  /** Placeholder of the value in help, e.g. "HOST:PORT". */
  readonly arg: string;
  /** The only values it takes; anything else is refused at start, naming the flag. */
  readonly choices?: readonly string[];
  readonly help: string;
}

/** Where PGlite keeps its data (and the audit key its file) unless told otherwise. */
export const DEFAULT_DATA_DIR = ".warden/data";

/** Default listeners. The control plane's differ so both fit on one machine. */
export const DEFAULT_LISTEN = {
  serve: { grpc: "127.0.0.1:50051", http: "127.0.0.1:8080" },
  sidecar: { grpc: "127.0.0.1:50051", http: "127.0.0.1:8080" },
  "control-plane": { grpc: "127.0.0.1:50052", http: "127.0.0.1:8081" },
} as const satisfies Record<Role, { grpc: string; http: string }>;

const listeners = (role: Role): FlagSpec[] => [
  {
    name: "grpc-listen",
    env: "WARDEN_GRPC_LISTEN",
    default: DEFAULT_LISTEN[role].grpc,
    arg: "HOST:PORT",
    help: "gRPC (@grpc/grpc-js) listener",
  },
  {
    name: "http-listen",
    env: "WARDEN_HTTP_LISTEN",
    default: DEFAULT_LISTEN[role].http,
    arg: "HOST:PORT",
    help: "Connect, gRPC-Web and gRPC over HTTP/2 or HTTP/1.1; also /metrics, /healthz, /readyz",
  },
  {
    name: "health-listen",
    env: "WARDEN_HEALTH_LISTEN",
    arg: "HOST:PORT",
    help: "optional extra listener with only grpc.health.v1, /healthz, /readyz and /metrics (for probes and scrapers when the main listeners stay on loopback)",
  },
];

const store: FlagSpec[] = [
  { name: "data-dir", env: "WARDEN_DATA_DIR", default: DEFAULT_DATA_DIR, arg: "DIR", help: "embedded PGlite data directory" },
  { name: "database-url", env: "DATABASE_URL", arg: "URL", help: "use this PostgreSQL server instead of PGlite" },
  {
    name: "sweep-interval",
    env: "WARDEN_SWEEP_INTERVAL_MS",
    default: "1000",
    arg: "MS",
    help: "how often holds, leases and sessions are expired",
  },
  {
    name: "webhook-interval",
    env: "WARDEN_WEBHOOK_INTERVAL_MS",
    default: "1000",
    arg: "MS",
    help: "how often due webhook deliveries are claimed and sent",
  },
  {
    name: "webhook-retry-period",
    env: "WARDEN_WEBHOOK_RETRY_PERIOD_MS",
    default: String(3 * 24 * 60 * 60 * 1000),
    arg: "MS",
    help: "how long after an event its failing delivery is retried (with exponential backoff) before it is abandoned and its endpoint disabled (default 3 days)",
  },
  {
    name: "audit-key",
    env: "WARDEN_AUDIT_KEY_FILE",
    arg: "FILE",
    help: "Ed25519 private JWK that signs audit checkpoints, created (mode 0600) when missing; kept out of the database on purpose; replicas share one (default <data-dir>/audit-signing-key.jwk)",
  },
  {
    name: "audit-checkpoint-interval",
    env: "WARDEN_AUDIT_CHECKPOINT_INTERVAL_MS",
    default: "60000",
    arg: "MS",
    help: "how often the heads of changed audit chains are signed in a checkpoint (also at shutdown)",
  },
  {
    name: "audit-retention",
    env: "WARDEN_AUDIT_RETENTION_MS",
    default: String(365 * 24 * 60 * 60 * 1000),
    arg: "MS",
    help: "how long after a session ended its audit records are kept, then removed under a signed checkpoint (0: forever; default 365 days; sessions and actions stay)",
  },
  {
    name: "idempotency-retention",
    env: "WARDEN_IDEMPOTENCY_RETENTION_MS",
    default: String(24 * 60 * 60 * 1000),
    arg: "MS",
    help: "how long after a session ended the first answers to its idempotency keys are kept, and a CreateSession key after it was used, then removed by the sweeper (0: forever; default 24 hours); a retry after that gets \"session has ended\", never a second charge (a CreateSession retry creates a new session)",
  },
];

const leaseGrace: FlagSpec = {
  name: "lease-reconcile-grace",
  env: "WARDEN_LEASE_RECONCILE_GRACE_MS",
  default: "10000",
  arg: "MS",
  help: "how long past its expiry a sidecar's unreleased lease waits for its last report before its unreported rest is written off as spent",
};

const common: FlagSpec[] = [
  {
    name: "shutdown-grace",
    env: "WARDEN_SHUTDOWN_GRACE_MS",
    default: "10000",
    arg: "MS",
    help: "how long in-flight calls may finish on SIGTERM",
  },
  {
    name: "log-level",
    env: "WARDEN_LOG_LEVEL",
    default: "info",
    arg: "LEVEL",
    choices: ["trace", "debug", "info", "warn", "error"],
    help: "trace|debug|info|warn|error",
  },
];

const sessionTokenTtl: FlagSpec = {
  name: "session-token-ttl",
  env: "WARDEN_SESSION_TOKEN_TTL_MS",
  default: String(30 * 24 * 60 * 60 * 1000),
  arg: "MS",
  help: "lifetime of the session tokens CreateSession and ForkSession return (independent of the session's own expiry; default 30 days)",
};

/**
 * Authentication flags of each role (src/auth). Listeners bind to loopback
 * unless told otherwise; these say who may call them when they do not.
 */
const AUTH_FLAGS: Record<Role, readonly FlagSpec[]> = {
  serve: [
    {
      name: "require-auth",
      env: "WARDEN_REQUIRE_AUTH",
      default: "false",
      arg: "true|false",
      help: "require API keys on admin calls and session tokens on PolicyService, as control plane and sidecar do (off: a loopback development server)",
    },
    sessionTokenTtl,
  ],
  "control-plane": [
    { name: "tls-cert-file", env: "WARDEN_TLS_CERT_FILE", arg: "FILE", help: "PEM certificate chain of the gRPC and Connect listeners; with --tls-key-file: TLS (HTTPS on the Connect listener)" },
    { name: "tls-key-file", env: "WARDEN_TLS_KEY_FILE", arg: "FILE", help: "PEM private key of --tls-cert-file" },
    {
      name: "tls-client-ca-file",
      env: "WARDEN_TLS_CLIENT_CA_FILE",
      arg: "FILE",
      help: "PEM CA of client certificates: mutual TLS; every gRPC client must present one (the Connect listener asks but also admits API-key clients without one); a verified one identifies its agent (URI SAN urn:warden:agent:<id>, else CN)",
    },
    sessionTokenTtl,
  ],
  sidecar: [
    {
      name: "control-plane-token-file",
      env: "WARDEN_CONTROL_PLANE_TOKEN_FILE",
      arg: "FILE",
      help: "file holding the API key (role agent) the control plane issued to this sidecar; re-read every minute",
    },
    { name: "tls-ca-file", env: "WARDEN_TLS_CA_FILE", arg: "FILE", help: "PEM CA that signed the control plane's certificate (use an https:// --control-plane)" },
    { name: "tls-cert-file", env: "WARDEN_TLS_CERT_FILE", arg: "FILE", help: "PEM client certificate for mutual TLS with the control plane" },
    { name: "tls-key-file", env: "WARDEN_TLS_KEY_FILE", arg: "FILE", help: "PEM private key of --tls-cert-file" },
  ],
};

/** Each role's flags with its authentication flags added before the common ones, so help groups them with the role's own. */
function withAuthFlags(flags: Record<Role, readonly FlagSpec[]>): Record<Role, readonly FlagSpec[]> {
  const out = {} as Record<Role, readonly FlagSpec[]>;
  for (const role of Object.keys(flags) as Role[]) {
    const list = [...flags[role]];
    const at = list.findIndex((f) => f === common[0]);
    list.splice(at === -1 ? list.length : at, 0, ...AUTH_FLAGS[role]);
    out[role] = list;
  }
  return out;
}

/** Every flag of every role, in help order. */
export const ROLE_FLAGS: Record<Role, readonly FlagSpec[]> = withAuthFlags({
  serve: [...listeners("serve"), ...store, ...common],
  "control-plane": [...listeners("control-plane"), ...store, leaseGrace, ...common],
  sidecar: [
    ...listeners("sidecar"),
    {
      name: "control-plane",
      env: "WARDEN_CONTROL_PLANE",
      required: true,
      arg: "URL",
      help: "gRPC address of any control-plane replica, e.g. http://warden-control-plane:50052",
    },
    {
      name: "agent-id",
      env: "WARDEN_AGENT_ID",
      required: true,
      arg: "ID",
      help: "the agent whose sessions this sidecar serves",
    },
    {
      name: "decision-mode",
      env: "WARDEN_DECISION_MODE",
      default: "lease",
      arg: "MODE",
      choices: ["lease", "exact"],
      help: "lease: decide from budget leases in process, records reach the store within the report interval; exact: every decision is made and recorded by the control plane before it is answered",
    },
    {
      name: "staleness-bound",
      env: "WARDEN_STALENESS_BOUND_MS",
      default: "10000",
      arg: "MS",
      help: "how long without the control plane the sidecar keeps spending from its leases; past it, spending is denied (CONTROL_PLANE_UNAVAILABLE)",
    },
    {
      name: "lease-ttl",
      env: "WARDEN_LEASE_TTL_MS",
      default: "30000",
      arg: "MS",
      help: "longest life of a budget lease (a lease also ends at its earliest window boundary)",
    },
    {
      name: "report-interval",
      env: "WARDEN_REPORT_INTERVAL_MS",
      default: "50",
      arg: "MS",
      help: "longest a decision made from a lease waits before it is sent to the control plane",
    },
    {
      name: "cache-max-sessions",
      env: "WARDEN_CACHE_MAX_SESSIONS",
      default: "100000",
      arg: "N",
      help: "most sessions the cache keeps",
    },
    {
      name: "cache-max-bytes",
      env: "WARDEN_CACHE_MAX_BYTES",
      default: "67108864",
      arg: "BYTES",
      help: "most memory the cached sessions may take, with their policies (estimated)",
    },
    {
      name: "optimize-for",
      env: "WARDEN_OPTIMIZE_FOR",
      default: "memory",
      arg: "memory|speed",
      choices: ["memory", "speed"],
      help: "memory: V8 collects garbage sooner and keeps a smaller heap (one sidecar runs beside every agent; ~17–33 MB less at 100,000 sessions, for 10–21% fewer decisions/s); speed: V8's defaults",
    },
    ...common,
  ],
});

/** One line per flag, for `warden <role> --help`. */
export function usageOf(role: Role, summary: string): string {
  const rows = ROLE_FLAGS[role].map((f) => {
    const left = `  --${f.name} ${f.arg}`;
    const dflt = f.required ? " (required)" : f.default !== undefined ? ` (default ${f.default})` : "";
    return `${left.padEnd(30)} ${f.help} [${f.env}]${dflt}`;
  });
  return `Usage: warden ${role} [flags]\n\n${summary}\n\nFlags (environment variable in brackets):\n${rows.join("\n")}\n  -h, --help                     this help\n`;
}

/**
 * Parses a role's flags: a flag beats its environment variable, which beats
 * the default. Returns undefined values for optional flags left unset, or
 * `help: true`. Throws a one-line error naming the flag on a missing
 * required one, or on a value outside its choices.
 */
export function parseRoleFlags(
  role: Role,
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): { help: boolean; values: Record<string, string | undefined> } {
  const specs = ROLE_FLAGS[role];
  const options: Record<string, { type: "string" } | { type: "boolean"; short: string }> = { help: { type: "boolean", short: "h" } };
  for (const f of specs) options[f.name] = { type: "string" };
  const parsed = parseArgs({ args: [...argv], strict: true, options });
  if (parsed.values.help === true) return { help: true, values: {} };
  const values: Record<string, string | undefined> = {};
  for (const f of specs) {
    const v = (parsed.values[f.name] as string | undefined) ?? (env[f.env] || undefined) ?? f.default;
    if (v === undefined && f.required) throw new Error(`--${f.name} (or ${f.env}) is required`);
    if (v !== undefined && f.choices !== undefined && !f.choices.includes(v)) {
      throw new Error(`--${f.name}: "${v}" is not one of ${f.choices.join(", ")}`);
    }
    values[f.name] = v;
  }
  return { help: false, values };
}

/** A flag's value as a boolean ("true" or "false"), or a one-line error naming it. */
export function booleanFlag(values: Record<string, string | undefined>, name: string): boolean {
  const text = (values[name] ?? "").trim().toLowerCase();
  if (text === "true") return true;
  if (text === "false") return false;
  throw new Error(`--${name}: "${values[name] ?? ""}" is not true or false`);
}

/** A flag's value as a positive whole number, or a one-line error naming it. */
export function positiveInt(values: Record<string, string | undefined>, name: string): number {
  const text = values[name] ?? "";
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name}: "${text}" is not a positive whole number`);
  return n;
}

/** A flag's value as a whole number, 0 or more, or a one-line error naming it. */
export function nonNegativeInt(values: Record<string, string | undefined>, name: string): number {
  const text = values[name] ?? "";
  const n = Number(text);
  if (text.trim() === "" || !Number.isSafeInteger(n) || n < 0) throw new Error(`--${name}: "${text}" is not a whole number of 0 or more`);
  return n;
}

/**
 * The PostgreSQL URL of `--database-url` (or DATABASE_URL), checked before
 * any driver sees it (`pg` says only "Invalid URL", or takes a bare word as
 * a host name), or a one-line error naming the flag that shows no
 * password. Unset or empty: undefined (the embedded store).
 */
export function databaseUrlFlag(text: string | undefined): string | undefined {
  if (text === undefined || text === "") return undefined;
  let protocol: string | undefined;
  try {
    protocol = new URL(text).protocol;
  } catch {
    // not a URL
  }
  if (protocol !== "postgres:" && protocol !== "postgresql:" && protocol !== "socket:") {
    throw new Error(`--database-url (or DATABASE_URL): ${redactUrl(text)} is not a PostgreSQL URL such as postgres://user@127.0.0.1:5432/warden`);
  }
  return text;
}
