// ExportSession reads the session's counters, its history and its keys in
// separate statements: unless they share one snapshot, a capture (or a
// check) that commits between them makes a snapshot whose counters predate
// it and whose history postdates it, and the import then restores neither
// its hold nor its spend. PostgreSQL only: PGlite runs one transaction at a
// time, so nothing can commit in between there.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import type { AuthorizeResponse, CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { withQueryHook } from "../helpers/query-hook.js";
import { ManualClock, payment, sessionRequest, USD } from "../helpers/fixtures.js";

const NO_HASH = new Uint8Array(0);
const EXPORT_HISTORY_SQL = "FROM actions WHERE session_id = $1 ORDER BY seq";

describe("ExportSession while the session is spending, on postgres", () => {
  let source: TestDatabase;
  let target: TestDatabase;
  let clock: ManualClock;
  let store: WardenStore;
  let targetStore: WardenStore;
  // Set while a test wants the export's history read held back.
  let gate: { arrived: () => void; open: Promise<void> } | undefined;

  before(async () => {
    source = await openTestDatabase("postgres");
    target = await openTestDatabase("pglite");
    clock = new ManualClock();
    // The source's database, with the export's history statement made to
    // wait (when asked) so that another call can commit before it runs: as
    // a busy server's scheduling might.
    const gated = withQueryHook(source.db, async (sql) => {
      const g = gate;
      if (g !== undefined && sql.includes(EXPORT_HISTORY_SQL)) {
        gate = undefined;
        g.arrived();
        await g.open;
      }
    });
    store = createWardenStore({ db: gated, now: clock.now });
    targetStore = createWardenStore({ db: target.db, now: clock.now });
  });
  after(async () => {
    await source?.drop();
    await target?.drop();
  });

  test("a capture committed while an export runs is in its snapshot as spent or as held, never lost", async () => {
    const s = await store.createSession(sessionRequest("racer", { lifetime: { maxValueMicros: USD(100) } }), NO_HASH);
    const auth = (await store.decide({ method: "authorize", sessionId: s.sessionId, action: payment(USD(60)), idempotencyKey: "", requestHash: NO_HASH })) as AuthorizeResponse;
    assert.equal(auth.decision!.outcome, Outcome.ALLOW);

    let release!: () => void;
    let arrived!: () => void;
    const reached = new Promise<void>((r) => (arrived = r));
    gate = { arrived, open: new Promise<void>((r) => (release = r)) };
    const exporting = store.exportSession(s.sessionId);
    await reached; // the export has read the counters (60 held), not yet the history
    // Given its chance to commit before the export reads the history (a
    // store that makes the capture wait for the export is as good).
    const capturing = store.capture({ sessionId: s.sessionId, authorizationId: auth.authorizationId, idempotencyKey: "" } as never, NO_HASH);
    await Promise.race([capturing, new Promise((r) => setTimeout(r, 1000))]);
    release();
    const snap = await exporting;
    await capturing;

    const imported = await targetStore.importSession(snap);
    const u = imported.usage!;
    assert.equal(
      u.valueCommittedMicros + u.valueHeldMicros,
      USD(60),
      `the 60 captured at the source must come back as spent (or held); got committed ${u.valueCommittedMicros}, held ${u.valueHeldMicros}`,
    );
    // What that loss means: the imported session spends its whole limit again.
    const again = (await targetStore.decide({ method: "check", sessionId: s.sessionId, action: payment(USD(100)), idempotencyKey: "", requestHash: NO_HASH })) as CheckResponse;
    assert.equal(Outcome[again.decision!.outcome], Outcome[Outcome.DENY], "60 spent + 100 more passes the lifetime limit of 100");
  });
});
