/**
 * Keeps deploy/ true to the code: every environment variable a manifest sets
 * is a flag of the role the container runs (ROLE_FLAGS), listeners and
 * containerPorts agree, startup and readiness probes hit a port that serves
 * grpc.health.v1 and liveness one that serves /healthz, the Service and the
 * sidecar's control-plane address line up, and the image
 * EXPOSEs what the manifests use. No cluster is needed: the manifests are
 * parsed as kubectl parses them and checked against the flag table.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { parseRoleFlags, ROLE_FLAGS } from "../../src/server/role-flags.js";
import {
  type Container,
  DEPLOY_DIR,
  envOf,
  flagOfEnv,
  imageName,
  isRole,
  listenAddress,
  listenerFlags,
  loadManifests,
  ROOT,
  selects,
  splitHostPort,
  WARDEN_IMAGE,
  type WardenContainer,
  wardenContainers,
  workloads,
} from "./load-manifests.js";
import { execForm, parseDockerfile } from "./parse-dockerfile.js";

const manifests = loadManifests();
const runtimeStage = parseDockerfile(readFileSync(join(ROOT, "Dockerfile"), "utf8")).stages.at(-1)!;
const imageCmd = execForm(runtimeStage.instructions.findLast((i) => i.keyword === "CMD")?.args ?? "[]") ?? [];
const imageRole = imageCmd[0];
if (!isRole(imageRole)) throw new Error(`the Dockerfile's CMD must start with a role, not ${JSON.stringify(imageCmd)}`);
const wardens = wardenContainers(manifests, imageRole);
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };

/** The listeners that serve grpc.health.v1 over gRPC, so a Kubernetes `grpc:` probe can use them. */
const GRPC_HEALTH_LISTENERS = ["grpc-listen", "health-listen"];
/** The listeners that serve HTTP /metrics, /healthz and /readyz. */
const METRICS_LISTENERS = ["http-listen", "health-listen"];
const HEALTHZ_LISTENERS = METRICS_LISTENERS;

const where = (w: WardenContainer) => `${w.file}: ${w.workload.metadata.name}/${w.container.name} (warden ${w.role})`;

/** The container's port for a listener flag, when it listens beyond loopback. */
function exposedPort(w: WardenContainer, flag: string): number | undefined {
  const address = listenAddress(w, flag);
  if (address === undefined) return undefined;
  const { port, loopback } = splitHostPort(address);
  return loopback ? undefined : port;
}

const declaredPorts = (c: Container) => (c.ports ?? []).map((p) => p.containerPort);

/** Resolves a Service targetPort (a port name or number) to a containerPort of `c`. */
function resolveTargetPort(c: Container, target: string | number): number | undefined {
  return (c.ports ?? []).find((p) => (typeof target === "string" ? p.name === target : p.containerPort === target))?.containerPort;
}

const services = manifests.filter((m) => m.doc.kind === "Service");

/** The workloads whose pods `service` selects. */
const selectedBy = (selector: Record<string, string> | undefined) =>
  workloads(manifests).filter(({ workload }) => selects(selector, workload.spec.template.metadata?.labels));

test("every manifest is a namespace-agnostic Kubernetes object, and each kustomization lists every manifest beside it", () => {
  assert.ok(manifests.length > 0, "no manifests under deploy/");
  for (const { file, doc } of manifests) {
    assert.equal(typeof doc.apiVersion, "string", `${file}: apiVersion`);
    assert.equal(typeof doc.kind, "string", `${file}: kind`);
    if (doc.kind === "Kustomization") continue;
    assert.equal(typeof doc.metadata?.name, "string", `${file}: ${doc.kind} without metadata.name`);
    // The namespace is the installer's choice (kubectl -n, or kustomize's namespace:).
    assert.equal(doc.metadata.namespace, undefined, `${file}: ${doc.kind}/${doc.metadata.name} pins a namespace`);
  }
  const kustomizations = manifests.filter((m) => m.doc.kind === "Kustomization");
  assert.ok(kustomizations.length > 0, "deploy/ has no kustomization.yaml");
  for (const { file, doc } of kustomizations) {
    const dir = join(DEPLOY_DIR, dirname(file));
    const beside = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f) && f !== "kustomization.yaml");
    const listed = (doc.resources ?? []) as string[];
    for (const r of listed) assert.ok(beside.includes(r) || readdirSync(dir).includes(r), `${file}: lists ${r}, which does not exist`);
    for (const f of beside) assert.ok(listed.includes(f), `${file}: does not list ${relative(DEPLOY_DIR, join(dir, f))}`);
  }
});

test("the manifests and kustomizations deploy the image of this package version", () => {
  assert.ok(wardens.length > 0, "no container runs the warden image");
  for (const w of wardens) assert.equal(w.container.image, `${WARDEN_IMAGE}:${pkg.version}`, where(w));
  for (const { file, doc } of manifests.filter((m) => m.doc.kind === "Kustomization")) {
    // Only a kustomization that deploys Warden containers pins their image
    // (deploy/monitoring/ has alert rules only).
    if (!wardens.some((w) => dirname(w.file) === dirname(file))) continue;
    const entry = ((doc.images ?? []) as { name: string; newTag?: string }[]).find((i) => i.name === WARDEN_IMAGE);
    assert.equal(entry?.newTag, pkg.version, `${file}: images entry for ${WARDEN_IMAGE}`);
  }
});

test("Warden containers run a role through the image's entrypoint, and the cluster has both halves", () => {
  for (const w of wardens) assert.equal(w.container.command, undefined, `${where(w)}: command would bypass the image's ENTRYPOINT`);
  const roles = new Set(wardens.map((w) => w.role));
  assert.ok(roles.has("control-plane"), "no container runs warden control-plane");
  assert.ok(roles.has("sidecar"), "no container runs warden sidecar");
});

test("Warden containers set only environment variables that are flags of their role", () => {
  // A variable that is some role's flag, or looks like one, must be a flag
  // of this container's role: the code would ignore it silently otherwise.
  // This also keeps database credentials out of sidecars.
  const anyRoleEnv = new Set(Object.values(ROLE_FLAGS).flatMap((flags) => flags.map((f) => f.env)));
  let checked = 0;
  for (const w of wardens) {
    for (const e of w.container.env ?? []) {
      if (e.valueFrom === undefined) assert.equal(typeof e.value, "string", `${where(w)}: ${e.name} must be a string (quote it)`);
      if (!e.name.startsWith("WARDEN_") && !anyRoleEnv.has(e.name)) continue;
      assert.ok(flagOfEnv(w.role, e.name), `${where(w)}: ${e.name} is not a flag of warden ${w.role}`);
      checked++;
    }
  }
  assert.ok(checked > 0, "no Warden container sets any flag");
});

test("every role gets its required flags, and the control plane its database URL from a Secret", () => {
  for (const w of wardens) {
    // The code's own parser: it rejects unknown flags in args and names a missing required one.
    assert.doesNotThrow(() => parseRoleFlags(w.role, (w.container.args ?? []).slice(1), w.env), where(w));
    for (const f of ROLE_FLAGS[w.role].filter((spec) => spec.required)) {
      assert.ok(w.env[f.env] !== undefined || w.container.args?.includes(`--${f.name}`), `${where(w)}: required --${f.name} (${f.env}) unset`);
    }
    if (w.role === "control-plane") {
      // Replicas must share PostgreSQL; embedded PGlite would give each its own budgets.
      const db = w.container.env?.find((e) => e.name === "DATABASE_URL");
      assert.ok(db?.valueFrom?.secretKeyRef, `${where(w)}: DATABASE_URL must come from a Secret`);
    }
  }
});

test("listen addresses agree with containerPorts", () => {
  for (const w of wardens) {
    const exposed = new Set<number>();
    for (const flag of listenerFlags(w.role)) {
      const address = listenAddress(w, flag);
      if (address === undefined) continue;
      const { port, loopback } = splitHostPort(address);
      if (loopback) {
        // Declaring it would promise a port that nothing outside the pod can reach.
        assert.ok(!declaredPorts(w.container).includes(port), `${where(w)}: --${flag} ${address} is loopback but containerPort ${port} is declared`);
      } else {
        assert.ok(declaredPorts(w.container).includes(port), `${where(w)}: --${flag} ${address} has no containerPort ${port}`);
        exposed.add(port);
      }
    }
    for (const port of declaredPorts(w.container)) assert.ok(exposed.has(port), `${where(w)}: containerPort ${port} is no listener's port`);
  }
  // Containers of a pod share one network namespace: two listeners on one port cannot both bind.
  for (const { file, workload } of workloads(manifests)) {
    const pod = workload.spec.template.spec;
    const taken: number[] = [];
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      const w = wardens.find((x) => x.container === c);
      const ports = w ? listenerFlags(w.role).flatMap((f) => listenAddress(w, f) ?? []).map((a) => splitHostPort(a).port) : declaredPorts(c);
      taken.push(...new Set(ports));
    }
    assert.equal(new Set(taken).size, taken.length, `${file}: ${workload.metadata.name} has two listeners on one port: ${taken.join(", ")}`);
  }
});

test("startup and readiness probes are gRPC health checks, liveness is /healthz, all on declared listener ports", () => {
  for (const w of wardens) {
    assert.ok(w.container.readinessProbe, `${where(w)}: no readinessProbe`);
    assert.ok(w.container.livenessProbe, `${where(w)}: no livenessProbe`);
    const grpcHealthPorts = GRPC_HEALTH_LISTENERS.map((f) => exposedPort(w, f)).filter((p) => p !== undefined);
    for (const kind of ["startupProbe", "readinessProbe"] as const) {
      const probe = w.container[kind];
      if (probe === undefined) continue;
      assert.ok(probe.grpc, `${where(w)}: ${kind} is not a grpc probe`);
      // Kubernetes grpc probes take a port number only, never a name.
      assert.equal(typeof probe.grpc.port, "number", `${where(w)}: ${kind} port`);
      const port = probe.grpc.port as number;
      assert.ok(declaredPorts(w.container).includes(port), `${where(w)}: ${kind} port ${port} is not a containerPort`);
      assert.ok(grpcHealthPorts.includes(port), `${where(w)}: ${kind} port ${port} serves no grpc.health.v1 (listeners: ${grpcHealthPorts.join(", ")})`);
      // "" is the whole-server status that follows readiness; another name could stay unknown.
      assert.equal(probe.grpc.service ?? "", "", `${where(w)}: ${kind} service`);
    }
    // gRPC health follows readiness, which for a sidecar includes reaching the
    // control plane: as liveness it would restart every sidecar in an outage.
    const live = w.container.livenessProbe;
    assert.equal(live.httpGet?.path, "/healthz", `${where(w)}: livenessProbe must be httpGet /healthz`);
    const port = resolveTargetPort(w.container, live.httpGet.port);
    assert.ok(port !== undefined, `${where(w)}: livenessProbe port ${live.httpGet.port} is not a containerPort`);
    const healthzPorts = HEALTHZ_LISTENERS.map((f) => exposedPort(w, f)).filter((p) => p !== undefined);
    assert.ok(healthzPorts.includes(port), `${where(w)}: livenessProbe port ${port} serves no /healthz (listeners: ${healthzPorts.join(", ")})`);
  }
});

test("Warden sidecars are native sidecars, and the agent starts once they are ready", () => {
  const sidecars = wardens.filter((w) => w.role === "sidecar");
  assert.ok(sidecars.length > 0, "no sidecar");
  for (const w of sidecars) {
    assert.ok(w.init, `${where(w)}: must be in initContainers, so it starts before the agent`);
    assert.equal(w.container.restartPolicy, "Always", `${where(w)}: restartPolicy Always makes it a native sidecar`);
    // The kubelet starts the next container only once a sidecar's startupProbe succeeds.
    assert.ok(w.container.startupProbe, `${where(w)}: no startupProbe, so the agent could start before the sidecar listens`);
    const agents = w.workload.spec.template.spec.containers.filter((c) => imageName(c.image) !== WARDEN_IMAGE);
    assert.ok(agents.length > 0, `${where(w)}: its pod has no agent container`);
  }
  for (const w of wardens.filter((x) => x.role !== "sidecar")) assert.ok(!w.init, `${where(w)}: only sidecars belong in initContainers`);
});

test("Services target ports that their control-plane containers declare", () => {
  assert.ok(services.length > 0, "no Service");
  for (const { file, doc } of services) {
    const selected = selectedBy(doc.spec.selector);
    assert.ok(selected.length > 0, `${file}: Service ${doc.metadata.name} selects no pods`);
    for (const { workload } of selected) {
      const own = wardens.filter((w) => w.workload === workload && w.role === "control-plane");
      assert.equal(own.length, 1, `${file}: Service ${doc.metadata.name} selects ${workload.metadata.name}, which runs no control plane`);
      for (const p of doc.spec.ports as { name?: string; port: number; targetPort?: string | number }[]) {
        const target = p.targetPort ?? p.port;
        assert.ok(resolveTargetPort(own[0]!.container, target) !== undefined, `${file}: ${doc.metadata.name} port ${p.name ?? p.port} targets ${target}, not a containerPort of ${workload.metadata.name}`);
      }
    }
  }
});

test("each sidecar's WARDEN_CONTROL_PLANE is the control-plane Service's gRPC port", () => {
  for (const w of wardens.filter((x) => x.role === "sidecar")) {
    const url = new URL(w.env.WARDEN_CONTROL_PLANE ?? "");
    assert.ok(url.protocol === "http:" || url.protocol === "https:", `${where(w)}: ${url.href}`);
    // `name`, `name.namespace` and `name.namespace.svc…` all name the Service `name`.
    const serviceName = url.hostname.split(".")[0];
    const service = services.find((s) => s.doc.metadata.name === serviceName);
    assert.ok(service, `${where(w)}: ${url.host} is no Service in deploy/`);
    assert.notEqual(url.port, "", `${where(w)}: ${url.href} names no port`);
    const port = (service.doc.spec.ports as { port: number; targetPort?: string | number }[]).find((p) => p.port === Number(url.port));
    assert.ok(port, `${where(w)}: Service ${serviceName} has no port ${url.port}`);
    for (const { workload } of selectedBy(service.doc.spec.selector)) {
      const cp = wardens.find((x) => x.workload === workload && x.role === "control-plane");
      assert.ok(cp, `${where(w)}: Service ${serviceName} selects ${workload.metadata.name}, which runs no control plane`);
      const target = resolveTargetPort(cp.container, port.targetPort ?? port.port);
      assert.equal(target, exposedPort(cp, "grpc-listen"), `${where(w)}: ${url.href} reaches ${workload.metadata.name} port ${target}, not its gRPC listener`);
    }
  }
});

test("PodDisruptionBudgets keep a control plane up without blocking node drains", () => {
  const pdbs = manifests.filter((m) => m.doc.kind === "PodDisruptionBudget");
  const planes = wardens.filter((w) => w.role === "control-plane");
  for (const cp of planes) {
    assert.ok((cp.workload.spec.replicas ?? 1) >= 2, `${where(cp)}: one replica is a single point of failure`);
    const pdb = pdbs.find((p) => selects(p.doc.spec.selector?.matchLabels, cp.workload.spec.template.metadata?.labels));
    assert.ok(pdb, `${where(cp)}: no PodDisruptionBudget selects it`);
    const min = pdb.doc.spec.minAvailable as number;
    assert.ok(Number.isInteger(min) && min >= 1, `${pdb.file}: minAvailable must be a number of at least 1`);
    assert.ok(min < cp.workload.spec.replicas!, `${pdb.file}: minAvailable ${min} with ${cp.workload.spec.replicas} replicas would block every drain`);
  }
});

test("agents reach their sidecar's HTTP listener on loopback", () => {
  let checked = 0;
  for (const w of wardens.filter((x) => x.role === "sidecar")) {
    const http = splitHostPort(listenAddress(w, "http-listen")!);
    for (const agent of w.workload.spec.template.spec.containers) {
      const server = envOf(agent).WARDEN_SERVER;
      if (server === undefined) continue;
      const url = new URL(server);
      assert.equal(url.hostname, http.host, `${w.file}: ${agent.name}'s WARDEN_SERVER ${server} is not the sidecar's host`);
      assert.equal(Number(url.port), http.port, `${w.file}: ${agent.name}'s WARDEN_SERVER ${server} is not the sidecar's --http-listen port`);
      assert.ok(http.loopback, `${where(w)}: the agent-facing API must stay on loopback`);
      checked++;
    }
  }
  assert.ok(checked > 0, "no agent container sets WARDEN_SERVER");
});

test("Prometheus scrape annotations name a Warden port that serves /metrics", () => {
  for (const { file, workload } of workloads(manifests)) {
    const own = wardens.filter((w) => w.workload === workload);
    if (own.length === 0) continue;
    const annotations = workload.spec.template.metadata?.annotations ?? {};
    assert.equal(annotations["prometheus.io/scrape"], "true", `${file}: ${workload.metadata.name} is not scraped`);
    assert.equal(annotations["prometheus.io/path"], "/metrics", `${file}: ${workload.metadata.name} scrape path`);
    const port = Number(annotations["prometheus.io/port"]);
    const metricsPorts = own.flatMap((w) => METRICS_LISTENERS.map((f) => exposedPort(w, f))).filter((p) => p !== undefined);
    assert.ok(metricsPorts.includes(port), `${file}: ${workload.metadata.name} scrapes port ${port}; /metrics is served on ${metricsPorts.join(", ")}`);
  }
});

test("Warden containers request CPU and memory and cap memory", () => {
  for (const w of wardens) {
    const { requests, limits } = w.container.resources ?? {};
    assert.ok(requests?.cpu !== undefined && requests.memory !== undefined, `${where(w)}: resources.requests needs cpu and memory`);
    assert.ok(limits?.memory !== undefined, `${where(w)}: resources.limits.memory caps a leak`);
  }
});

test("Warden containers run as the image's non-root user, read-only, without capabilities", () => {
  const user = runtimeStage.instructions.findLast((i) => i.keyword === "USER")?.args ?? "";
  const uid = Number(user.split(":")[0]);
  for (const w of wardens) {
    const pod = w.workload.spec.template.spec.securityContext ?? {};
    const sc = w.container.securityContext ?? {};
    assert.equal(sc.runAsNonRoot ?? pod.runAsNonRoot, true, `${where(w)}: runAsNonRoot`);
    const runAsUser = sc.runAsUser ?? pod.runAsUser;
    if (runAsUser !== undefined) assert.equal(runAsUser, uid, `${where(w)}: runAsUser is not the image's USER ${user}`);
    assert.equal(sc.readOnlyRootFilesystem, true, `${where(w)}: readOnlyRootFilesystem`);
    assert.equal(sc.allowPrivilegeEscalation, false, `${where(w)}: allowPrivilegeEscalation`);
    assert.ok(sc.capabilities?.drop?.includes("ALL"), `${where(w)}: capabilities.drop ALL`);
    assert.deepEqual(sc.capabilities?.add ?? [], [], `${where(w)}: capabilities.add`);
  }
});

test("files named in a Warden container's environment are mounted from Secrets", () => {
  for (const w of wardens) {
    const volumes = w.workload.spec.template.spec.volumes ?? [];
    for (const [name, value] of Object.entries(w.env).filter(([n]) => n.endsWith("_FILE"))) {
      const mount = (w.container.volumeMounts ?? []).find((m) => value.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
      assert.ok(mount, `${where(w)}: ${name}=${value} is on no volumeMount`);
      const volume = volumes.find((v) => v.name === mount.name);
      assert.ok(volume?.secret, `${where(w)}: ${name} must come from a Secret volume, not ${JSON.stringify(volume)}`);
    }
  }
});

test("pods give Warden longer to stop than its shutdown grace", () => {
  for (const w of wardens) {
    const graceMs = Number(w.env.WARDEN_SHUTDOWN_GRACE_MS ?? ROLE_FLAGS[w.role].find((f) => f.name === "shutdown-grace")?.default);
    const preStopMs = (w.container.lifecycle?.preStop?.sleep?.seconds ?? 0) * 1000;
    // Kubernetes' default when the pod does not say.
    const terminationMs = (w.workload.spec.template.spec.terminationGracePeriodSeconds ?? 30) * 1000;
    assert.ok(preStopMs + graceMs < terminationMs, `${where(w)}: preStop ${preStopMs} ms + drain ${graceMs} ms leaves no time before SIGKILL at ${terminationMs} ms`);
  }
});

test("the image EXPOSEs the ports of its default command and of the manifests", () => {
  const exposed = runtimeStage.instructions
    .filter((i) => i.keyword === "EXPOSE")
    .flatMap((i) => i.args.split(/\s+/))
    .map((p) => Number(p.replace(/\/tcp$/, "")));
  const expected = new Set<number>(wardens.flatMap((w) => declaredPorts(w.container)));
  const { values } = parseRoleFlags(imageRole, imageCmd.slice(1), {});
  for (const flag of listenerFlags(imageRole)) {
    const address = values[flag];
    if (address !== undefined && !splitHostPort(address).loopback) expected.add(splitHostPort(address).port);
  }
  assert.deepEqual(
    [...new Set(exposed)].sort((a, b) => a - b),
    [...expected].sort((a, b) => a - b),
  );
});
