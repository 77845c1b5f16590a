import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatDecimalMicros, formatMoney, MICROS_PER_UNIT, parseDecimalMicros } from "../../src/core/money.js";

describe("parseDecimalMicros", () => {
  test("parses whole units and up to six decimals exactly", () => {
    const cases: [string, bigint][] = [
      ["0", 0n],
      ["1", 1_000_000n],
      ["12.5", 12_500_000n],
      ["12.50", 12_500_000n],
      ["0.000001", 1n],
      ["0.1", 100_000n],
      ["1.234567", 1_234_567n],
      ["007.25", 7_250_000n],
      ["999999.999999", 999_999_999_999n],
    ];
    for (const [text, micros] of cases) assert.equal(parseDecimalMicros(text), micros, text);
  });

  test("ignores surrounding whitespace", () => {
    assert.equal(parseDecimalMicros("  3.75\n"), 3_750_000n);
  });

  test("negative amounts", () => {
    assert.equal(parseDecimalMicros("-1.5"), -1_500_000n);
    assert.equal(parseDecimalMicros("-0.000001"), -1n);
    assert.equal(parseDecimalMicros("-0"), 0n);
  });

  test("rejects more than six decimals, exponents, and non-numbers", () => {
    for (const bad of ["1.2345678", "0.0000001", "abc", "1e3", "1E3", "", " ", "1.", ".5", "1,50", "+1", "--1", "1.2.3", "0x10", "Infinity", "NaN", "1 000", "١"]) {
      assert.throws(() => parseDecimalMicros(bad), /not a decimal amount/, JSON.stringify(bad));
    }
  });

  test("the error names the bad text", () => {
    assert.throws(() => parseDecimalMicros("12.3456789"), (e: unknown) => e instanceof Error && e.message.includes('"12.3456789"'));
  });

  test("values beyond 2^53 micros stay exact", () => {
    // 2^53 + 1 micros cannot be represented as a double.
    const big = 2n ** 53n + 1n;
    assert.equal(parseDecimalMicros("9007199254.740993"), big);
    // int64 max: 9223372036854775807 micros.
    assert.equal(parseDecimalMicros("9223372036854.775807"), 9_223_372_036_854_775_807n);
    // Larger than int64 still parses exactly; range checks belong to the protos.
    assert.equal(parseDecimalMicros("123456789012345678901234567890.123456"), 123456789012345678901234567890_123456n);
  });
});

describe("formatDecimalMicros", () => {
  test("at least two decimals, no trailing zeros beyond them", () => {
    const cases: [bigint, string][] = [
      [0n, "0.00"],
      [1n, "0.000001"],
      [10n, "0.00001"],
      [100_000n, "0.10"],
      [1_000_000n, "1.00"],
      [12_500_000n, "12.50"],
      [12_340_000n, "12.34"],
      [12_345_000n, "12.345"],
      [1_234_567n, "1.234567"],
    ];
    for (const [micros, text] of cases) assert.equal(formatDecimalMicros(micros), text, String(micros));
  });

  test("negative amounts carry one minus sign", () => {
    assert.equal(formatDecimalMicros(-1_500_000n), "-1.50");
    assert.equal(formatDecimalMicros(-1n), "-0.000001");
  });

  test("values beyond 2^53 micros stay exact", () => {
    assert.equal(formatDecimalMicros(2n ** 53n + 1n), "9007199254.740993");
    assert.equal(formatDecimalMicros(9_223_372_036_854_775_807n), "9223372036854.775807");
    assert.equal(formatDecimalMicros(-9_223_372_036_854_775_808n), "-9223372036854.775808");
  });

  test("formatMoney appends the currency code", () => {
    assert.equal(formatMoney(12_500_000n, "USD"), "12.50 USD");
    assert.equal(formatMoney(-1n, "EUR"), "-0.000001 EUR");
  });

  test("formatMoney shows a currency's own minor units, and finer micros where the amount has them", () => {
    assert.equal(formatMoney(1000n * MICROS_PER_UNIT, "JPY"), "1000 JPY");
    assert.equal(formatMoney(100_500_000n, "JPY"), "100.5 JPY");
    assert.equal(formatMoney(1_500_000n, "KWD"), "1.500 KWD");
    assert.equal(formatMoney(1_234_567n, "KWD"), "1.234567 KWD");
    assert.equal(formatMoney(0n, "JPY"), "0 JPY");
    assert.equal(formatMoney(-2_000_000n, "BHD"), "-2.000 BHD");
    // A code the runtime cannot tell gets two.
    assert.equal(formatMoney(5_000_000n, "XYZ"), "5.00 XYZ");
  });
});

describe("round trips", () => {
  test("parse(format(m)) is m, across signs, digit counts and 2^53", () => {
    const samples: bigint[] = [0n, 1n, 9n, 10n, 99n, 100n, 999_999n, 1_000_000n, 1_000_001n, 12_500_000n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n];
    // Plus every power-of-ten neighbourhood up to 10^20.
    for (let p = 1n; p <= 10n ** 20n; p *= 10n) samples.push(p - 1n, p, p + 1n);
    for (const m of samples) {
      for (const v of [m, -m]) assert.equal(parseDecimalMicros(formatDecimalMicros(v)), v, String(v));
    }
  });

  test("format(parse(s)) is s in canonical form", () => {
    for (const s of ["0.00", "0.000001", "1.00", "12.50", "12.345", "-3.141592", "9007199254.740993"]) {
      assert.equal(formatDecimalMicros(parseDecimalMicros(s)), s);
    }
    // Non-canonical input comes back canonical.
    assert.equal(formatDecimalMicros(parseDecimalMicros("007.5")), "7.50");
    assert.equal(formatDecimalMicros(parseDecimalMicros("1")), "1.00");
    assert.equal(formatDecimalMicros(parseDecimalMicros("2.000000")), "2.00");
  });

  test("one unit is a million micros", () => {
    assert.equal(MICROS_PER_UNIT, 1_000_000n);
  });
});
