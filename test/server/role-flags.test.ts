import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { databaseUrlFlag, parseRoleFlags, ROLE_FLAGS, usageOf } from "../../src/server/role-flags.js";
import { runWardenCli } from "../helpers/server-process.js";

const sidecarArgs = ["--control-plane", "http://127.0.0.1:1", "--agent-id", "a1"];

describe("role flags", () => {
  it("a flag beats its environment variable, which beats the default", () => {
    assert.equal(parseRoleFlags("sidecar", sidecarArgs, {}).values["optimize-for"], "memory");
    assert.equal(parseRoleFlags("sidecar", sidecarArgs, { WARDEN_OPTIMIZE_FOR: "speed" }).values["optimize-for"], "speed");
    assert.equal(
      parseRoleFlags("sidecar", [...sidecarArgs, "--optimize-for", "memory"], { WARDEN_OPTIMIZE_FOR: "speed" }).values["optimize-for"],
      "memory",
    );
  });

  it("refuses a value outside a flag's choices, naming the flag and the choices", () => {
    assert.throws(() => parseRoleFlags("sidecar", [...sidecarArgs, "--optimize-for", "fast"], {}), {
      message: '--optimize-for: "fast" is not one of memory, speed',
    });
    assert.throws(() => parseRoleFlags("sidecar", sidecarArgs, { WARDEN_DECISION_MODE: "loose" }), {
      message: '--decision-mode: "loose" is not one of lease, exact',
    });
    assert.throws(() => parseRoleFlags("serve", ["--log-level", "verbose"], {}), { message: '--log-level: "verbose" is not one of trace, debug, info, warn, error' });
  });

  it("every default is one of its flag's choices", () => {
    for (const [role, specs] of Object.entries(ROLE_FLAGS)) {
      for (const f of specs) {
        if (f.choices !== undefined && f.default !== undefined) assert.ok(f.choices.includes(f.default), `${role} --${f.name}`);
      }
    }
  });

  it("help lists the sidecar's optimize-for flag with its variable and default", () => {
    assert.match(usageOf("sidecar", ""), /--optimize-for memory\|speed .*\[WARDEN_OPTIMIZE_FOR\] \(default memory\)/);
  });

  it("a --database-url that is no PostgreSQL URL is refused naming the flag, without its password", () => {
    for (const url of ["postgres://app:pw@[bad/db", "notaurl", "mysql://app:pw@db/warden"]) {
      assert.throws(() => databaseUrlFlag(url), (e: Error) => e.message.startsWith("--database-url (or DATABASE_URL): ") && !e.message.includes(":pw@"));
    }
    for (const url of ["postgres://app:pw@db:5432/warden?sslmode=require", "postgresql:///warden?host=/var/run/postgresql", "socket:/var/run/postgresql?db=warden"]) {
      assert.equal(databaseUrlFlag(url), url);
    }
    assert.equal(databaseUrlFlag(""), undefined, "empty: the embedded store");
  });

  it("serve stops at a bad --database-url before it opens anything", async () => {
    const run = await runWardenCli("http://127.0.0.1:1", "serve", "--database-url", "postgres://app:pw@[bad/db", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0");
    assert.equal(run.code, 1);
    assert.match(run.stderr.trim(), /^warden: --database-url \(or DATABASE_URL\): .* is not a PostgreSQL URL/);
  });

  it("a bad --shutdown-grace stops every role before it starts (found after, it left the process serving)", async () => {
    for (const role of [["serve"], ["control-plane"], ["sidecar", ...sidecarArgs]]) {
      const run = await runWardenCli("http://127.0.0.1:1", ...role, "--shutdown-grace", "abc", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0");
      assert.equal(run.code, 1, role[0]);
      assert.equal(run.stderr.trim(), 'warden: --shutdown-grace: "abc" is not a positive whole number', role[0]);
    }
  });

  it("the sidecar command stops at a bad choice before it connects anywhere", async () => {
    const run = await runWardenCli("http://127.0.0.1:1", "sidecar", ...sidecarArgs, "--optimize-for", "fast");
    assert.equal(run.code, 1);
    assert.equal(run.stderr.trim(), 'warden: --optimize-for: "fast" is not one of memory, speed');
  });
});
