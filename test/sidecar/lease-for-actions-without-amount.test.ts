import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Outcome } from "../../src/gen/warden/v1/decision_pb.js";
import { ActionSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { payment, sessionRequest, USD } from "../helpers/fixtures.js";
import { assertLedgerConsistent } from "../helpers/ledger.js";
import { inProcessSidecar } from "../helpers/in-process-sidecar.js";

const NO_HASH = new Uint8Array(0);
let t: TestDatabase;
let store: WardenStore;
before(async () => {
  t = await openTestDatabase("pglite");
  store = createWardenStore({ db: t.db, now: Date.now });
});
after(async () => {
  await assertLedgerConsistent(t.db);
  await t.drop();
});

const sidecar = (holder: string) => inProcessSidecar(store, holder);

const toolCall = () => create(ActionSchema, { type: "tool_call", merchant: "search" });

test("tool calls on a session with a value limit are decided from a lease of no value, not each through the control plane", async () => {
  const s = await store.createSession(sessionRequest("tools-agent-1", { daily: { maxValueMicros: USD(100) } }), NO_HASH);
  const sc = sidecar("sidecar-tools-1");
  for (let i = 0; i < 10; i++) assert.equal((await sc.check(s.sessionId, toolCall())).decision!.outcome, Outcome.ALLOW);
  assert.deepEqual(sc.paths, Array(10).fill("lease"), `paths: ${sc.paths.join(",")}`);
  // A payment needs a lease with value: the sidecar asks for one.
  assert.equal((await sc.check(s.sessionId, payment(USD(1)))).decision!.outcome, Outcome.ALLOW);
  assert.equal(sc.paths.at(-1), "lease");
  sc.engine.stop();
  assert.ok(await sc.reports.drain(Date.now() + 5_000), "every record reached the store");
  const u = (await store.getSession(s.sessionId)).usage!;
  assert.deepEqual([u.actionsCommitted, u.valueCommittedMicros, u.valueLeasedMicros, u.actionsLeased], [11n, USD(1), 0n, 0n]);
});

test("with an action limit, the lease of no value reserves the tool calls' action slots and no more are allowed than the limit", async () => {
  const s = await store.createSession(sessionRequest("tools-agent-2", { daily: { maxValueMicros: USD(100), maxActions: 6n } }), NO_HASH);
  const sc = sidecar("sidecar-tools-2");
  let allowed = 0;
  for (let i = 0; i < 8; i++) if ((await sc.check(s.sessionId, toolCall())).decision!.outcome === Outcome.ALLOW) allowed++;
  sc.engine.stop();
  assert.ok(await sc.reports.drain(Date.now() + 5_000));
  assert.equal(allowed, 6);
  assert.ok(sc.paths.filter((p) => p === "lease").length >= 3, `paths: ${sc.paths.join(",")}`);
  const u = (await store.getSession(s.sessionId)).usage!;
  assert.deepEqual([u.actionsCommitted, u.actionsLeased], [6n, 0n]);
});
