/** Micros per major unit: amounts are integers of millionths. */
export const MICROS_PER_UNIT = 1_000_000n;

/** The largest amount in micros: usage counters, columns and proto fields are all int64. */
export const INT64_MAX = 9_223_372_036_854_775_807n;

const DECIMAL = /^(-)?(\d+)(?:\.(\d{1,6}))?$/;

/**
 * Parses a decimal amount in major units ("12.50") into micros (12500000n),
 * exactly: no floating point is involved. At most six decimals.
 *
 * @throws Error naming the bad text when it is not a decimal number.
 */
export function parseDecimalMicros(text: string): bigint {
  const m = DECIMAL.exec(text.trim());
  if (m === null) throw new Error(`"${text}" is not a decimal amount with at most 6 decimals`);
  const whole = BigInt(m[2]!);
  const frac = BigInt((m[3] ?? "").padEnd(6, "0"));
  const micros = whole * MICROS_PER_UNIT + frac;
  return m[1] === "-" ? -micros : micros;
}

/**
 * Formats micros as a decimal in major units with at least `minDigits`
 * decimals and no trailing zeros beyond them: 12500000n → "12.50",
 * 1n → "0.000001"; with 0, 1000000000n → "1000".
 */
export function formatDecimalMicros(micros: bigint, minDigits = 2): string {
  const negative = micros < 0n;
  const abs = negative ? -micros : micros;
  const whole = abs / MICROS_PER_UNIT;
  let frac = (abs % MICROS_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "");
  if (frac.length < minDigits) frac = frac.padEnd(minDigits, "0");
  return `${negative ? "-" : ""}${whole}${frac === "" ? "" : `.${frac}`}`;
}

const minorDigitsOf = new Map<string, number>();

/**
 * The ISO 4217 minor units of a currency (JPY 0, USD 2, KWD 3), from the
 * runtime's ICU data; 2 for a code it cannot tell.
 */
export function minorDigits(currencyCode: string): number {
  let n = minorDigitsOf.get(currencyCode);
  if (n === undefined) {
    try {
      n = new Intl.NumberFormat("en", { style: "currency", currency: currencyCode }).resolvedOptions().maximumFractionDigits ?? 2;
    } catch {
      n = 2;
    }
    minorDigitsOf.set(currencyCode, n);
  }
  return n;
}

/**
 * Formats micros with a currency code, to the currency's minor units and
 * more where the amount has them: "12.50 USD", "1000 JPY", "1.500 KWD",
 * "0.000001 USD" (micros finer than a currency's minor unit are kept: an
 * agent may meter in them).
 */
export function formatMoney(micros: bigint, currencyCode: string): string {
  return `${formatDecimalMicros(micros, minorDigits(currencyCode))} ${currencyCode}`;
}
