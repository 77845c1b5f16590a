/**
 * Random messages of any type, for comparing validators: each field gets
 * a value near what its `buf.validate` rules allow (at and just past each
 * bound, in and out of `in` lists, strings that match its pattern and
 * strings that do not, emoji at a length limit), or an ordinary one, or is
 * left unset. Seeded, so a failure repeats.
 */
import { create, type DescField, type DescMessage, getOption, isFieldSet, type Message, ScalarType } from "@bufbuild/protobuf";
import {
  type FieldRules,
  field as fieldRulesExt,
  MapRulesSchema,
  RepeatedRulesSchema,
  StringRulesSchema,
} from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

/** Strings that real requests carry, offered to every string field whose pattern they match. */
const REALISTIC = [
  ...["act", "ses", "lse", "apr", "evt", "key", "whk"].map((p) => `${p}_01m978gb4spp0thwd9311gygyw`),
  "ses_01M978GB4SPP0THWD9311GYGYW",
  "act_01m978gb4spp0thwd9311gygy",
  "USD",
  "EUR",
  "usd",
  "payment",
  "tool_call",
  "Payment",
  "check",
  "authorize",
  "bench",
  "agent-7",
  "a:b",
  "session.created",
  "https://example.test/hook",
  "-a",
  " x",
];

const ALPHABET = ["a", "z", "0", "9", "_", "-", ".", ":", "A", "Z", " ", "é", "😀", "/", "ß"];

/** A random message of `schema`; `depth` bounds nesting (messages below 4 levels are left unset). */
export function randomMessage<T extends Message>(schema: DescMessage, rand: () => number, depth = 0): T {
  const init: Record<string, unknown> = {};
  const pick = <V>(xs: readonly V[]): V => xs[Math.floor(rand() * xs.length)]!;
  for (const oneof of schema.oneofs) {
    const choice = Math.floor(rand() * (oneof.fields.length + 1));
    if (choice === oneof.fields.length) continue;
    const f = oneof.fields[choice]!;
    const value = valueOf(f, rulesOf(f), rand, pick, depth);
    if (value !== undefined) init[oneof.localName] = { case: f.localName, value };
  }
  for (const f of schema.fields) {
    if (f.oneof !== undefined) continue;
    if (rand() < 0.15) continue;
    const v = valueOf(f, rulesOf(f), rand, pick, depth);
    if (v !== undefined) init[f.localName] = v;
  }
  return create(schema, init) as unknown as T;
}

function rulesOf(f: DescField): FieldRules {
  return getOption(f, fieldRulesExt);
}

type Pick = <V>(xs: readonly V[]) => V;

function valueOf(f: DescField, rules: FieldRules, rand: () => number, pick: Pick, depth: number): unknown {
  switch (f.fieldKind) {
    case "scalar":
      return scalarValue(f.scalar, rules, rand, pick);
    case "enum":
      return enumValue(f.enum.values.map((v) => v.number), rand, pick);
    case "message":
      return messageValue(f.message, rules, rand, pick, depth);
    case "list": {
      const r = rules.type.case === "repeated" ? rules.type.value : undefined;
      const max = r !== undefined && isFieldSet(r, RepeatedRulesSchema.field.maxItems) ? Number(r.maxItems) : undefined;
      const sizes = [0, 1, 2, 3, ...(max !== undefined && max <= 40 ? [max, max + 1] : []), ...(r !== undefined && r.minItems > 0n ? [Number(r.minItems) - 1] : [])];
      const n = pick(sizes);
      const items = r?.items;
      return Array.from({ length: n }, () => {
        switch (f.listKind) {
          case "scalar":
            return scalarValue(f.scalar, items, rand, pick) ?? zeroOf(f.scalar);
          case "enum":
            return enumValue(f.enum.values.map((v) => v.number), rand, pick);
          case "message":
            return depth >= 4 ? create(f.message) : messageValue(f.message, items, rand, pick, depth) ?? create(f.message);
        }
      });
    }
    case "map": {
      const r = rules.type.case === "map" ? rules.type.value : undefined;
      const max = r !== undefined && isFieldSet(r, MapRulesSchema.field.maxPairs) ? Number(r.maxPairs) : undefined;
      const n = pick([0, 1, 2, 3, ...(max !== undefined && max <= 40 ? [max, max + 1] : [])]);
      const out: Record<string, unknown> = {};
      for (let i = 0; i < n; i++) {
        let key = String(scalarValue(f.mapKey, r?.keys, rand, pick) ?? "");
        // Keys must differ for the map to have n pairs.
        while (key in out) key += "k";
        switch (f.mapKind) {
          case "scalar":
            out[key] = scalarValue(f.scalar, r?.values, rand, pick) ?? zeroOf(f.scalar);
            break;
          case "enum":
            out[key] = enumValue(f.enum.values.map((v) => v.number), rand, pick);
            break;
          case "message":
            out[key] = depth >= 4 ? create(f.message) : (messageValue(f.message, r?.values, rand, pick, depth) ?? create(f.message));
            break;
        }
      }
      return out;
    }
  }
}

function messageValue(schema: DescMessage, rules: FieldRules | undefined, rand: () => number, pick: Pick, depth: number): unknown {
  if (schema.typeName === "google.protobuf.Duration" || schema.typeName === "google.protobuf.Timestamp") {
    const bounds: bigint[] = [];
    if (rules?.type.case === "duration") {
      const r = rules.type.value;
      if (r.greaterThan.case !== undefined) bounds.push(r.greaterThan.value.seconds);
      if (r.lessThan.case !== undefined) bounds.push(r.lessThan.value.seconds);
    }
    const seconds = pick([0n, 1n, -1n, 59n, 60n, 3600n, 1_796_601_600n, ...bounds, ...bounds.map((b) => b - 1n), ...bounds.map((b) => b + 1n)]);
    return create(schema, { seconds, nanos: pick([0, 0, 1, 999_999_999, 500_000_000]) });
  }
  if (depth >= 4 || rand() < 0.2) return undefined;
  return randomMessage(schema, rand, depth + 1);
}

function enumValue(values: number[], rand: () => number, pick: Pick): number {
  return rand() < 0.85 ? pick(values) : pick([-1, Math.max(...values) + 1, 99]);
}

function scalarValue(scalar: ScalarType, rules: FieldRules | undefined, rand: () => number, pick: Pick): unknown {
  const type = rules?.type;
  switch (scalar) {
    case ScalarType.STRING: {
      const r = type?.case === "string" ? type.value : undefined;
      const lengths = [0, 1, 3, 26];
      if (r !== undefined) {
        if (isFieldSet(r, StringRulesSchema.field.minLen)) lengths.push(Number(r.minLen) - 1, Number(r.minLen));
        if (isFieldSet(r, StringRulesSchema.field.maxLen)) lengths.push(Number(r.maxLen), Number(r.maxLen) + 1);
        const re = r.pattern === "" ? undefined : new RegExp(r.pattern, "u");
        const matching = REALISTIC.filter((s) => re === undefined || re.test(s));
        const roll = rand();
        if (r.in.length > 0 && roll < 0.4) return pick(r.in);
        if (r.notIn.length > 0 && roll < 0.5) return pick(r.notIn);
        if (matching.length > 0 && roll < 0.7) return pick(matching);
      } else if (rand() < 0.3) {
        return pick(REALISTIC);
      }
      const n = Math.max(0, pick(lengths));
      // One character repeated (a wide one counts as one at two UTF-16
      // units), or a mix.
      if (rand() < 0.5) return pick(ALPHABET).repeat(n);
      let s = "";
      for (let i = 0; i < n; i++) s += pick(ALPHABET);
      return s;
    }
    case ScalarType.BYTES: {
      const r = type?.case === "bytes" ? type.value : undefined;
      const lengths = [0, 1, 16, 32, ...(r !== undefined && r.len > 0n ? [Number(r.len) - 1, Number(r.len) + 1, Number(r.len), Number(r.len)] : [])];
      return new Uint8Array(Math.max(0, pick(lengths))).map(() => Math.floor(rand() * 256));
    }
    case ScalarType.BOOL:
      return rand() < 0.5;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return pick([0, 1.5, -2, 1e9]);
    default: {
      const big = scalar === ScalarType.INT64 || scalar === ScalarType.UINT64 || scalar === ScalarType.SINT64 || scalar === ScalarType.FIXED64 || scalar === ScalarType.SFIXED64;
      const unsigned = scalar === ScalarType.UINT32 || scalar === ScalarType.UINT64 || scalar === ScalarType.FIXED32 || scalar === ScalarType.FIXED64;
      const candidates: bigint[] = [0n, 1n, 2n, 1_000_000n, 1000n, -1n, -1_000_000n];
      const r = type !== undefined && type.case !== undefined ? (type.value as unknown as { greaterThan?: { case?: string; value: bigint | number }; lessThan?: { case?: string; value: bigint | number } }) : undefined;
      for (const bound of [r?.greaterThan, r?.lessThan]) {
        if (bound?.case !== undefined) candidates.push(BigInt(bound.value) - 1n, BigInt(bound.value), BigInt(bound.value) + 1n);
      }
      const v = pick(candidates.filter((c) => !unsigned || c >= 0n));
      return big ? v : Number(v);
    }
  }
}

function zeroOf(scalar: ScalarType): unknown {
  switch (scalar) {
    case ScalarType.STRING:
      return "";
    case ScalarType.BYTES:
      return new Uint8Array(0);
    case ScalarType.BOOL:
      return false;
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 0n;
    default:
      return 0;
  }
}
