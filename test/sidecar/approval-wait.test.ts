/**
 * A session whose agent waits on a person's approval does not idle, on a
 * sidecar either: the sidecar learns of the wait from the control plane's
 * NEEDS_APPROVAL answer, before the sync brings the store's new state.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Outcome, Reason } from "../../src/gen/warden/v1/decision_pb.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";
import { storeSuite } from "../helpers/store-suite.js";

const NO_HASH = new Uint8Array(0);

describe("a sidecar's session waiting on an approval", () => {
  const s = storeSuite("pglite", "approval-wait");

  test("does not idle before the approval's deadline, and does after it", async () => {
    const ses = await s.store.createSession(
      sessionRequest(s.agent(), { requireApprovalAboveMicros: USD(100), approvalTtl: durationFromMs(10 * 60_000), daily: { maxValueMicros: USD(1000) } }, { idleTimeout: durationFromMs(60_000) }),
      NO_HASH,
    );
    const sc = inProcessSidecar(s.store, "h-wait", { now: s.clock.now });
    const asked = await sc.check(ses.sessionId, payment(USD(150)));
    assert.equal(Outcome[asked.decision!.outcome], "NEEDS_APPROVAL");
    assert.deepEqual(sc.paths, ["exact"], "the store creates approvals");
    // The agent asks for something small while the person takes 5 minutes.
    s.clock.advance(5 * 60_000);
    const small = await sc.check(ses.sessionId, payment(USD(10)));
    assert.deepEqual([Outcome[small.decision!.outcome], small.decision!.reasons.map((r) => Reason[r])], ["ALLOW", []]);
    assert.equal(sc.paths.at(-1), "lease", "decided here, from a lease");
    // Nobody decides; an idle minute after the deadline, the session has lapsed here too.
    s.clock.advance(5 * 60_000 + 60_000);
    const late = await sc.check(ses.sessionId, payment(USD(10)));
    assert.deepEqual(late.decision!.reasons.map((r) => Reason[r]), ["SESSION_IDLE_TIMEOUT"]);
    sc.engine.stop();
    assert.ok(await sc.reports.drain(Date.now() + 5_000), "every record reached the store");
  });
});
