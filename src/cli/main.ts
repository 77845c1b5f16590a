/**
 * Entry point of the `warden` command (see bin/warden.js and
 * `npm run warden`). Everything else lives in run-cli.ts so that tests can
 * run command lines without a process.
 */
import { existsSync } from "node:fs";
import module from "node:module";

// Compiled bytecode of every module is cached on disk (NODE_COMPILE_CACHE,
// or a directory under the OS temp dir): a sidecar then starts in about
// half the time, most of which was compiling its dependencies. A cache that
// cannot be written is simply not used.
module.enableCompileCache?.();
const argv = process.argv.slice(2);

// exitCode rather than process.exit(): `warden serve` returns once it is
// listening and must keep running; client commands end when their sockets close.
if (argv[0] === "sidecar") {
  // Beside every agent, so it loads only itself: not run-cli's client
  // commands, their formatters and service descriptors (~1 MB of heap).
  // The build also bundles it with its dependencies into one file
  // (sidecar-bundle.js), which loads in less than half the time: resolving
  // and linking hundreds of modules was most of the sidecar's start. From
  // the sources (tsx) there is no bundle, and the modules load as they are.
  const bundle = new URL("../sidecar/sidecar-bundle.js", import.meta.url);
  try {
    const { sidecarCommand } = (await import(existsSync(bundle) ? bundle.href : "../sidecar/sidecar-command.js")) as typeof import("../sidecar/sidecar-command.js");
    await sidecarCommand(argv.slice(1));
  } catch (err) {
    const { describeError } = await import("./describe-error.js");
    process.stderr.write(`warden: ${describeError(err, undefined)}\n`);
    process.exitCode = 1;
  }
} else {
  const { runCli } = await import("./run-cli.js");
  process.exitCode = await runCli(argv);
}
