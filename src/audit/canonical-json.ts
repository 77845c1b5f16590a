/**
 * The canonical JSON text of a value: object keys sorted (by UTF-16 code
 * units, as `Array.prototype.sort` orders them), no whitespace, bigints as
 * decimal strings (money never goes through a float), `undefined` members
 * left out. Equal values give equal text, so the text can be hashed and
 * the hash recomputed by anyone, in any language, from the parsed record.
 *
 * Throws on what JSON cannot carry exactly: non-finite or unsafe-integer
 * numbers (use a string or a bigint instead).
 */
export function canonicalJson(value: unknown): string {
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "bigint":
      return JSON.stringify(value.toString());
    case "number":
      if (!Number.isFinite(value) || (Number.isInteger(value) && !Number.isSafeInteger(value))) {
        throw new Error(`canonical JSON: ${value} cannot be carried exactly; use a string`);
      }
      return JSON.stringify(value);
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(",")}]`;
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(",")}}`;
    }
    default:
      throw new Error(`canonical JSON: a ${typeof value} has no JSON form`);
  }
}
