import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { canonicalJson } from "../../src/audit/canonical-json.js";
import { seededRandom } from "../helpers/seeded-random.js";

/**
 * The definition, written plainly (what canonical-json.ts did before it was
 * made faster): the text every stored audit record was hashed from, so the
 * fast version must give exactly this for every value.
 */
function reference(value: unknown): string {
  switch (typeof value) {
    case "string":
    case "boolean":
      return JSON.stringify(value);
    case "bigint":
      return JSON.stringify(value.toString());
    case "number":
      if (!Number.isFinite(value) || (Number.isInteger(value) && !Number.isSafeInteger(value))) throw new Error("inexact");
      return JSON.stringify(value);
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) return `[${value.map((v) => reference(v === undefined ? null : v)).join(",")}]`;
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${reference(obj[k])}`).join(",")}}`;
    }
    default:
      throw new Error("no JSON form");
  }
}

/** Characters that JSON escapes or that sort unusually, among plain ones. */
const PIECES = ['"', "\\", "\n", "\u0000", "\u001f", "\u007f", "\u2028", "é", "😀", "\ud800", "\udc00", "a", "Z", "_", "0", "9", " ", "/", "<"];

function randomString(r: () => number): string {
  let s = "";
  const n = Math.floor(r() * 6);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)];
  return s;
}

function randomValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 3 ? 7 : 9));
  switch (k) {
    case 0:
      return randomString(r);
    case 1:
      return r() < 0.5;
    case 2:
      return null;
    case 3:
      return BigInt(Math.floor((r() - 0.5) * 2 ** 53)) * 1000n;
    case 4:
      return r() < 0.5 ? Math.floor((r() - 0.5) * 2 ** 40) : (r() - 0.5) * 1e6;
    case 5:
      return undefined;
    case 6:
      return `${Math.floor(r() * 100)}`;
    case 7:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      const n = Math.floor(r() * 5);
      // Integer-like names too: JavaScript orders those first in an
      // object, canonical JSON by their text.
      for (let i = 0; i < n; i++) o[r() < 0.3 ? String(Math.floor(r() * 20)) : randomString(r)] = randomValue(r, depth + 1);
      return o;
    }
  }
}

describe("canonicalJson", () => {
  test("gives exactly the text of the plain definition, for 20,000 random values", () => {
    const r = seededRandom(20261207);
    for (let i = 0; i < 20_000; i++) {
      const v = { root: randomValue(r, 0) };
      assert.equal(canonicalJson(v), reference(v), `value #${i}`);
    }
  });

  test("escapes what JSON escapes and keeps the rest as it is", () => {
    assert.equal(canonicalJson({ s: 'a"b\\c\nd\u0001é😀\ud800' }), String.raw`{"s":"a\"b\\c\nd\u0001é😀\ud800"}`);
    assert.equal(canonicalJson(["\u2028", undefined, 1.5, -0, 10n]), '["\u2028",null,1.5,0,"10"]');
    assert.equal(canonicalJson({ 10: 1, 9: 2, a: 3, B: 4 }), '{"10":1,"9":2,"B":4,"a":3}');
  });

  test("member names from clients are quoted like any string, however many there are", () => {
    const many: Record<string, number> = {};
    for (let i = 0; i < 3000; i++) many[`k"${i}`] = i;
    assert.equal(canonicalJson(many), reference(many));
    assert.equal(canonicalJson({ 'k"1': 1 }), '{"k\\"1":1}');
  });

  test("refuses what JSON cannot carry exactly", () => {
    assert.throws(() => canonicalJson({ a: 2 ** 60 }), /cannot be carried exactly/);
    assert.throws(() => canonicalJson({ a: Number.POSITIVE_INFINITY }), /cannot be carried exactly/);
    assert.throws(() => canonicalJson({ a: () => 1 }), /has no JSON form/);
    assert.throws(() => canonicalJson({ a: Symbol("s") }), /has no JSON form/);
  });
});
