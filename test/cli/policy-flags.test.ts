import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CliError } from "../../src/cli/cli-error.js";
import { parseCommandLine } from "../../src/cli/parse-command-line.js";
import { buildPolicy, POLICY_FLAGS } from "../../src/cli/policy-flags.js";
import { Weekday } from "../../src/gen/warden/v1/policy_pb.js";

function policy(argv: string[], defaultCurrency?: string) {
  return buildPolicy(parseCommandLine("sessions create", POLICY_FLAGS, argv).flags, defaultCurrency);
}

describe("buildPolicy", () => {
  test("maps every flag to its field, money exactly in micros", () => {
    const p = policy([
      "--currency", "eur",
      "--max-per-transaction", "50",
      "--max-per-day", "200",
      "--max-per-week", "500.5",
      "--max-per-month", "1500",
      "--max-total", "1000",
      "--max-actions", "100",
      "--max-actions-per-day", "10",
      "--max-actions-per-week", "40",
      "--max-actions-per-month", "120",
      "--approval-above", "100",
      "--allow-merchant", "acme", "--allow-merchant", "globex",
      "--block-merchant", "evil",
      "--allow-type", "payment", "--allow-type", "tool_call",
      "--time-zone", "Europe/Berlin",
      "--week-start", "sunday",
      "--hold-ttl", "30m",
      "--pause-after-denials", "5",
      "--fail-after-errors", "20",
    ]);
    assert.equal(p.currencyCode, "EUR");
    assert.equal(p.maxPerTransactionMicros, 50_000_000n);
    assert.equal(p.daily?.maxValueMicros, 200_000_000n);
    assert.equal(p.daily?.maxActions, 10n);
    assert.equal(p.weekly?.maxValueMicros, 500_500_000n);
    assert.equal(p.weekly?.maxActions, 40n);
    assert.equal(p.monthly?.maxValueMicros, 1_500_000_000n);
    assert.equal(p.monthly?.maxActions, 120n);
    assert.equal(p.lifetime?.maxValueMicros, 1_000_000_000n);
    assert.equal(p.lifetime?.maxActions, 100n);
    assert.equal(p.requireApprovalAboveMicros, 100_000_000n);
    assert.deepEqual(p.allowedMerchants, ["acme", "globex"]);
    assert.deepEqual(p.blockedMerchants, ["evil"]);
    assert.deepEqual(p.allowedActionTypes, ["payment", "tool_call"]);
    assert.equal(p.timeZone, "Europe/Berlin");
    assert.equal(p.weekStart, Weekday.SUNDAY);
    assert.equal(p.holdTtl?.seconds, 1800n);
    assert.equal(p.circuitBreaker?.pauseAfterDenialsInARow, 5);
    assert.equal(p.circuitBreaker?.failAfterErrors, 20);
  });

  test("one breaker flag leaves the other threshold off", () => {
    const p = policy(["--fail-after-errors", "3"], "USD");
    assert.equal(p.circuitBreaker?.failAfterErrors, 3);
    assert.equal(p.circuitBreaker?.pauseAfterDenialsInARow, 0);
    assert.equal(policy([], "USD").circuitBreaker, undefined);
  });

  test("an unset limit stays unset (no limit); zero is kept (nothing may be spent)", () => {
    const p = policy(["--max-per-day", "0"], "USD");
    assert.equal(p.daily?.maxValueMicros, 0n);
    assert.equal(p.daily?.maxActions, undefined);
    assert.equal(p.weekly, undefined);
    assert.equal(p.lifetime, undefined);
    assert.equal(p.maxPerTransactionMicros, undefined);
    assert.equal(p.requireApprovalAboveMicros, undefined);
    assert.equal(p.holdTtl, undefined);
    assert.equal(p.weekStart, Weekday.UNSPECIFIED);
  });

  test("an action limit alone makes a window with no value limit", () => {
    const p = policy(["--max-actions-per-week", "5"], "USD");
    assert.equal(p.weekly?.maxActions, 5n);
    assert.equal(p.weekly?.maxValueMicros, undefined);
  });

  test("currency: --currency, else the default, else empty for the caller to fill", () => {
    assert.equal(policy([], "USD").currencyCode, "USD");
    assert.equal(policy(["--currency", "JPY"], "USD").currencyCode, "JPY");
    assert.equal(policy([]).currencyCode, "");
  });

  const errors: [string[], string][] = [
    [["--max-per-day", "abc"], '--max-per-day: "abc"'],
    [["--max-per-week", "1e3"], '--max-per-week: "1e3"'],
    [["--max-total=-5"], "--max-total: amount must not be negative"],
    [["--max-per-transaction", "12.3456789"], "--max-per-transaction: "],
    [["--approval-above", "x"], '--approval-above: "x"'],
    [["--max-actions", "ten"], '--max-actions: "ten"'],
    [["--max-actions-per-month", "2.5"], '--max-actions-per-month: "2.5"'],
    [["--currency", "dollars"], '--currency: "dollars"'],
    [["--time-zone", "Berlin"], '--time-zone: "Berlin"'],
    [["--week-start", "someday"], '--week-start: "someday"'],
    [["--hold-ttl", "8d"], "--hold-ttl: must be at most 7d"],
    [["--hold-ttl", "500ms"], "--hold-ttl: must be at least 1s"],
    [["--hold-ttl", "15"], '--hold-ttl: "15"'],
    [["--allow-merchant", ""], "--allow-merchant: value must not be empty"],
    [["--pause-after-denials", "three"], '--pause-after-denials: "three"'],
    [["--fail-after-errors", "1000001"], "--fail-after-errors: must be at most 1000000"],
  ];
  for (const [argv, prefix] of errors) {
    test(`${argv.join(" ")} fails naming the flag`, () => {
      assert.throws(
        () => policy(argv, "USD"),
        (e: unknown) => e instanceof CliError && e.message.startsWith(prefix),
      );
    });
  }
});
