import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CliError } from "../../src/cli/cli-error.js";
import { parseArgsError, parseCommandLine, type FlagSpec } from "../../src/cli/parse-command-line.js";

const SPECS: FlagSpec[] = [
  { name: "agent", type: "string", required: true, value: "ID", description: "" },
  { name: "label", type: "string", multiple: true, value: "K=V", description: "" },
  { name: "json", type: "boolean", description: "" },
  { name: "help", type: "boolean", short: "h", description: "" },
];

function fails(argv: string[], message: string): void {
  assert.throws(
    () => parseCommandLine("sessions create", SPECS, argv),
    (e: unknown) => e instanceof CliError && e.message === message,
  );
}

describe("parseCommandLine", () => {
  test("reads strings, repeated flags, booleans and positionals", () => {
    const { flags, positionals } = parseCommandLine("x", SPECS, ["pos", "--agent", "a1", "--label", "a=1", "--label=b=2", "--json"]);
    assert.equal(flags.string("agent"), "a1");
    assert.deepEqual(flags.strings("label"), ["a=1", "b=2"]);
    assert.equal(flags.boolean("json"), true);
    assert.equal(flags.boolean("help"), false);
    assert.equal(flags.has("label"), true);
    assert.equal(flags.string("label"), undefined, "a repeatable flag is not a single string");
    assert.deepEqual(positionals, ["pos"]);
  });
  test("unknown flags name the flag and the command's help", () => fails(["--agent", "a", "--max-per-dya", "5"], 'unknown flag --max-per-dya (see warden sessions create --help)'));
  test("unknown short flags too", () => fails(["--agent", "a", "-x"], "unknown flag -x (see warden sessions create --help)"));
  test("a missing value names the flag", () => fails(["--agent"], "--agent needs a value"));
  test("a value that looks like a flag is refused, with the way out", () =>
    fails(["--agent", "--json"], '--agent needs a value (to give one that starts with "-", write --agent=VALUE)'));
  test("a boolean with a value is refused", () => fails(["--agent", "a", "--json=yes"], "--json takes no value"));
  test("a single-valued flag given twice is refused", () => fails(["--agent", "a", "--agent", "b"], "--agent given more than once"));
  test("required flags are enforced", () => fails(["--json"], "--agent is required"));
  test("values after -- are positionals", () => {
    const { positionals } = parseCommandLine("x", SPECS, ["--agent", "a", "--", "--json"]);
    assert.deepEqual(positionals, ["--json"]);
  });
  test("parseArgsError leaves other errors alone", () => {
    const err = new Error("boom");
    assert.equal(parseArgsError(err), err);
  });
});
