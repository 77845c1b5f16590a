import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { StartSteps } from "../../src/server/start-steps.js";

describe("StartSteps", () => {
  test("a step that succeeds returns its value and closes nothing", async () => {
    const steps = new StartSteps();
    const closed: string[] = [];
    steps.opened(() => closed.push("db"));
    assert.equal(await steps.run(async () => 42), 42);
    assert.equal(await steps.run(() => "sync"), "sync");
    assert.deepEqual(closed, []);
  });

  test("a step that fails closes what was opened, last first, and rethrows its own error", async () => {
    const steps = new StartSteps();
    const closed: string[] = [];
    steps.opened(() => closed.push("db"));
    steps.opened(async () => {
      closed.push("feed");
      throw new Error("feed would not stop");
    });
    steps.opened(() => closed.push("listener"));
    const bind = new Error("listen EADDRINUSE");
    await assert.rejects(
      steps.run(() => Promise.reject(bind)),
      (err) => err === bind,
    );
    // A close that failed did not stop the ones after it, nor hide the start's error.
    assert.deepEqual(closed, ["listener", "feed", "db"]);
  });

  test("a step that throws synchronously counts as failed too", async () => {
    const steps = new StartSteps();
    let closed = 0;
    steps.opened(() => closed++);
    await assert.rejects(
      steps.run(() => {
        throw new Error("bad TLS file");
      }),
      /bad TLS file/,
    );
    assert.equal(closed, 1);
  });
});
