import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Database } from "../../src/store/database.js";
import { createNotifyWatch } from "../../src/store/notify-watch.js";

// The database behind NotifyWatch is a stand-in here: only its LISTEN, which
// fails once as a real one does while PostgreSQL is unreachable, matters.
describe("NotifyWatch when its first LISTEN fails", () => {
  test("a LISTEN that failed once (database briefly unreachable) is tried again by the next waiter", async () => {
    let attempts = 0;
    const db = {
      listen: async (_channel: string, _onNotify: () => void) => {
        attempts++;
        if (attempts === 1) throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
        return async () => {};
      },
    } as unknown as Database;
    const watch = createNotifyWatch({ db, channel: "warden_events", pollMs: 10 });
    await assert.rejects(watch.mark(), /ECONNREFUSED/);
    // The database is back: a new WatchEvents/WatchApproval call marks again.
    try {
      await watch.mark();
    } catch (err) {
      assert.fail(`mark() still fails after the database came back (LISTEN attempts: ${attempts}): ${(err as Error).message}`);
    } finally {
      await watch.stop().catch(() => {});
    }
    assert.equal(attempts, 2);
  });
});
