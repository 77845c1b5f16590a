import type { DescEnum } from "@bufbuild/protobuf";
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { formatDecimalMicros, formatMoney } from "../core/money.js";

/** A column of {@link formatTable}. Numbers read best right-aligned. */
export interface Column {
  readonly title: string;
  readonly align?: "left" | "right";
}

/**
 * Lays out rows as an aligned text table with an upper-case header line,
 * columns two spaces apart and no trailing spaces (so output diffs cleanly).
 * `indent` prefixes every line, for tables nested under a heading.
 */
export function formatTable(columns: readonly Column[], rows: readonly (readonly string[])[], indent = ""): string {
  // A loop, not Math.max(...rows): a spread of ~125k rows (actions --all
  // of a busy session) overflows the stack.
  const widths = columns.map((c, i) => rows.reduce((w, r) => Math.max(w, (r[i] ?? "").length), c.title.length));
  const line = (cells: readonly string[]) =>
    indent +
    columns
      .map((c, i) => {
        const cell = cells[i] ?? "";
        return c.align === "right" ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
      })
      .join("  ")
      .trimEnd();
  return [line(columns.map((c) => c.title.toUpperCase())), ...rows.map(line)].join("\n");
}

/**
 * Lays out `key value` lines with the values aligned. Entries whose value is
 * undefined or empty are left out, so callers can list optional fields
 * without branching.
 */
export function formatKeyValues(entries: readonly (readonly [string, string | undefined])[], indent = ""): string {
  const shown = entries.filter((e): e is readonly [string, string] => e[1] !== undefined && e[1] !== "");
  const width = shown.reduce((w, [k]) => Math.max(w, k.length), 0);
  return shown.map(([k, v]) => `${indent}${k.padEnd(width)}  ${v}`).join("\n");
}

/**
 * Formats a timestamp as ISO 8601 in UTC, without the `.000` of whole
 * seconds; undefined when unset.
 */
export function formatTime(ts: Timestamp | undefined): string | undefined {
  if (ts === undefined) return undefined;
  return timestampDate(ts).toISOString().replace(".000Z", "Z");
}

/**
 * Formats a duration the way the flags accept it: `1h30m`, `7d`, `90s` is
 * shown as `1m30s`, fractions of a second as `ms`.
 */
export function formatDuration(d: Duration | undefined): string | undefined {
  if (d === undefined) return undefined;
  let ms = d.seconds * 1000n + BigInt(Math.trunc(d.nanos / 1_000_000));
  if (ms === 0n) return "0s";
  const parts: string[] = [];
  for (const [unit, size] of [["d", 86_400_000n], ["h", 3_600_000n], ["m", 60_000n], ["s", 1000n], ["ms", 1n]] as const) {
    if (ms >= size) {
      parts.push(`${ms / size}${unit}`);
      ms %= size;
    }
  }
  return parts.join("");
}

/**
 * Names an enum value by its proto name without the shared prefix, upper
 * case: `LIMIT_DAILY_VALUE` for REASON_LIMIT_DAILY_VALUE. Values unknown to
 * this build show as their number.
 */
export function enumName(schema: DescEnum, value: number): string {
  return schema.value[value]?.localName ?? String(value);
}

/** Like {@link enumName} but lower case, for statuses: `active`. */
export function enumWord(schema: DescEnum, value: number): string {
  return enumName(schema, value).toLowerCase();
}

/**
 * Formats micros in a currency (`12.50 USD`); without a known currency only
 * the decimal is shown rather than a guessed code.
 */
export function formatAmount(micros: bigint, currency: string | undefined): string {
  return currency ? formatMoney(micros, currency) : formatDecimalMicros(micros);
}

/** Formats a map as `k=v, k2=v2`, sorted by key for stable output. */
export function formatLabels(labels: Readonly<Record<string, string>>): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(", ");
}
