/**
 * Keeps the Dockerfile honest without a Docker engine: its structure is
 * parsed and checked (stages, user, entrypoint, what the final stage holds,
 * what .dockerignore lets in), and its build stage is replayed: the files it
 * copies go to a temporary directory, its `RUN npm run build` runs there, the
 * final stage's layout is assembled from the result, and the compiled CLI
 * must answer --help for every role and start `warden serve`.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, posix } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { parseRoleFlags, ROLE_FLAGS } from "../../src/server/role-flags.js";
import { LINGERED_MESSAGE } from "../../src/server/run-until-signal.js";
import { HealthCheckResponse_ServingStatus } from "../../src/gen/grpc/health/v1/health_pb.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { isRole, listenAddress, listenerFlags, loadManifests, ROOT, splitHostPort, wardenContainers } from "./load-manifests.js";
import { type DockerCopy, type DockerStage, execForm, parseCopy, parseDockerfile } from "./parse-dockerfile.js";
import { freePort, grpcHealthCheck, type RoleProcess, startRole } from "./role-process.js";

const dockerfile = parseDockerfile(readFileSync(join(ROOT, "Dockerfile"), "utf8"));
const stages = dockerfile.stages;
const runtime = stages.at(-1)!;
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string; devDependencies: Record<string, string> };

const only = (stage: DockerStage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword);
const last = (stage: DockerStage, keyword: string) => only(stage, keyword).at(-1)?.args;
const copies = (stage: DockerStage) => stage.instructions.filter((i) => i.keyword === "COPY" || i.keyword === "ADD").map(parseCopy);
const stageNamed = (name: string | undefined) => stages.find((s) => s.name === name);
/** RUN lines that install packages: in the image those come from the lock, here from node_modules. */
const isInstall = (run: string) => /\b(npm|yarn|pnpm)\s+(ci|install|add|i)\b/.test(run);

/** Every stage works in /app; the replay maps /app to a temporary directory. */
const APP = "/app";

test("the image builds in stages, every one on the Node.js the tests run on", () => {
  assert.ok(stages.length >= 2, "a single stage would ship the compiler and the dev dependencies");
  const names = stages.map((s) => s.name).filter((n) => n !== undefined);
  assert.equal(new Set(names).size, names.length, "stage names repeat");
  for (const s of stages) {
    // Same version as the pinned "node" devDependency: the image runs what CI tested.
    assert.match(s.from, new RegExp(`^node:${pkg.devDependencies.node!.replaceAll(".", "\\.")}-`), `stage ${s.name}: FROM ${s.from}`);
    assert.equal(last(s, "WORKDIR"), APP, `stage ${s.name}: WORKDIR`);
  }
});

test("the final stage runs as a numeric non-root user", () => {
  const user = last(runtime, "USER");
  assert.ok(user, "no USER: the server would run as root");
  // Numeric, or Kubernetes cannot verify runAsNonRoot.
  const m = /^(\d+)(?::(\d+))?$/.exec(user);
  assert.ok(m, `USER ${user} is not numeric`);
  assert.notEqual(Number(m[1]), 0, "USER is root");
  // The default command writes its embedded store there; the user must own it.
  const cmd = execForm(last(runtime, "CMD") ?? "") ?? [];
  const dataDir = cmd[cmd.indexOf("--data-dir") + 1];
  assert.ok(cmd.includes("--data-dir") && dataDir, "the default command names no --data-dir");
  const runs = only(runtime, "RUN").map((r) => r.args);
  assert.ok(
    runs.some((r) => r.includes(`mkdir -p ${dataDir}`) && r.includes(`chown ${user} ${dataDir}`)),
    `no RUN creates ${dataDir} owned by ${user}`,
  );
});

test("the entrypoint runs the compiled CLI, and the default command is a valid role command line", () => {
  assert.deepEqual(execForm(last(runtime, "ENTRYPOINT") ?? ""), ["node", "dist/cli/main.js"]);
  const cmd = execForm(last(runtime, "CMD") ?? "");
  assert.ok(cmd, "CMD must be exec form");
  const [role, ...args] = cmd;
  assert.ok(isRole(role), `CMD starts with ${role}, not a role`);
  // The code's parser, with no environment: unknown flags throw.
  assert.equal(parseRoleFlags(role, args, {}).help, false);
});

test("the final stage installs nothing and holds no dev dependencies, sources or tsx", () => {
  for (const run of only(runtime, "RUN")) {
    assert.ok(!isInstall(run.args) && !/\bnpm\s+run\b|\btsc\b/.test(run.args), `Dockerfile:${run.line}: ${run.args}`);
  }
  for (const ins of runtime.instructions) assert.doesNotMatch(ins.args, /\btsx\b/, `Dockerfile:${ins.line}`);
  let modules = 0;
  for (const c of copies(runtime)) {
    if (c.from === undefined) {
      // From the build context only what the program reads at run time.
      assert.deepEqual(c.sources, ["package.json"], `Dockerfile:${c.line}: copies ${c.sources.join(" ")} from the context`);
      continue;
    }
    const from = stageNamed(c.from);
    assert.ok(from, `Dockerfile:${c.line}: --from=${c.from} is no stage`);
    for (const source of c.sources) {
      assert.ok([`${APP}/dist`, `${APP}/node_modules`].includes(source), `Dockerfile:${c.line}: copies ${source}`);
      if (source.endsWith("node_modules")) {
        modules++;
        const installs = only(from, "RUN").filter((r) => isInstall(r.args));
        assert.ok(installs.length > 0, `stage ${c.from} installs nothing`);
        for (const r of installs) assert.match(r.args, /--omit=dev\b/, `Dockerfile:${r.line}: dev dependencies would reach the image`);
      }
    }
  }
  assert.equal(modules, 1, "the final stage should copy node_modules once, from a production install");
});

/**
 * A .dockerignore pattern as a regular expression, with Go filepath.Match
 * semantics as Docker uses them: `*` and `?` stop at `/` but match dotfiles,
 * `**` crosses directories.
 */
function ignoreRegExp(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i]!;
    if (ch === "*" && pattern[i + 1] === "*") {
      re += ".*";
      i++;
    } else if (ch === "*") re += "[^/]*";
    else if (ch === "?") re += "[^/]";
    else re += ch.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** Whether .dockerignore keeps `path` (relative, with /) out of the build context; the last matching pattern wins. */
function dockerignored(path: string, patterns: readonly string[]): boolean {
  let ignored = false;
  const parts = path.split("/");
  for (const raw of patterns) {
    const negated = raw.startsWith("!");
    const re = ignoreRegExp(posix.normalize((negated ? raw.slice(1) : raw).replace(/^\/+/, "")).replace(/\/+$/, ""));
    // A pattern that matches a directory matches everything in it.
    if (parts.some((_, i) => re.test(parts.slice(0, i + 1).join("/")))) ignored = !negated;
  }
  return ignored;
}

test(".dockerignore lets in what the Dockerfile copies from the context and nothing else", () => {
  const patterns = readFileSync(join(ROOT, ".dockerignore"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const sources = stages.flatMap((s) => copies(s).filter((c) => c.from === undefined).flatMap((c) => c.sources));
  const copied = (file: string) => sources.some((s) => file === s || file.startsWith(`${s.replace(/\/$/, "")}/`));
  // Whatever lies around locally: dependencies, builds, data, history.
  for (const local of ["node_modules/x", "dist/cli/main.js", ".warden/data/x", ".git/HEAD", ".env"]) {
    assert.ok(dockerignored(local, patterns), `${local} would reach the builder`);
  }
  const walk = (dir: string): string[] =>
    readdirSync(join(ROOT, dir), { withFileTypes: true })
      .filter((e) => !(dir === "" && ["node_modules", ".git", ".warden", "dist"].includes(e.name)))
      .flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));
  for (const file of walk("")) {
    if (file === "Dockerfile" || file === ".dockerignore") continue;
    assert.equal(!dockerignored(file, patterns), copied(file), `${file}: ${copied(file) ? "copied but ignored" : "in the context but never copied"}`);
  }
});

describe("the build stage, replayed", () => {
  const work = mkdtempSync(join(tmpdir(), "warden-image-"));
  const buildDir = join(work, "build");
  const appDir = join(work, "app");
  const exec = promisify(execFile);

  /** Performs a stage's COPY into `dir` (its /app), taking --from paths from `stageDirs`. */
  function replayCopy(c: DockerCopy, dir: string, stageDirs: Record<string, string>) {
    const dest = posix.resolve(APP, c.dest);
    assert.ok(dest.startsWith(APP), `Dockerfile:${c.line}: copies outside ${APP}`);
    for (const source of c.sources) {
      let from: string;
      if (c.from === undefined) from = join(ROOT, source);
      else {
        const stageDir = stageDirs[c.from];
        assert.ok(stageDir, `Dockerfile:${c.line}: cannot replay --from=${c.from}`);
        from = join(stageDir, posix.relative(APP, source));
      }
      if (basename(source) === "node_modules") {
        // A stand-in for the stage's npm install: the repository's own node_modules.
        symlinkSync(join(ROOT, "node_modules"), join(dir, posix.relative(APP, dest)), "dir");
        continue;
      }
      // A directory's contents go into dest; files go into dest/ or become dest.
      const into = statSync(from).isDirectory() || !c.dest.endsWith("/") ? "" : basename(source);
      cpSync(from, join(dir, posix.relative(APP, dest), into), { recursive: true });
    }
  }

  before(async () => {
    const distCopy = copies(runtime).find((c) => c.sources.includes(`${APP}/dist`));
    assert.ok(distCopy?.from, "the final stage copies no dist from a build stage");
    const build = stageNamed(distCopy.from)!;
    mkdirSync(buildDir);
    symlinkSync(join(ROOT, "node_modules"), join(buildDir, "node_modules"), "dir");
    for (const c of copies(build)) replayCopy(c, buildDir, {});
    const runs = only(build, "RUN").filter((r) => !isInstall(r.args));
    assert.ok(runs.some((r) => r.args === "npm run build"), "the build stage does not run npm run build");
    for (const r of runs) await exec("sh", ["-c", r.args], { cwd: buildDir });

    const prodDeps = copies(runtime).find((c) => c.sources.includes(`${APP}/node_modules`))!;
    mkdirSync(appDir);
    for (const c of copies(runtime)) replayCopy(c, appDir, { [distCopy.from]: buildDir, [prodDeps.from!]: join(work, "deps") });
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  /** Runs the image's entrypoint with `args`, in its WORKDIR. */
  const entrypoint = (args: string[]) =>
    exec(process.execPath, ["dist/cli/main.js", ...args], { cwd: appDir, env: { ...process.env, NODE_ENV: "production" } });

  test("dist holds JavaScript and the non-TypeScript files of src, and no TypeScript, source maps or tests", () => {
    const dist = join(appDir, "dist");
    const files = readdirSync(dist, { recursive: true, encoding: "utf8" }).filter((f) => statSync(join(dist, f)).isFile());
    assert.ok(files.includes(join("cli", "main.js")));
    // The sidecar starts from its one-file bundle (main.js falls back to the modules without it, slower).
    assert.ok(files.includes(join("sidecar", "sidecar-bundle.js")), "the build made no sidecar bundle");
    for (const f of files) {
      assert.doesNotMatch(f, /\.(ts|map)$|\.test\.js$/, `dist/${f}`);
    }
    // Assets the code reads beside itself, such as the SQL migrations.
    const assets = readdirSync(join(ROOT, "src"), { recursive: true, encoding: "utf8" }).filter(
      (f) => !f.endsWith(".ts") && statSync(join(ROOT, "src", f)).isFile(),
    );
    assert.ok(assets.length > 0);
    for (const a of assets) assert.ok(files.includes(a), `src/${a} is missing from dist`);
  });

  test("warden --help and --version, and <role> --help for the default command and every role in deploy/, list each flag", async () => {
    const { stdout } = await entrypoint(["--help"]);
    assert.match(stdout, /^Usage: warden/);
    // Read from package.json beside dist/: the final stage must copy it.
    assert.equal((await entrypoint(["--version"])).stdout.trim(), pkg.version);
    const cmdRole = execForm(last(runtime, "CMD") ?? "")![0]!;
    assert.ok(isRole(cmdRole));
    const roles = new Set([cmdRole, ...wardenContainers(loadManifests(), cmdRole).map((w) => w.role)]);
    for (const role of roles) {
      const help = (await entrypoint([role, "--help"])).stdout;
      for (const f of ROLE_FLAGS[role]) {
        assert.ok(help.includes(`--${f.name} `) && help.includes(`[${f.env}]`), `warden ${role} --help lacks --${f.name} [${f.env}]`);
      }
    }
  });

  test("each Warden container of deploy/, run with its manifest's environment, answers its probes on the ports they name", async () => {
    const cmdRole = execForm(last(runtime, "CMD") ?? "")![0]!;
    assert.ok(isRole(cmdRole));
    // Control planes first: sidecars need one to dial.
    const wardens = wardenContainers(loadManifests(), cmdRole).sort((a, b) => Number(a.role === "sidecar") - Number(b.role === "sidecar"));
    const database = await createPostgresDatabase();
    const running: RoleProcess[] = [];
    let controlPlaneGrpc: string | undefined;
    try {
      for (const [i, w] of wardens.entries()) {
        const env = { ...w.env };
        // The manifest's ports, moved to free loopback ports: manifest port → local port.
        const local = new Map<number, number>();
        for (const flag of listenerFlags(w.role)) {
          const address = listenAddress(w, flag);
          if (address === undefined) continue;
          const port = await freePort();
          local.set(splitHostPort(address).port, port);
          env[ROLE_FLAGS[w.role].find((f) => f.name === flag)!.env] = `127.0.0.1:${port}`;
        }
        if (env.DATABASE_URL !== undefined) env.DATABASE_URL = database.url;
        if (w.role === "sidecar") {
          assert.ok(controlPlaneGrpc, "no control plane started before the sidecar");
          env.WARDEN_CONTROL_PLANE = `http://${controlPlaneGrpc}`;
        }
        // Files from Secrets: present, with placeholder content; the audit
        // key must be a real key (a replica that cannot sign does not start).
        for (const name of Object.keys(env).filter((n) => n.endsWith("_FILE"))) {
          env[name] = join(work, `${i}-${name}`);
          writeFileSync(env[name], name === "WARDEN_AUDIT_KEY_FILE" ? JSON.stringify(generateKeyPairSync("ed25519").privateKey.export({ format: "jwk" })) : "placeholder\n");
        }
        const proc = startRole(appDir, w.container.args ?? [], env);
        running.push(proc);
        await proc.listening;
        const at = `${w.file}: ${w.container.name} (warden ${w.role})`;
        for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"] as const) {
          const probe = w.container[kind];
          if (probe?.grpc !== undefined) {
            const port = local.get(probe.grpc.port as number);
            assert.ok(port, `${at}: ${kind} port ${String(probe.grpc.port)} is no listener of the role`);
            const status = await grpcHealthCheck(`127.0.0.1:${port}`).catch((err: unknown) => {
              throw new Error(`${at}: ${kind} port ${String(probe.grpc!.port)}: no gRPC health answer (${String(err)})`);
            });
            // A sidecar with a placeholder token cannot sync, so it may say NOT_SERVING; it must still answer.
            const expected = w.role === "sidecar" ? [HealthCheckResponse_ServingStatus.SERVING, HealthCheckResponse_ServingStatus.NOT_SERVING] : [HealthCheckResponse_ServingStatus.SERVING];
            assert.ok(expected.includes(status), `${at}: ${kind} on ${port} says ${HealthCheckResponse_ServingStatus[status]}`);
          }
          if (probe?.httpGet !== undefined) {
            const named = w.container.ports?.find((p) => p.name === probe.httpGet!.port || p.containerPort === probe.httpGet!.port);
            const port = named && local.get(named.containerPort);
            assert.ok(port, `${at}: ${kind} port ${String(probe.httpGet.port)} is no listener of the role`);
            const res = await fetch(`http://127.0.0.1:${port}${probe.httpGet.path ?? "/"}`).catch((err: unknown) => {
              throw new Error(`${at}: ${kind} port ${String(probe.httpGet!.port)}: no HTTP answer (${String(err)})`);
            });
            assert.equal(res.status, 200, `${at}: ${kind} GET ${probe.httpGet.path} on ${port}`);
          }
        }
        if (w.role === "control-plane") controlPlaneGrpc = `127.0.0.1:${local.get(splitHostPort(listenAddress(w, "grpc-listen")!).port)}`;
      }
      // Sidecars first, as Kubernetes stops them after their agents.
      for (const proc of running.reverse()) {
        assert.equal(await proc.stop(), 0, proc.stderr());
        // Ended on its own once closed, not by the fallback exit.
        assert.ok(proc.messages.includes("stopped") && !proc.messages.includes(LINGERED_MESSAGE), proc.messages.join(", "));
      }
    } finally {
      for (const proc of running) proc.kill();
      await database.drop();
    }
  });

  test("the default command, moved to loopback ports, serves on the embedded store, answers health checks and stops on SIGTERM", async () => {
    const [role, ...args] = execForm(last(runtime, "CMD") ?? "")!;
    const dataDir = join(work, "serve-data");
    // The image's own arguments, with the listeners on free loopback ports and the data in a temporary directory.
    const moved = await Promise.all(
      args.map(async (a, i) => (args[i - 1]?.endsWith("-listen") ? `127.0.0.1:${await freePort()}` : args[i - 1] === "--data-dir" ? dataDir : a)),
    );
    assert.ok(args.includes("--data-dir"), "the default command should keep its data in the image's data directory");
    const serve = startRole(appDir, [role!, ...moved], {});
    try {
      const line = await serve.listening;
      // Listening means the migrations ran: they shipped beside the compiled store.
      assert.ok(existsSync(dataDir));
      // Answered requests also mean the signal handlers are in place.
      assert.equal(await grpcHealthCheck(`127.0.0.1:${String(line.grpcPort)}`), HealthCheckResponse_ServingStatus.SERVING);
      assert.equal((await fetch(`http://127.0.0.1:${String(line.httpPort)}/healthz`)).status, 200);
      assert.equal(await serve.stop(), 0, serve.stderr());
      assert.ok(serve.messages.includes("stopped") && !serve.messages.includes(LINGERED_MESSAGE), serve.messages.join(", "));
    } finally {
      serve.kill();
    }
  });
});
