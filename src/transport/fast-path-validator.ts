import { type DescField, type DescMessage, getOption, isFieldSet, type Message, ScalarType } from "@bufbuild/protobuf";
import { FeatureSet_FieldPresence } from "@bufbuild/protobuf/wkt";
import type { Validator } from "@bufbuild/protovalidate";
import {
  type BytesRules,
  BytesRulesSchema,
  DurationRulesSchema,
  EnumRulesSchema,
  type FieldRules,
  FieldRulesSchema,
  field as fieldRulesExt,
  Ignore,
  MapRulesSchema,
  message as messageRulesExt,
  oneof as oneofRulesExt,
  RepeatedRulesSchema,
  type StringRules,
  StringRulesSchema,
} from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { fieldValue } from "./field-value.js";

/**
 * Says whether a message certainly satisfies its rules: `true` only when it
 * does; `false` when it may not (the full validator then decides).
 */
export type RuleCheck = (message: Message) => boolean;

/**
 * A validator that first runs a check compiled from each message type's
 * `buf.validate` rules, and answers "valid" from it alone when it passes;
 * anything else (a message that breaks a rule, a type whose rules the
 * compiler does not cover) goes to `validator`, which says exactly what is
 * wrong, with the same violations as ever.
 *
 * Why: protovalidate walks every message through its reflection API and
 * builds field paths as it goes. That was 9% of a sidecar decision's CPU
 * and 15% of the control plane's per reported record, for requests that are
 * valid nearly always. The compiled check reads the fields directly: for a
 * Check request 0.35 µs against 3.9.
 *
 * It covers the rules Warden's protos use on their hot paths (string
 * length, pattern and in/not_in; integer and duration ranges, integer
 * in/not_in; enum defined_only and in/not_in; bytes length; repeated and
 * map sizes and their items, keys and values; `required`; oneof
 * `required`; and the one field CEL shape `this.<integer field> > <n>`),
 * with protovalidate's presence rules. A type with any other rule (message
 * CEL, timestamp rules, well-known string formats, `unique`, `ignore`,
 * predefined rules, …) gets no compiled check and is always validated in
 * full. The tests compare both validators on random messages of every type
 * in the API.
 *
 * `regexMatch` must be the one `validator` was created with.
 */
export function withFastPath(validator: Validator, regexMatch: (pattern: string, against: string) => boolean): Validator {
  const compiler = new RuleCompiler(regexMatch);
  return {
    validate(schema: DescMessage, message: Message) {
      const check = compiler.message(schema);
      if (check !== undefined && message.$typeName === schema.typeName && check(message)) {
        return { kind: "valid", message };
      }
      return validator.validate(schema, message);
    },
  } as Validator;
}

/** The compiled check of a message type, or why there is none: a rule it does not cover (for the tests). */
export function compileRuleCheck(schema: DescMessage, regexMatch: (pattern: string, against: string) => boolean): RuleCheck | { readonly unsupported: string } {
  const compiler = new RuleCompiler(regexMatch);
  return compiler.message(schema) ?? { unsupported: compiler.lastUnsupported };
}

/** A check of one value (a field's, an item's, a key's). */
type ValueCheck = (value: unknown) => boolean;

/** Not covered: the message type goes to the full validator. */
class Unsupported extends Error {}

const INTEGER_SCALARS = new Set([
  ScalarType.INT32,
  ScalarType.INT64,
  ScalarType.UINT32,
  ScalarType.UINT64,
  ScalarType.SINT32,
  ScalarType.SINT64,
  ScalarType.FIXED32,
  ScalarType.FIXED64,
  ScalarType.SFIXED32,
  ScalarType.SFIXED64,
]);

/** Field CEL the compiler understands: `this.<field> > <integer>`. */
const GREATER_THAN_CEL = /^\s*this\.([A-Za-z_][A-Za-z0-9_]*)\s*>\s*(-?[0-9]+)\s*$/;

/** The check of a type with no rules anywhere in it (a Timestamp, say): fields of it are not read at all. */
const NO_RULES: RuleCheck = () => true;

const IMPLICIT = FeatureSet_FieldPresence.IMPLICIT;

/** Compiles each message type once; remembers the types it could not compile, and why. */
class RuleCompiler {
  /** Types being compiled: a recursive type is left to the full validator. */
  private readonly open = new Set<DescMessage>();
  private readonly done = new Map<DescMessage, RuleCheck>();
  private readonly failed = new Map<DescMessage, string>();
  /** Why the last type was not compiled. */
  lastUnsupported = "";

  constructor(private readonly regexMatch: (pattern: string, against: string) => boolean) {}

  message(schema: DescMessage): RuleCheck | undefined {
    const known = this.done.get(schema);
    if (known !== undefined) return known;
    const why = this.failed.get(schema);
    if (why !== undefined) {
      this.lastUnsupported = why;
      return undefined;
    }
    try {
      return this.compileMessage(schema);
    } catch (e) {
      // What was left half-compiled is dropped; what compiled is kept.
      this.open.clear();
      if (e instanceof Unsupported) {
        this.failed.set(schema, e.message);
        this.lastUnsupported = e.message;
        return undefined;
      }
      throw e;
    }
  }

  private compileMessage(schema: DescMessage): RuleCheck {
    const known = this.done.get(schema);
    if (known !== undefined) return known;
    if (this.open.has(schema)) throw new Unsupported(`${schema.typeName} is recursive`);
    this.open.add(schema);
    const rules = getOption(schema, messageRulesExt);
    if (rules.cel.length > 0 || rules.celExpression.length > 0 || rules.oneof.length > 0 || (rules.$unknown?.length ?? 0) > 0) {
      throw new Unsupported(`${schema.typeName} has message rules`);
    }
    const checks: RuleCheck[] = [];
    for (const oneof of schema.oneofs) {
      if (!getOption(oneof, oneofRulesExt).required) continue;
      const name = oneof.localName;
      checks.push((m) => (m as unknown as Record<string, { case: unknown }>)[name]!.case !== undefined);
    }
    for (const field of schema.fields) {
      const check = this.field(field);
      if (check !== undefined) checks.push(check);
    }
    this.open.delete(schema);
    const check: RuleCheck =
      checks.length === 0
        ? NO_RULES
        : (m) => {
            for (let i = 0; i < checks.length; i++) if (!checks[i]!(m)) return false;
            return true;
          };
    this.done.set(schema, check);
    return check;
  }

  /** A field's check, or undefined when nothing about it can fail. */
  private field(field: DescField): RuleCheck | undefined {
    const rules = getOption(field, fieldRulesExt);
    if ((rules.$unknown?.length ?? 0) > 0) throw new Unsupported(`${field} has predefined rules`);
    if (rules.ignore !== Ignore.UNSPECIFIED) throw new Unsupported(`${field} has an ignore rule`);
    if (rules.celExpression.length > 0) throw new Unsupported(`${field} has a CEL expression`);
    const read = reader(field);
    // protovalidate's presence rules: a message field's rules apply when it
    // is set, a list's or map's always, a scalar's always when it has
    // implicit presence outside a oneof, otherwise when it is set.
    let value: ValueCheck | undefined;
    let whenSet: boolean;
    switch (field.fieldKind) {
      case "message": {
        const nested = this.compileMessage(field.message);
        const own = all([this.fieldCel(field, rules), this.wellKnown(field, rules)].filter((c) => c !== undefined));
        value = and(own, nested);
        whenSet = true;
        break;
      }
      case "scalar":
        if (rules.cel.length > 0) throw new Unsupported(`${field} has CEL rules`);
        value = this.scalar(field.scalar, rules, field);
        whenSet = field.presence !== IMPLICIT || field.oneof !== undefined;
        break;
      case "enum":
        if (rules.cel.length > 0) throw new Unsupported(`${field} has CEL rules`);
        value = this.enumeration(field, rules);
        whenSet = field.presence !== IMPLICIT || field.oneof !== undefined;
        break;
      case "list":
        if (rules.cel.length > 0) throw new Unsupported(`${field} has CEL rules`);
        value = this.list(field, rules);
        whenSet = false;
        break;
      case "map":
        if (rules.cel.length > 0) throw new Unsupported(`${field} has CEL rules`);
        value = this.map(field, rules);
        whenSet = false;
        break;
    }
    const { get, isSet } = read;
    if (rules.required) {
      if (value === undefined) return (m) => isSet(m);
      const v = value;
      return (m) => isSet(m) && v(get(m));
    }
    if (value === undefined) return undefined;
    const v = value;
    return whenSet ? (m) => !isSet(m) || v(get(m)) : (m) => v(get(m));
  }

  /** Rules of a message field's own value: only a Duration's range is covered. */
  private wellKnown(field: DescField & { fieldKind: "message" }, rules: FieldRules): ValueCheck | undefined {
    const type = rules.type;
    if (type.case === undefined) return undefined;
    if (type.case !== "duration" || field.message.typeName !== "google.protobuf.Duration") throw new Unsupported(`${field} has ${type.case} rules`);
    const r = type.value;
    only(r, DurationRulesSchema, ["gt", "gte", "lt", "lte", "example"], field);
    const nanos = (d: { seconds: bigint; nanos: number }) => d.seconds * 1_000_000_000n + BigInt(d.nanos);
    const greater = r.greaterThan.case === undefined ? undefined : { strict: r.greaterThan.case === "gt", b: nanos(r.greaterThan.value) };
    const less = r.lessThan.case === undefined ? undefined : { strict: r.lessThan.case === "lt", b: nanos(r.lessThan.value) };
    if (greater !== undefined && less !== undefined && greater.b >= less.b) throw new Unsupported(`${field}: an exclusive range`);
    return (v) => {
      const n = nanos(v as { seconds: bigint; nanos: number });
      if (greater !== undefined && (greater.strict ? n <= greater.b : n < greater.b)) return false;
      return less === undefined || (less.strict ? n < less.b : n <= less.b);
    };
  }

  /** The field CEL rules of a message field, all of the form `this.<integer field> > <n>`. */
  private fieldCel(field: DescField & { fieldKind: "message" }, rules: FieldRules): ValueCheck | undefined {
    if (rules.cel.length === 0) return undefined;
    const checks = rules.cel.map((rule): ValueCheck => {
      const match = GREATER_THAN_CEL.exec(rule.expression);
      const sub = match === null ? undefined : field.message.fields.find((f) => f.name === match[1]);
      if (sub === undefined || sub.fieldKind !== "scalar" || !INTEGER_SCALARS.has(sub.scalar) || sub.oneof !== undefined || sub.presence !== IMPLICIT) {
        throw new Unsupported(`${field}: CEL "${rule.expression}"`);
      }
      const name = sub.localName;
      const bound = BigInt(match![2]!);
      return (m) => BigInt((m as unknown as Record<string, number | bigint>)[name]!) > bound;
    });
    return all(checks);
  }

  private scalar(scalar: ScalarType, rules: FieldRules | undefined, where: DescField): ValueCheck | undefined {
    const type = rules?.type;
    if (type === undefined || type.case === undefined) return undefined;
    if (type.case === "string" && scalar === ScalarType.STRING) return this.string(type.value, where);
    if (type.case === "bytes" && scalar === ScalarType.BYTES) return bytesCheck(type.value, where);
    // The rules of an integer scalar are named for it ("int64", "sfixed32").
    if (INTEGER_SCALARS.has(scalar) && type.case === ScalarType[scalar].toLowerCase()) {
      const rulesField = FieldRulesSchema.field[type.case];
      return integerCheck(type.value as unknown as IntegerRules, rulesField.message!, where);
    }
    throw new Unsupported(`${where}: ${type.case} rules`);
  }

  private string(r: StringRules, where: DescField): ValueCheck | undefined {
    only(r, StringRulesSchema, ["min_len", "max_len", "pattern", "in", "not_in", "example"], where);
    const checks: ValueCheck[] = [];
    const F = StringRulesSchema.field;
    if (isFieldSet(r, F.minLen) || isFieldSet(r, F.maxLen)) {
      const min = isFieldSet(r, F.minLen) ? Number(r.minLen) : 0;
      const max = isFieldSet(r, F.maxLen) ? Number(r.maxLen) : Infinity;
      checks.push((v) => {
        const s = v as string;
        // A code point is one or two UTF-16 units: the unit count bounds
        // it from above, and only a string near a bound is counted.
        if (s.length <= max && (s.length + 1) >> 1 >= min) return true;
        const n = codePoints(s);
        return n >= min && n <= max;
      });
    }
    if (isFieldSet(r, F.pattern)) {
      const pattern = r.pattern;
      const match = this.regexMatch;
      checks.push((v) => match(pattern, v as string));
    }
    membership(checks, r.in, r.notIn, asIs);
    return all(checks);
  }

  private enumeration(field: DescField & { fieldKind: "enum" }, rules: FieldRules | undefined): ValueCheck | undefined {
    const type = rules?.type;
    if (type === undefined || type.case === undefined) return undefined;
    if (type.case !== "enum") throw new Unsupported(`${field}: ${type.case} rules`);
    const r = type.value;
    only(r, EnumRulesSchema, ["defined_only", "in", "not_in", "example"], field);
    const checks: ValueCheck[] = [];
    if (r.definedOnly) {
      const defined = new Set(field.enum.values.map((v) => v.number));
      checks.push((v) => defined.has(v as number));
    }
    membership(checks, r.in, r.notIn, asIs);
    return all(checks);
  }

  private list(field: DescField & { fieldKind: "list" }, rules: FieldRules): ValueCheck | undefined {
    const type = rules.type;
    let item: ValueCheck | undefined;
    let sizes: ValueCheck | undefined;
    if (type.case === "repeated") {
      const r = type.value;
      only(r, RepeatedRulesSchema, ["min_items", "max_items", "items"], field);
      const min = Number(r.minItems);
      const max = isFieldSet(r, RepeatedRulesSchema.field.maxItems) ? Number(r.maxItems) : Infinity;
      if (min > 0 || max !== Infinity) sizes = (v) => (v as unknown[]).length >= min && (v as unknown[]).length <= max;
      item = r.items === undefined ? undefined : this.element(field, r.items);
    } else if (type.case !== undefined) {
      throw new Unsupported(`${field}: ${type.case} rules`);
    }
    if (field.listKind === "message") item = and(item, this.compileMessage(field.message));
    const each = item;
    const items: ValueCheck | undefined =
      each === undefined
        ? undefined
        : (v) => {
            const a = v as unknown[];
            for (let i = 0; i < a.length; i++) if (!each(a[i])) return false;
            return true;
          };
    return all([sizes, items].filter((c): c is ValueCheck => c !== undefined));
  }

  private map(field: DescField & { fieldKind: "map" }, rules: FieldRules): ValueCheck | undefined {
    const type = rules.type;
    let key: ValueCheck | undefined;
    let value: ValueCheck | undefined;
    let sizes: ValueCheck | undefined;
    if (type.case === "map") {
      const r = type.value;
      only(r, MapRulesSchema, ["min_pairs", "max_pairs", "keys", "values"], field);
      const min = Number(r.minPairs);
      const max = isFieldSet(r, MapRulesSchema.field.maxPairs) ? Number(r.maxPairs) : Infinity;
      if (min > 0 || max !== Infinity) {
        sizes = (v) => {
          const n = Object.keys(v as object).length;
          return n >= min && n <= max;
        };
      }
      if (r.keys !== undefined) {
        // protobuf-es keeps every map key as an object key (a string).
        if (field.mapKey !== ScalarType.STRING) throw new Unsupported(`${field}: rules on non-string keys`);
        key = this.element(field, r.keys, ScalarType.STRING);
      }
      value = r.values === undefined ? undefined : this.element(field, r.values);
    } else if (type.case !== undefined) {
      throw new Unsupported(`${field}: ${type.case} rules`);
    }
    if (field.mapKind === "message") value = and(value, this.compileMessage(field.message));
    if (key === undefined && value === undefined) return sizes;
    const k = key ?? (() => true);
    const val = value ?? (() => true);
    const entries: ValueCheck = (v) => {
      const o = v as Record<string, unknown>;
      for (const name in o) if (!k(name) || !val(o[name])) return false;
      return true;
    };
    return all([sizes, entries].filter((c): c is ValueCheck => c !== undefined));
  }

  /** Rules of a list's items, a map's keys (`keyScalar`) or a map's values. */
  private element(field: DescField & { fieldKind: "list" | "map" }, rules: FieldRules, keyScalar?: ScalarType): ValueCheck | undefined {
    if ((rules.$unknown?.length ?? 0) > 0 || rules.cel.length > 0 || rules.celExpression.length > 0 || rules.required || rules.ignore !== Ignore.UNSPECIFIED) {
      throw new Unsupported(`${field}: element rules beyond type rules`);
    }
    if (keyScalar !== undefined) return this.scalar(keyScalar, rules, field);
    const kind = field.fieldKind === "list" ? field.listKind : field.mapKind;
    switch (kind) {
      case "scalar":
        return this.scalar((field as { scalar: ScalarType }).scalar, rules, field);
      case "enum":
        return this.enumeration(field as unknown as DescField & { fieldKind: "enum" }, rules);
      case "message":
        if (rules.type.case !== undefined) throw new Unsupported(`${field}: ${rules.type.case} rules on messages`);
        return undefined;
    }
    throw new Unsupported(`${field}: ${String(kind)} elements`);
  }
}

/** How a field is read and whether it counts as set, in protovalidate's terms. */
function reader(field: DescField): { get: (m: Message) => unknown; isSet: (m: Message) => boolean } {
  const get = (m: Message) => fieldValue(m as unknown as Record<string, unknown>, field);
  if (field.oneof !== undefined) {
    const group = field.oneof.localName;
    const name = field.localName;
    return { get, isSet: (m) => (m as unknown as Record<string, { case: unknown }>)[group]!.case === name };
  }
  switch (field.fieldKind) {
    case "message":
      return { get, isSet: (m) => get(m) !== undefined };
    case "list":
      return { get, isSet: (m) => (get(m) as unknown[]).length > 0 };
    case "map":
      return { get, isSet: (m) => Object.keys(get(m) as object).length > 0 };
    default:
      // Scalars and enums: with implicit presence, set means not the zero
      // value; with explicit presence, protobuf-es leaves unset ones out.
      return { get, isSet: (m) => isFieldSet(m, field) };
  }
}

function bytesCheck(r: BytesRules, where: DescField): ValueCheck | undefined {
  only(r, BytesRulesSchema, ["len", "min_len", "max_len", "example"], where);
  const F = BytesRulesSchema.field;
  const exact = isFieldSet(r, F.len) ? Number(r.len) : undefined;
  const min = isFieldSet(r, F.minLen) ? Number(r.minLen) : 0;
  const max = isFieldSet(r, F.maxLen) ? Number(r.maxLen) : Infinity;
  if (exact === undefined && min === 0 && max === Infinity) return undefined;
  return (v) => {
    const n = (v as Uint8Array).byteLength;
    return (exact === undefined || n === exact) && n >= min && n <= max;
  };
}

/** What Int32Rules, UInt64Rules, SFixed64Rules and the rest have in common. */
type IntegerRules = Message & {
  greaterThan: { case: "gt" | "gte" | undefined; value?: number | bigint };
  lessThan: { case: "lt" | "lte" | undefined; value?: number | bigint };
  in: (number | bigint)[];
  notIn: (number | bigint)[];
};

function integerCheck(r: IntegerRules, schema: DescMessage, where: DescField): ValueCheck | undefined {
  only(r, schema, ["gt", "gte", "lt", "lte", "in", "not_in", "example"], where);
  const greater = r.greaterThan;
  const less = r.lessThan;
  // protovalidate reads a lower bound above the upper one as "outside the
  // range": rare, and left to it.
  if (greater.case !== undefined && less.case !== undefined && BigInt(greater.value!) >= BigInt(less.value!)) {
    throw new Unsupported(`${where}: an exclusive range`);
  }
  const checks: ValueCheck[] = [];
  if (greater.case !== undefined) {
    const b = BigInt(greater.value!);
    checks.push(greater.case === "gt" ? (v) => BigInt(v as number | bigint) > b : (v) => BigInt(v as number | bigint) >= b);
  }
  if (less.case !== undefined) {
    const b = BigInt(less.value!);
    checks.push(less.case === "lt" ? (v) => BigInt(v as number | bigint) < b : (v) => BigInt(v as number | bigint) <= b);
  }
  membership(checks, r.in.map((x) => BigInt(x)), r.notIn.map((x) => BigInt(x)), (v) => BigInt(v as number | bigint));
  return all(checks);
}

const asIs = (v: unknown) => v;

/**
 * Adds the `in` and `not_in` rules of a scalar to `checks`: the value, as
 * `key` gives it, must be one of `allowed` (when any are named) and none of
 * `refused`. Integers compare as BigInt, since an int64 may come as a
 * number or a bigint.
 */
function membership(checks: ValueCheck[], allowed: readonly unknown[], refused: readonly unknown[], key: (v: unknown) => unknown): void {
  if (allowed.length > 0) {
    const set = new Set(allowed);
    checks.push((v) => set.has(key(v)));
  }
  if (refused.length > 0) {
    const set = new Set(refused);
    checks.push((v) => !set.has(key(v)));
  }
}

/** Refuses a rules message (of type `schema`) that sets anything but `names` (proto field names). */
function only(rules: Message, schema: DescMessage, names: readonly string[], where: DescField): void {
  for (const f of schema.fields) {
    if (!names.includes(f.name) && isFieldSet(rules, f)) throw new Unsupported(`${where}: ${rules.$typeName}.${f.name}`);
  }
}

/** A message value's own rules, then its type's; undefined when neither can fail. */
function and(own: ValueCheck | undefined, nested: RuleCheck): ValueCheck | undefined {
  if (nested === NO_RULES) return own;
  return own === undefined ? (v) => nested(v as Message) : (v) => own(v) && nested(v as Message);
}

function all(checks: readonly ValueCheck[]): ValueCheck | undefined {
  if (checks.length === 0) return undefined;
  if (checks.length === 1) return checks[0];
  return (v) => {
    for (let i = 0; i < checks.length; i++) if (!checks[i]!(v)) return false;
    return true;
  };
}

/** Unicode code points in a string, as protovalidate counts string lengths (a lone surrogate is one). */
function codePoints(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length - 1; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}
