import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fromJsonString } from "@bufbuild/protobuf";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { runCli } from "../../src/cli/run-cli.js";
import { ApiKeyRole, CreateApiKeyResponseSchema } from "../../src/gen/warden/v1/auth_service_pb.js";
import { booleanFlag, parseRoleFlags, ROLE_FLAGS } from "../../src/server/role-flags.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPgliteDatabase } from "../../src/store/pglite-database.js";
import { DRIVERS } from "../helpers/databases.js";
import { createStoreLocation } from "../helpers/server-process.js";

async function run(args: string[], env: Record<string, string | undefined> = {}) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runCli(args, { env, stdout: (t) => out.push(t), stderr: (t) => err.push(t) });
  return { code, stdout: out.join("\n"), stderr: err.join("\n") };
}

describe("warden keys", () => {
  test("flags are checked before anything is called", async () => {
    const noRole = await run(["keys", "create"]);
    assert.equal(noRole.code, 1);
    assert.match(noRole.stderr, /--role/);
    const badRole = await run(["keys", "create", "--role", "root"]);
    assert.match(badRole.stderr, /--role: "root" is not one of admin, approver, auditor, agent/);
    assert.match((await run(["keys", "create", "--role", "agent"])).stderr, /--agent is required with --role agent/);
    assert.match((await run(["keys", "create", "--role", "admin", "--agent", "a"])).stderr, /--agent is only for --role agent/);
    assert.match((await run(["keys", "bootstrap", "--role", "agent"])).stderr, /--agent is required/);
    // pg alone would say "Invalid URL", or look a bare word up as a host.
    for (const [url, via] of [["postgres://app:pw@[bad/db", "flag"], ["notaurl", "env"], ["http://app:hunter2@db/warden", "flag"]] as const) {
      const r = await run(["keys", "bootstrap", ...(via === "flag" ? ["--database-url", url] : [])], via === "env" ? { DATABASE_URL: url } : {});
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^warden: --database-url \(or DATABASE_URL\): .* is not a PostgreSQL URL such as postgres:\/\/user@127\.0\.0\.1:5432\/warden$/, r.stderr);
      assert.doesNotMatch(r.stderr, /pw@|hunter2/);
    }
    const help = await run(["keys", "--help"]);
    assert.equal(help.code, 0);
    for (const sub of ["bootstrap", "create", "list", "revoke"]) assert.match(help.stdout, new RegExp(`keys ${sub}`));
    assert.match((await run(["sessions", "get", "--help"])).stdout, /--api-key KEY/);
  });

  for (const driver of DRIVERS) {
    test(`bootstrap writes a working key straight into the ${driver} store, once per call`, async () => {
      const { location, drop } = await createStoreLocation(driver);
      try {
        const env = "dataDir" in location ? { WARDEN_DATA_DIR: location.dataDir } : { DATABASE_URL: location.databaseUrl };
        const res = await run(["keys", "bootstrap", "--role", "agent", "--agent", "shopper-1", "--json"], env);
        assert.equal(res.code, 0, res.stderr);
        const created = fromJsonString(CreateApiKeyResponseSchema, res.stdout);
        assert.equal(created.apiKey?.role, ApiKeyRole.AGENT);
        assert.equal(created.apiKey?.agentId, "shopper-1");
        const second = fromJsonString(CreateApiKeyResponseSchema, (await run(["keys", "bootstrap", "--json"], env)).stdout);
        assert.equal(second.apiKey?.role, ApiKeyRole.ADMIN);
        assert.notEqual(second.secret, created.secret);

        const db = "dataDir" in location ? await createPgliteDatabase(location.dataDir) : createPgDatabase({ connectionString: location.databaseUrl });
        try {
          const keys = createApiKeys({ db });
          assert.deepEqual(await keys.authenticate(created.secret), { keyId: created.apiKey!.keyId, role: "agent", agentId: "shopper-1", via: "api-key" });
          assert.equal((await keys.authenticate(second.secret)).role, "admin");
        } finally {
          await db.close();
        }
      } finally {
        await drop();
      }
    });
  }
});

describe("authentication flags", () => {
  test("every role has its own, with environment variables", () => {
    const names = (role: keyof typeof ROLE_FLAGS) => ROLE_FLAGS[role].map((f) => f.name);
    for (const f of ["require-auth", "session-token-ttl"]) assert.ok(names("serve").includes(f));
    for (const f of ["tls-cert-file", "tls-key-file", "tls-client-ca-file", "session-token-ttl"]) assert.ok(names("control-plane").includes(f));
    for (const f of ["control-plane-token-file", "tls-ca-file", "tls-cert-file", "tls-key-file"]) assert.ok(names("sidecar").includes(f));
    // Before the common flags, so help shows them with the role's own.
    assert.ok(names("serve").indexOf("require-auth") < names("serve").indexOf("log-level"));
  });

  test("--require-auth is off by default, and takes true or false from the flag or WARDEN_REQUIRE_AUTH", () => {
    assert.equal(booleanFlag(parseRoleFlags("serve", [], {}).values, "require-auth"), false);
    assert.equal(booleanFlag(parseRoleFlags("serve", ["--require-auth", "true"], {}).values, "require-auth"), true);
    assert.equal(booleanFlag(parseRoleFlags("serve", [], { WARDEN_REQUIRE_AUTH: "TRUE" }).values, "require-auth"), true);
    assert.throws(() => booleanFlag(parseRoleFlags("serve", ["--require-auth", "yes"], {}).values, "require-auth"), /--require-auth: "yes" is not true or false/);
    assert.equal(parseRoleFlags("sidecar", ["--control-plane", "http://x", "--agent-id", "a"], { WARDEN_CONTROL_PLANE_TOKEN_FILE: "/run/token" }).values["control-plane-token-file"], "/run/token");
  });
});
