import { type DescField, type DescMessage, type Message, ScalarType } from "@bufbuild/protobuf";
import { fieldValue } from "./field-value.js";

/**
 * What protovalidate rules cannot say once for every field of every
 * request, checked here instead: no string holds a NUL character
 * (PostgreSQL refuses it in text and JSON, and one such value in a decision
 * batch would fail every call batched with it), and every Timestamp and
 * Duration is in the range protobuf defines for them (0001-01-01 to
 * 9999-12-31; ±10,000 years), beyond which dates cannot be stored or even
 * formatted, and a Duration's seconds and nanos agree in sign.
 *
 * Returns the first problem as `field.path: what is wrong`, or undefined.
 * The walk is planned once per message type and visits only fields that
 * can hold a string, a time or a message, so a decision request costs a
 * few property reads.
 */
export function firstMalformed(schema: DescMessage, message: Message): string | undefined {
  return check(planOf(schema), message as unknown as Record<string, unknown>, "");
}

/** Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, protobuf's Timestamp range. */
const MIN_TIMESTAMP_S = -62_135_596_800n;
const MAX_TIMESTAMP_S = 253_402_300_799n;
/** Protobuf's Duration range: about 10,000 years either way. */
const MAX_DURATION_S = 315_576_000_000n;

type Kind = "string" | "timestamp" | "duration" | Plan;
interface Step {
  readonly field: DescField;
  readonly kind: Kind;
  readonly shape: "single" | "list" | "map";
  /** Map keys are strings (and so checked too). */
  readonly stringKeys: boolean;
}
type Plan = Step[];

const plans = new Map<string, Plan>();

function planOf(schema: DescMessage): Plan {
  let plan = plans.get(schema.typeName);
  if (plan !== undefined) return plan;
  plan = [];
  // Set before its fields are planned: a recursive type refers to itself.
  plans.set(schema.typeName, plan);
  for (const field of schema.fields) {
    const step = stepOf(field);
    if (step !== undefined) plan.push(step);
  }
  return plan;
}

function kindOfMessage(m: DescMessage): Kind {
  if (m.typeName === "google.protobuf.Timestamp") return "timestamp";
  if (m.typeName === "google.protobuf.Duration") return "duration";
  // Possibly still being planned (a recursive type): an empty plan is
  // skipped when checked, not here.
  return planOf(m);
}

function stepOf(field: DescField): Step | undefined {
  switch (field.fieldKind) {
    case "scalar":
      return field.scalar === ScalarType.STRING ? { field, kind: "string", shape: "single", stringKeys: false } : undefined;
    case "message":
      return { field, kind: kindOfMessage(field.message), shape: "single", stringKeys: false };
    case "list": {
      const kind = field.listKind === "scalar" ? (field.scalar === ScalarType.STRING ? "string" : undefined) : field.listKind === "message" ? kindOfMessage(field.message) : undefined;
      return kind === undefined ? undefined : { field, kind, shape: "list", stringKeys: false };
    }
    case "map": {
      const stringKeys = field.mapKey === ScalarType.STRING;
      const kind = field.mapKind === "scalar" ? (field.scalar === ScalarType.STRING ? "string" : undefined) : field.mapKind === "message" ? kindOfMessage(field.message) : undefined;
      return kind === undefined && !stringKeys ? undefined : { field, kind: kind ?? [], shape: "map", stringKeys };
    }
    default:
      return undefined;
  }
}

function check(plan: Plan, m: Record<string, unknown>, prefix: string): string | undefined {
  for (const step of plan) {
    const f = step.field;
    const value = fieldValue(m, f);
    if (value === undefined) continue;
    const path = prefix === "" ? f.name : `${prefix}.${f.name}`;
    switch (step.shape) {
      case "single": {
        const bad = checkOne(step.kind, value, path);
        if (bad !== undefined) return bad;
        break;
      }
      case "list": {
        const items = value as unknown[];
        for (let i = 0; i < items.length; i++) {
          const bad = checkOne(step.kind, items[i], `${path}[${i}]`);
          if (bad !== undefined) return bad;
        }
        break;
      }
      case "map":
        for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
          if (step.stringKeys && k.includes("\0")) return `${path}: a key must not contain a NUL character`;
          const bad = checkOne(step.kind, v, `${path}["${k}"]`);
          if (bad !== undefined) return bad;
        }
        break;
    }
  }
  return undefined;
}

function checkOne(kind: Kind, value: unknown, path: string): string | undefined {
  switch (kind) {
    case "string":
      return (value as string).includes("\0") ? `${path}: must not contain a NUL character` : undefined;
    case "timestamp": {
      const t = value as { seconds: bigint; nanos: number };
      const ok = t.seconds >= MIN_TIMESTAMP_S && t.seconds <= MAX_TIMESTAMP_S && t.nanos >= 0 && t.nanos <= 999_999_999;
      return ok ? undefined : `${path}: must be a time from 0001-01-01 to 9999-12-31`;
    }
    case "duration": {
      const d = value as { seconds: bigint; nanos: number };
      const ok = d.seconds >= -MAX_DURATION_S && d.seconds <= MAX_DURATION_S && d.nanos >= -999_999_999 && d.nanos <= 999_999_999;
      if (!ok) return `${path}: must be a duration of at most 10,000 years`;
      // Protobuf's rule: {seconds: 1, nanos: -500000000} is no duration.
      // Other runtimes refuse it or read it their own way, so an agent's
      // SDK and this server could disagree on what was asked: refused.
      const mixed = (d.seconds > 0n && d.nanos < 0) || (d.seconds < 0n && d.nanos > 0);
      return mixed ? `${path}: seconds and nanos must have the same sign` : undefined;
    }
    default:
      return kind.length === 0 ? undefined : check(kind, value as Record<string, unknown>, path);
  }
}
