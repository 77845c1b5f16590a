import { after, before } from "node:test";
import type { ActionRecord, AuthorizeResponse, CheckResponse } from "../../src/gen/warden/v1/policy_service_pb.js";
import { createWardenStore, type WardenStore } from "../../src/store/warden-store.js";
import { type Driver, openTestDatabase, type TestDatabase } from "./databases.js";
import { ManualClock, payment } from "./fixtures.js";
import { assertLedgerConsistent } from "./ledger.js";

const NO_HASH = new Uint8Array(0);

/** A store on a database of its own, for the tests of one describe block. */
export interface StoreSuite {
  readonly t: TestDatabase;
  readonly clock: ManualClock;
  readonly store: WardenStore;
  /** A new agent id, unique in the suite. */
  agent(): string;
  check(sessionId: string, amount: bigint): Promise<CheckResponse>;
  authorize(sessionId: string, amount: bigint): Promise<AuthorizeResponse>;
  capture(sessionId: string, authorizationId: string): Promise<ActionRecord>;
}

/**
 * Registers, in the enclosing describe, the hooks that open a database on
 * `driver` with a store and a manual clock before its tests, and that check
 * the books balance (unless `ledgerCheck` is false) and drop it after.
 */
export function storeSuite(driver: Driver, agentPrefix: string, opts: { ledgerCheck?: boolean } = {}): StoreSuite {
  let n = 0;
  const s = {
    agent: () => `${agentPrefix}-${driver}-${++n}`,
    check: (sessionId: string, amount: bigint) =>
      s.store.decide({ method: "check", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<CheckResponse>,
    authorize: (sessionId: string, amount: bigint) =>
      s.store.decide({ method: "authorize", sessionId, action: payment(amount), idempotencyKey: "", requestHash: NO_HASH }) as Promise<AuthorizeResponse>,
    capture: (sessionId: string, authorizationId: string) => s.store.capture({ sessionId, authorizationId, idempotencyKey: "" } as never, NO_HASH),
  } as StoreSuite & { t: TestDatabase; clock: ManualClock; store: WardenStore };
  before(async () => {
    s.t = await openTestDatabase(driver);
    s.clock = new ManualClock();
    s.store = createWardenStore({ db: s.t.db, now: s.clock.now });
  });
  after(async () => {
    if (opts.ledgerCheck !== false) await assertLedgerConsistent(s.t.db);
    await s.t.drop();
  });
  return s;
}
