/**
 * CliError is a mistake the CLI catches locally — an unknown flag, a bad
 * value, a missing argument — before any request is sent. Its message is
 * one line that names the flag or argument at fault, printed as
 * `warden: <message>` with exit code 1.
 */
export class CliError extends Error {
  override name = "CliError";
}
