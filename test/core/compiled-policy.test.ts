import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { compilePolicy, DEFAULT_HOLD_TTL_MS, EMPTY_POLICY } from "../../src/core/compiled-policy.js";
import { SessionPolicySchema, Weekday } from "../../src/gen/warden/v1/policy_pb.js";
import { units } from "./fixtures.js";

describe("compilePolicy", () => {
  test("an empty policy has no limits, allows every merchant and type, weeks from Monday, 15-minute holds", () => {
    const p = compilePolicy(create(SessionPolicySchema, { currencyCode: "EUR" }));
    assert.equal(p.currency, "EUR");
    for (const w of ["day", "week", "month", "lifetime"] as const) {
      assert.deepEqual(p.limits[w], { maxValue: undefined, maxActions: undefined }, w);
    }
    assert.equal(p.maxPerTransaction, undefined);
    assert.equal(p.approvalAbove, undefined);
    assert.equal(p.allowedMerchants, null);
    assert.equal(p.blockedMerchants.size, 0);
    assert.equal(p.allowedActionTypes, null);
    assert.equal(p.timeZone, "");
    assert.equal(p.weekStart, 1);
    assert.equal(p.holdTtlMs, 15 * 60 * 1000);
    assert.equal(DEFAULT_HOLD_TTL_MS, 15 * 60 * 1000);
    assert.equal(p.hasWindowLimits, false);
  });

  test("limits, lists, zone, week start and hold TTL are carried over; zero limits stay zero", () => {
    const p = compilePolicy(
      create(SessionPolicySchema, {
        currencyCode: "USD",
        daily: { maxValueMicros: units(10) },
        weekly: { maxActions: 0n },
        monthly: { maxValueMicros: 0n, maxActions: 7n },
        lifetime: { maxValueMicros: units(1000), maxActions: 100n },
        maxPerTransactionMicros: units(5),
        requireApprovalAboveMicros: 0n,
        allowedMerchants: ["acme", "initech"],
        blockedMerchants: ["evil"],
        allowedActionTypes: ["payment"],
        timeZone: "Europe/Berlin",
        weekStart: Weekday.SUNDAY,
        holdTtl: { seconds: 30n, nanos: 500_000_000 },
      }),
    );
    assert.deepEqual(p.limits.day, { maxValue: units(10), maxActions: undefined });
    assert.deepEqual(p.limits.week, { maxValue: undefined, maxActions: 0n });
    assert.deepEqual(p.limits.month, { maxValue: 0n, maxActions: 7n });
    assert.deepEqual(p.limits.lifetime, { maxValue: units(1000), maxActions: 100n });
    assert.equal(p.maxPerTransaction, units(5));
    assert.equal(p.approvalAbove, 0n);
    assert.deepEqual(p.allowedMerchants, new Set(["acme", "initech"]));
    assert.deepEqual(p.blockedMerchants, new Set(["evil"]));
    assert.deepEqual(p.allowedActionTypes, new Set(["payment"]));
    assert.equal(p.timeZone, "Europe/Berlin");
    assert.equal(p.weekStart, 7);
    assert.equal(p.holdTtlMs, 30_500);
    assert.equal(p.hasWindowLimits, true);
  });

  test("each Weekday maps to its ISO number", () => {
    const iso: [Weekday, number][] = [
      [Weekday.UNSPECIFIED, 1],
      [Weekday.MONDAY, 1],
      [Weekday.TUESDAY, 2],
      [Weekday.WEDNESDAY, 3],
      [Weekday.THURSDAY, 4],
      [Weekday.FRIDAY, 5],
      [Weekday.SATURDAY, 6],
      [Weekday.SUNDAY, 7],
    ];
    for (const [weekday, n] of iso) assert.equal(compilePolicy(create(SessionPolicySchema, { weekStart: weekday })).weekStart, n, Weekday[weekday]);
  });

  test("a single limit anywhere, even zero, means window limits are tracked", () => {
    for (const init of [{ daily: { maxActions: 0n } }, { lifetime: { maxValueMicros: 1n } }, { monthly: { maxActions: 3n } }]) {
      assert.equal(compilePolicy(create(SessionPolicySchema, init)).hasWindowLimits, true, JSON.stringify(init, (_, x) => (typeof x === "bigint" ? String(x) : x)));
    }
    // Per-transaction and approval limits are not window limits.
    assert.equal(compilePolicy(create(SessionPolicySchema, { maxPerTransactionMicros: 1n, requireApprovalAboveMicros: 1n })).hasWindowLimits, false);
  });

  test("EMPTY_POLICY matches the compiled empty policy", () => {
    const compiled = compilePolicy(create(SessionPolicySchema, {}));
    assert.deepEqual(EMPTY_POLICY, compiled);
  });
});
