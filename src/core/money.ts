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
 * Formats micros as a decimal in major units with at least two decimals and
 * no trailing zeros beyond them: 12500000n → "12.50", 1n → "0.000001".
 */
export function formatDecimalMicros(micros: bigint): string {
  const negative = micros < 0n;
  const abs = negative ? -micros : micros;
  const whole = abs / MICROS_PER_UNIT;
  let frac = (abs % MICROS_PER_UNIT).toString().padStart(6, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${negative ? "-" : ""}${whole}.${frac}`;
}

/** Formats micros with a currency code: "12.50 USD". */
export function formatMoney(micros: bigint, currencyCode: string): string {
  return `${formatDecimalMicros(micros)} ${currencyCode}`;
}
