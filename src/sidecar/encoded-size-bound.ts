import { type DescField, type DescMessage, ScalarType, toBinary } from "@bufbuild/protobuf";
import { FeatureSet_FieldPresence } from "@bufbuild/protobuf/wkt";
import { fieldValue } from "../transport/field-value.js";

/** Most a tag, a length prefix and a varint take on the wire. */
const TAG = 5;
const LENGTH = 5;
const VARINT = 10;

/**
 * At least the number of bytes `toBinary(schema, message)` would give,
 * found without encoding it: every string counted at 3 bytes per UTF-16
 * unit (UTF-8's most), every number at its widest, every tag and length
 * prefix at 5 bytes. Proto3 fields at their default, which are not
 * written, count nothing.
 *
 * The report queue sizes each decision record so that a send stays under
 * its byte cap; encoding each record for that, before it is encoded again
 * in the send, was 3–4% of a sidecar's CPU under lease-mode load. This
 * reads the same fields without the writer's buffers and UTF-8 encoding.
 * The bound is loose (a typical allowed record of 89 bytes is bounded at
 * 330; 0.4 µs against 2–4 µs to encode it), but a send of small records is
 * capped by its entry count long before its bytes. Anything it does not
 * recognise (a value that is not what the field's kind says) is measured
 * exactly, by encoding the message.
 */
export function encodedSizeBound(schema: DescMessage, message: object): number {
  const bound = messageBound(schema, message as Record<string, unknown>);
  return Number.isNaN(bound) ? toBinary(schema, message as never).byteLength : bound;
}

/** NaN where a value is not of the field's kind: the caller then encodes. */
function messageBound(schema: DescMessage, message: Record<string, unknown>): number {
  let n = 0;
  for (const f of schema.fields) {
    const v = fieldValue(message, f);
    if (v !== undefined && v !== null) n += fieldBound(f, v);
  }
  const unknown = message.$unknown as { data: Uint8Array }[] | undefined;
  if (unknown !== undefined) for (const u of unknown) n += TAG + LENGTH + u.data.byteLength;
  return n;
}

function fieldBound(f: DescField, v: unknown): number {
  switch (f.fieldKind) {
    case "scalar":
      if (f.presence === FeatureSet_FieldPresence.IMPLICIT && isDefault(v)) return 0;
      return TAG + scalarBound(f.scalar, v);
    case "enum":
      if (f.presence === FeatureSet_FieldPresence.IMPLICIT && v === 0) return 0;
      return TAG + VARINT;
    case "message":
      return TAG + LENGTH + nestedBound(f.message, v);
    case "list": {
      if (!Array.isArray(v)) return Number.NaN;
      // Packed or not: a tag (and length) per element covers both.
      let n = LENGTH;
      for (const e of v) {
        n += TAG + (f.listKind === "message" ? LENGTH + nestedBound(f.message, e) : f.listKind === "enum" ? VARINT : scalarBound(f.scalar, e));
      }
      return n;
    }
    case "map": {
      if (typeof v !== "object") return Number.NaN;
      let n = 0;
      for (const [k, e] of Object.entries(v as Record<string, unknown>)) {
        const key = f.mapKey === ScalarType.STRING ? scalarBound(ScalarType.STRING, k) : VARINT;
        const value = f.mapKind === "message" ? LENGTH + nestedBound(f.message, e) : f.mapKind === "enum" ? VARINT : scalarBound(f.scalar, e);
        n += TAG + LENGTH + TAG + key + TAG + value;
      }
      return n;
    }
  }
}

/** A scalar's zero value, which proto3 does not write for a field without presence. */
function isDefault(v: unknown): boolean {
  // Object.is: protobuf-es writes a double's -0.
  return v === "" || Object.is(v, 0) || v === 0n || v === false || (v instanceof Uint8Array && v.byteLength === 0);
}

function nestedBound(schema: DescMessage, v: unknown): number {
  // Only messages of the field's type are walked: a well-known type that
  // protobuf-es holds unboxed (a wrapper's bare value, a Struct as a plain
  // JSON object) is left to the exact path.
  if (typeof v !== "object" || v === null || (v as { $typeName?: unknown }).$typeName !== schema.typeName) return Number.NaN;
  return messageBound(schema, v as Record<string, unknown>);
}

function scalarBound(type: ScalarType, v: unknown): number {
  switch (type) {
    case ScalarType.STRING:
      return typeof v === "string" ? LENGTH + 3 * v.length : Number.NaN;
    case ScalarType.BYTES:
      return v instanceof Uint8Array ? LENGTH + v.byteLength : Number.NaN;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 8;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 4;
    case ScalarType.BOOL:
      return 1;
    default:
      return VARINT;
  }
}
