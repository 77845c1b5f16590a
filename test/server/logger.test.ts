import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { redactUrl } from "../../src/server/redact-url.js";
import { createPostgresDatabase } from "../helpers/databases.js";
import { startServerProcess, startWardenProcess, storeArgs } from "../helpers/server-process.js";

describe("redactUrl", () => {
  it("masks the credentials a database URL may carry as query parameters, as libpq and node-postgres take them", () => {
    assert.equal(redactUrl("postgres://app@db:5432/warden?password=Hunter2&sslmode=require"), "postgres://app@db:5432/warden?password=***&sslmode=require");
    assert.equal(
      redactUrl("postgres://app:pw@db/warden?sslpassword=s3cret&sslkey=/keys/client.key&application_name=warden"),
      "postgres://app:***@db/warden?sslpassword=***&sslkey=***&application_name=warden",
    );
  });

  it("masks any query parameter named like a secret, in any URL (a webhook receiver's token)", () => {
    assert.equal(redactUrl("https://hooks.example/in?token=sk_live_1&team=ops"), "https://hooks.example/in?token=***&team=ops");
    assert.equal(redactUrl("https://hooks.example/in?api_key=a&X-Auth=b&clientSecret=c&sig=d"), "https://hooks.example/in?api_key=***&X-Auth=***&clientSecret=***&sig=***");
    assert.equal(redactUrl("https://user:pw@hooks.example/in?access_token=t"), "https://user:***@hooks.example/in?access_token=***");
  });

  it("leaves a URL with nothing secret as it was spelled", () => {
    assert.equal(redactUrl("https://hooks.example/in?team=ops%20east&n=1"), "https://hooks.example/in?team=ops%20east&n=1");
    assert.equal(redactUrl("postgres://postgres@127.0.0.1:5432/test"), "postgres://postgres@127.0.0.1:5432/test");
  });
});

describe("logs of warden serve and warden control-plane", () => {
  it("never carry a database password given as a ?password= parameter of the URL", async () => {
    const store = await createPostgresDatabase();
    const withPassword = `${store.url}?password=Hunter2-db-secret`;
    try {
      for (const role of ["serve", "control-plane"] as const) {
        const p = role === "serve" ? await startServerProcess({ databaseUrl: withPassword }) : await startWardenProcess(role, storeArgs({ databaseUrl: withPassword }));
        await p.stop();
        const listening = p.logs.find((l) => l.msg === "listening");
        assert.match(String(listening?.store), /\?password=\*\*\*$/, `warden ${role} logs where its store is`);
        const leaked = p.logs.filter((l) => JSON.stringify(l).includes("Hunter2-db-secret"));
        assert.deepEqual(leaked, [], `warden ${role} logged the database password`);
      }
    } finally {
      await store.drop();
    }
  });
});
