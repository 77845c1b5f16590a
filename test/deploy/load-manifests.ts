import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { parseAllDocuments } from "yaml";
import { ROLE_FLAGS, type FlagSpec, type Role } from "../../src/server/role-flags.js";

/** The repository root. */
export const ROOT = join(import.meta.dirname, "..", "..");

/** Where the manifests live. */
export const DEPLOY_DIR = join(ROOT, "deploy");

/**
 * The image name the manifests use for Warden. Kustomize's `images:` rewrites
 * it to wherever the image was pushed, so it names no registry.
 */
export const WARDEN_IMAGE = "warden";

// Just the parts of the Kubernetes API that the deploy tests read.

export interface EnvVar {
  name: string;
  value?: unknown;
  valueFrom?: { secretKeyRef?: { name: string; key: string }; [source: string]: unknown };
}
export interface ContainerPort {
  name?: string;
  containerPort: number;
}
export interface Probe {
  grpc?: { port: unknown; service?: string };
  httpGet?: { path?: string; port: string | number };
  tcpSocket?: unknown;
  exec?: unknown;
}
export interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  readOnlyRootFilesystem?: boolean;
  allowPrivilegeEscalation?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
}
export interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: ContainerPort[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  restartPolicy?: string;
  resources?: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  securityContext?: SecurityContext;
  volumeMounts?: { name: string; mountPath: string }[];
  lifecycle?: { preStop?: { sleep?: { seconds: number } } };
}
export interface PodSpec {
  initContainers?: Container[];
  containers: Container[];
  volumes?: { name: string; secret?: { secretName: string }; [source: string]: unknown }[];
  securityContext?: SecurityContext;
  terminationGracePeriodSeconds?: number;
}
export interface Workload {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec: {
    replicas?: number;
    selector?: { matchLabels?: Record<string, string> };
    template: { metadata?: { labels?: Record<string, string>; annotations?: Record<string, unknown> }; spec: PodSpec };
  };
}

/** One YAML document of one file under deploy/. */
export interface Manifest {
  /** Path relative to deploy/, for messages. */
  readonly file: string;
  /** The parsed document, untyped: each test narrows it by `kind`. */
  readonly doc: any;
}

/** Every .yaml/.yml file under `dir`, recursively, sorted. */
export function yamlFiles(dir: string = DEPLOY_DIR): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((f) => join(dir, f));
}

/**
 * Parses every document of every YAML file under `dir`. YAML 1.1, because
 * kubectl's parser is YAML 1.1: `on`, `yes` and `0400` mean there what they
 * mean here. Throws on the first syntax error, naming the file.
 */
export function loadManifests(dir: string = DEPLOY_DIR): Manifest[] {
  const out: Manifest[] = [];
  for (const path of yamlFiles(dir)) {
    const file = relative(dir, path);
    for (const d of parseAllDocuments(readFileSync(path, "utf8"), { version: "1.1" })) {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0]!.message}`);
      const doc: unknown = d.toJS();
      if (doc !== null && doc !== undefined) out.push({ file, doc });
    }
  }
  return out;
}

/** A Warden container found in a workload's pod template. */
export interface WardenContainer {
  readonly file: string;
  readonly workload: Workload;
  readonly container: Container;
  /** In initContainers (a native sidecar when restartPolicy is Always). */
  readonly init: boolean;
  /** The role it runs: args[0], or the image's default command's. */
  readonly role: Role;
  /** Its environment as the process sees it; values from Secrets are placeholders. */
  readonly env: Record<string, string>;
}

/** Kinds whose spec.template is a pod template. */
const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);

/** The workloads (Deployments and the like) among the manifests. */
export function workloads(manifests: readonly Manifest[]): { file: string; workload: Workload }[] {
  return manifests.filter((m) => WORKLOAD_KINDS.has(m.doc.kind)).map((m) => ({ file: m.file, workload: m.doc as Workload }));
}

/** An image reference without its tag or digest: `warden:0.1.0` → `warden`. */
export function imageName(image: string): string {
  return image.replace(/@.*$/, "").replace(/:[^/:]*$/, "");
}

/** Whether `role` is one of the roles the CLI runs. */
export function isRole(role: string | undefined): role is Role {
  return role !== undefined && Object.hasOwn(ROLE_FLAGS, role);
}

/**
 * Every container running the Warden image, with its role. `defaultRole` is
 * the role of the image's CMD, used when a container gives no args.
 * Throws when a container's role is not a role, so a typo fails loudly.
 */
export function wardenContainers(manifests: readonly Manifest[], defaultRole: Role): WardenContainer[] {
  const out: WardenContainer[] = [];
  for (const { file, workload } of workloads(manifests)) {
    const pod = workload.spec.template.spec;
    const all = [...(pod.initContainers ?? []).map((c) => ({ c, init: true })), ...pod.containers.map((c) => ({ c, init: false }))];
    for (const { c, init } of all) {
      if (imageName(c.image) !== WARDEN_IMAGE) continue;
      const role = c.args?.[0] ?? defaultRole;
      if (!isRole(role)) throw new Error(`${file}: container ${c.name} runs "${role}", not a warden role`);
      out.push({ file, workload, container: c, init, role, env: envOf(c) });
    }
  }
  return out;
}

/** A container's env as name → value; a value from a Secret or field reads `<from …>`. */
export function envOf(c: Container): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env ?? []) env[e.name] = e.valueFrom !== undefined ? `<from ${Object.keys(e.valueFrom).join(",")}>` : String(e.value ?? "");
  return env;
}

/** The flag of `role` that the environment variable `name` sets, if any. */
export function flagOfEnv(role: Role, name: string): FlagSpec | undefined {
  return ROLE_FLAGS[role].find((f) => f.env === name);
}

/** A listener's effective address: flag from args, else env, else default; undefined when off. */
export function listenAddress(w: WardenContainer, flag: string): string | undefined {
  const spec = ROLE_FLAGS[w.role].find((f) => f.name === flag);
  if (spec === undefined) return undefined;
  const args = w.container.args ?? [];
  const i = args.indexOf(`--${flag}`);
  if (i !== -1) return args[i + 1];
  return w.env[spec.env] ?? spec.default;
}

/** The names of the role's listener flags (`grpc-listen`, `http-listen`, `health-listen`, …). */
export function listenerFlags(role: Role): string[] {
  return ROLE_FLAGS[role].filter((f) => f.name.endsWith("-listen")).map((f) => f.name);
}

/** Splits HOST:PORT (IPv6 in brackets) and says whether the host is loopback. */
export function splitHostPort(address: string): { host: string; port: number; loopback: boolean } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(address);
  if (!m) throw new Error(`"${address}" is not HOST:PORT`);
  const host = m[1]!;
  return { host, port: Number(m[2]), loopback: host === "localhost" || host === "::1" || host.startsWith("127.") };
}

/** Whether every label of `selector` is on `labels` (and the selector is not empty). */
export function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  const entries = Object.entries(selector ?? {});
  return entries.length > 0 && entries.every(([k, v]) => labels?.[k] === v);
}
