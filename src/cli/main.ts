/**
 * Entry point of the `warden` command (see bin/warden.js and
 * `npm run warden`). Everything else lives in run-cli.ts so that tests can
 * run command lines without a process.
 */
import { runCli } from "./run-cli.js";

// exitCode rather than process.exit(): `warden serve` returns once it is
// listening and must keep running; client commands end when their sockets close.
process.exitCode = await runCli(process.argv.slice(2));
