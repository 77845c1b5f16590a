/**
 * Prints .proto source text from a file descriptor, and (when run as a script)
 * writes third_party/proto/buf/validate/validate.proto from the descriptor that
 * the installed @bufbuild/protovalidate package embeds.
 *
 * Why this exists: our protos `import "buf/validate/validate.proto"`, so buf
 * has to compile that file. No npm package ships its source, and the Buf
 * Schema Registry (buf.build/bufbuild/protovalidate) is out of reach here. The
 * runtime package, however, carries the exact FileDescriptorProto the
 * validator parses rules with (`file_buf_validate_validate.proto`). Printing
 * source from that descriptor gives buf a schema that is wire-identical to
 * what the runtime expects: same messages, field numbers, labels, types,
 * oneofs and extensions. Option values we write in our protos
 * (`[(buf.validate.field).string.min_len = 1]`) are therefore encoded by buf
 * into exactly the bytes protovalidate decodes. Deriving the file instead of
 * vendoring a copy also pins it to the installed runtime version: bump the
 * package, rerun this script, and the two cannot drift.
 *
 * What is kept: syntax/edition, package, imports, messages (nested, maps,
 * proto2 groups, oneofs, proto3 `optional`), enums, extension ranges, reserved
 * ranges and names, `extend` blocks (file-level and nested), services, field
 * defaults, custom json names, and every *standard* option (those declared in
 * descriptor.proto). A few standard options change encoding (`packed`, and in
 * editions `features.*`, which decide presence, packing and group encoding);
 * the rest are kept because they cost nothing and make the compiled
 * descriptor equal to the source descriptor, so fidelity can be checked by
 * plain comparison. Declaration order is preserved for the same reason.
 *
 * What is dropped, deliberately: comments (the embedded descriptor has no
 * source info) and custom options, such as validate.proto's own
 * `(buf.validate.predefined).cel` rules. A custom option is an extension of
 * the options message; without its definition it is just unknown bytes, and
 * printing it would also require importing the file that defines it. Custom
 * options never change how a message is encoded, and protovalidate reads the
 * predefined CEL rules from its own embedded descriptor at runtime, never from
 * our compiled copy (buf.gen.yaml rewrites generated imports of buf/validate
 * to @bufbuild/protovalidate).
 *
 * Note on imports: protobuf-es strips `dependency` when embedding a
 * descriptor and restores it from the generated module's imports, so the
 * import list is the set of files whose types the file uses.
 *
 * Anything the printer cannot express faithfully (e.g. a proto2 group whose
 * type is not in the extending scope) throws instead of printing a file that
 * would compile to a different wire format.
 *
 * Usage: node --import tsx scripts/print-proto-from-descriptor.ts [out]
 *   out defaults to third_party/proto/buf/validate/validate.proto
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { type DescEnum, type DescField, type DescFile, type DescMessage, type Message, ScalarType, isFieldSet } from "@bufbuild/protobuf";
import { protoCamelCase } from "@bufbuild/protobuf/reflect";
import {
  type DescriptorProto,
  Edition,
  type EnumDescriptorProto,
  EnumOptionsSchema,
  EnumValueOptionsSchema,
  ExtensionRangeOptionsSchema,
  type FieldDescriptorProto,
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FieldDescriptorProtoSchema,
  FieldOptionsSchema,
  type FileDescriptorProto,
  FileOptionsSchema,
  FeatureSetSchema,
  MessageOptionsSchema,
  MethodOptionsSchema,
  OneofOptionsSchema,
  type ServiceDescriptorProto,
  ServiceOptionsSchema,
  SymbolVisibility,
} from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

type Syntax = "proto2" | "proto3" | "editions";

/** What `to max` means: the largest field number, and the largest enum value (int32). */
const MAX_FIELD_NUMBER = 536_870_911;
const MAX_ENUM_NUMBER = 2_147_483_647;

const SCALAR_NAMES: Partial<Record<Type, string>> = {
  [Type.DOUBLE]: "double",
  [Type.FLOAT]: "float",
  [Type.INT64]: "int64",
  [Type.UINT64]: "uint64",
  [Type.INT32]: "int32",
  [Type.FIXED64]: "fixed64",
  [Type.FIXED32]: "fixed32",
  [Type.BOOL]: "bool",
  [Type.STRING]: "string",
  [Type.BYTES]: "bytes",
  [Type.UINT32]: "uint32",
  [Type.SFIXED32]: "sfixed32",
  [Type.SFIXED64]: "sfixed64",
  [Type.SINT32]: "sint32",
  [Type.SINT64]: "sint64",
};

/** A proto string literal. Non-ASCII text stays UTF-8, which protoc and buf accept. */
function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

function enumValueName(e: DescEnum, n: number): string {
  return e.values.find((v) => v.number === n)?.name ?? String(n);
}

/**
 * `name = value` entries for the standard options set on `opts`.
 *
 * Works off the options schema by reflection, so every option declared in
 * descriptor.proto is covered without a hand-kept list. `features` is
 * flattened to `features.x = Y`, the way editions source spells it; other
 * message values become aggregate literals (`{ edition: EDITION_2023 ... }`).
 * Custom options are extensions, which the options schema does not know, so
 * they sit in unknown fields and are skipped along with uninterpreted_option.
 */
function optionEntries(schema: DescMessage, opts: Message | undefined, skip: ReadonlySet<string> = new Set()): string[] {
  if (opts === undefined) return [];
  const out: string[] = [];
  const values = opts as unknown as Record<string, unknown>;
  for (const f of schema.fields) {
    if (skip.has(f.name) || f.name === "uninterpreted_option" || !isFieldSet(opts, f)) continue;
    const v = values[f.localName];
    if (f.fieldKind === "message" && f.message.typeName === FeatureSetSchema.typeName) {
      out.push(...optionEntries(FeatureSetSchema, v as Message).map((e) => `features.${e}`));
    } else {
      // Repeated options are written as one assignment per element.
      out.push(...literals(f, v).map((l) => `${f.name} = ${l}`));
    }
  }
  return out;
}

/** Option literals for the value `v` of field `f`: one per element for lists and maps. */
function literals(f: DescField, v: unknown): string[] {
  switch (f.fieldKind) {
    case "scalar":
      return [scalarLiteral(f.scalar, v)];
    case "enum":
      return [enumValueName(f.enum, v as number)];
    case "message":
      return [messageLiteral(f.message, v as Message)];
    case "list":
      return (v as unknown[]).map((x) =>
        f.listKind === "scalar" ? scalarLiteral(f.scalar, x) : f.listKind === "enum" ? enumValueName(f.enum, x as number) : messageLiteral(f.message, x as Message),
      );
    case "map":
      return Object.entries(v as Record<string, unknown>).map(([k, x]) => {
        const key = f.mapKey === ScalarType.STRING ? quote(k) : k;
        const value = f.mapKind === "scalar" ? scalarLiteral(f.scalar, x) : f.mapKind === "enum" ? enumValueName(f.enum, x as number) : messageLiteral(f.message, x as Message);
        return `{ key: ${key} value: ${value} }`;
      });
  }
}

/** A message value in the text-format syntax that .proto option values use. */
function messageLiteral(schema: DescMessage, msg: Message): string {
  const values = msg as unknown as Record<string, unknown>;
  const parts: string[] = [];
  for (const f of schema.fields) {
    if (isFieldSet(msg, f)) parts.push(...literals(f, values[f.localName]).map((l) => `${f.name}: ${l}`));
  }
  return parts.length > 0 ? `{ ${parts.join(" ")} }` : "{}";
}

function scalarLiteral(t: ScalarType, v: unknown): string {
  switch (t) {
    case ScalarType.STRING:
      return quote(v as string);
    case ScalarType.BYTES:
      // Printable ASCII as is, everything else octal-escaped, so the bytes survive exactly.
      return `"${Array.from(v as Uint8Array, (b) => (b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : `\\${b.toString(8).padStart(3, "0")}`)).join("")}"`;
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE: {
      const n = v as number;
      return Number.isNaN(n) ? "nan" : n === Infinity ? "inf" : n === -Infinity ? "-inf" : String(n);
    }
    default:
      return String(v);
  }
}

const bracket = (entries: string[]): string => (entries.length > 0 ? ` [${entries.join(", ")}]` : "");
const optionLines = (entries: string[], indent: string): string[] => entries.map((e) => `${indent}option ${e};`);

function visibility(v: SymbolVisibility): string {
  if (v === SymbolVisibility.VISIBILITY_LOCAL) return "local ";
  if (v === SymbolVisibility.VISIBILITY_EXPORT) return "export ";
  return "";
}

/**
 * `reserved` / `extensions` range text from an inclusive end. (Descriptors
 * store message ranges with an exclusive end, enum reserved ranges inclusive.)
 */
function range(start: number, endInclusive: number, max: number): string {
  if (endInclusive >= max) return `${start} to max`;
  return start === endInclusive ? `${start}` : `${start} to ${endInclusive}`;
}

class Printer {
  private readonly lines: string[] = [];

  constructor(private readonly syntax: Syntax) {}

  text(): string {
    return `${this.lines.join("\n")}\n`;
  }

  push(...lines: string[]): void {
    this.lines.push(...lines);
  }

  /** Closes a block opened on the last line, as `{}` when nothing was printed into it. */
  private close(indent: string): void {
    const last = this.lines.length - 1;
    if (this.lines[last]?.endsWith("{")) this.lines[last] += "}";
    else this.push(`${indent}}`);
  }

  /**
   * Nested types of a scope that a field declares inline and that must not be
   * printed on their own: map entries (`map<K, V>` syntax) and, in proto2,
   * group types (`group Name = N { ... }`). Keyed by fully-qualified name.
   */
  private ownedTypes(scope: string, types: readonly DescriptorProto[], fields: readonly FieldDescriptorProto[]): Map<string, DescriptorProto> {
    const byName = new Map(types.map((t) => [`${scope}.${t.name}`, t]));
    const owned = new Map<string, DescriptorProto>();
    for (const t of types) if (t.options?.mapEntry === true) owned.set(`${scope}.${t.name}`, t);
    if (this.syntax !== "proto2") return owned; // editions spell groups as DELIMITED message fields
    for (const f of fields) {
      if (f.type !== Type.GROUP) continue;
      const t = byName.get(f.typeName);
      // A group's type is declared where the group is; anything else has no source form.
      if (t === undefined) throw new Error(`group field ${f.name}: type ${f.typeName} is not declared in ${scope || "the file"}`);
      owned.set(f.typeName, t);
    }
    return owned;
  }

  private label(f: FieldDescriptorProto, inOneof: boolean): string {
    if (f.label === Label.REPEATED) return "repeated ";
    if (inOneof || this.syntax === "editions") return "";
    if (this.syntax === "proto3") return f.proto3Optional ? "optional " : "";
    return f.label === Label.REQUIRED ? "required " : "optional ";
  }

  private fieldOptions(f: FieldDescriptorProto): string[] {
    const entries: string[] = [];
    if (isFieldSet(f, FieldDescriptorProtoSchema.field.defaultValue)) {
      // Bytes defaults are stored C-escaped already; everything else is raw text.
      const v = f.type === Type.STRING ? quote(f.defaultValue) : f.type === Type.BYTES ? `"${f.defaultValue}"` : f.defaultValue;
      entries.push(`default = ${v}`);
    }
    if (isFieldSet(f, FieldDescriptorProtoSchema.field.jsonName) && f.jsonName !== protoCamelCase(f.name)) {
      entries.push(`json_name = ${quote(f.jsonName)}`);
    }
    const opts = optionEntries(FieldOptionsSchema, f.options);
    if (this.syntax === "editions") {
      // An editions descriptor normally carries these as explicit features;
      // add them if the descriptor only says so through label or type.
      if (f.label === Label.REQUIRED && !opts.some((o) => o.startsWith("features.field_presence"))) {
        opts.push("features.field_presence = LEGACY_REQUIRED");
      }
      if (f.type === Type.GROUP && !opts.some((o) => o.startsWith("features.message_encoding"))) {
        opts.push("features.message_encoding = DELIMITED");
      }
    }
    return [...entries, ...opts];
  }

  private typeName(f: FieldDescriptorProto): string {
    return SCALAR_NAMES[f.type] ?? f.typeName; // typeName is fully qualified, with a leading dot
  }

  /**
   * Prints the members of a scope (a message, or the file when `fields` is
   * empty) so that buf compiles them back in descriptor order: fields in
   * order; nested messages, including the entry types that map fields and
   * groups create implicitly, in nested_type order; extensions in order.
   * Order is not part of the wire format, but keeping it makes the compiled
   * descriptor equal to the source descriptor, which is easy to verify.
   */
  private members(scope: string, indent: string, m: Pick<DescriptorProto, "nestedType" | "field" | "oneofDecl" | "extension">): void {
    const types = m.nestedType;
    const owned = this.ownedTypes(scope, types, [...m.field, ...m.extension]);
    const index = new Map(types.map((t, i) => [`${scope}.${t.name}`, i]));
    const done = new Set<number>();
    // Print the not-yet-printed free-standing types declared before `limit`.
    const flush = (limit: number) => {
      for (let i = 0; i < limit; i++) {
        const t = types[i]!;
        if (done.has(i) || owned.has(`${scope}.${t.name}`)) continue;
        done.add(i);
        this.message(t, scope, indent);
      }
    };
    const field = (f: FieldDescriptorProto, at: string, inOneof: boolean) => {
      const entry = owned.get(f.typeName);
      const i = index.get(f.typeName);
      if (entry !== undefined && i !== undefined) {
        flush(i);
        done.add(i);
      }
      const opts = bracket(this.fieldOptions(f));
      if (entry?.options?.mapEntry === true && f.label === Label.REPEATED) {
        const [k, v] = [entry.field.find((x) => x.number === 1), entry.field.find((x) => x.number === 2)];
        if (k === undefined || v === undefined) throw new Error(`map entry ${f.typeName} lacks key or value`);
        this.push(`${at}map<${this.typeName(k)}, ${this.typeName(v)}> ${f.name} = ${f.number}${opts};`);
      } else if (entry !== undefined && f.type === Type.GROUP) {
        this.push(`${at}${this.label(f, inOneof)}group ${entry.name} = ${f.number}${opts} {`);
        this.messageBody(entry, `${scope}.${entry.name}`, `${at}  `);
        this.close(at);
      } else {
        this.push(`${at}${this.label(f, inOneof)}${this.typeName(f)} ${f.name} = ${f.number}${opts};`);
      }
    };

    // Fields. A real oneof's members are contiguous in source, so its block
    // goes where its first member is. proto3 `optional` fields sit in
    // synthetic oneofs, which have no source form.
    const printedOneofs = new Set<number>();
    for (const f of m.field) {
      if (!isFieldSet(f, FieldDescriptorProtoSchema.field.oneofIndex) || f.proto3Optional) {
        field(f, indent, false);
        continue;
      }
      if (printedOneofs.has(f.oneofIndex)) continue;
      printedOneofs.add(f.oneofIndex);
      const decl = m.oneofDecl[f.oneofIndex];
      if (decl === undefined) throw new Error(`${scope}.${f.name}: oneof_index ${f.oneofIndex} out of range`);
      this.push(`${indent}oneof ${decl.name} {`);
      this.push(...optionLines(optionEntries(OneofOptionsSchema, decl.options), `${indent}  `));
      for (const member of m.field) {
        if (isFieldSet(member, FieldDescriptorProtoSchema.field.oneofIndex) && member.oneofIndex === f.oneofIndex) field(member, `${indent}  `, true);
      }
      this.push(`${indent}}`);
    }

    // Extensions, one `extend` block per run of the same extendee. A block
    // holding a group is printed where the group's type sits among the types.
    const runs: FieldDescriptorProto[][] = [];
    for (const e of m.extension) {
      const last = runs.at(-1);
      if (last !== undefined && last[0]!.extendee === e.extendee) last.push(e);
      else runs.push([e]);
    }
    let nextRun = 0;
    const extendThrough = (run: number) => {
      for (; nextRun <= run; nextRun++) {
        const fields = runs[nextRun]!;
        if (indent === "") this.push("");
        this.push(`${indent}extend ${fields[0]!.extendee} {`);
        for (const f of fields) field(f, `${indent}  `, false);
        this.push(`${indent}}`);
      }
    };
    for (let i = 0; i < types.length; i++) {
      if (done.has(i)) continue;
      const full = `${scope}.${types[i]!.name}`;
      if (owned.has(full)) {
        const run = runs.findIndex((r) => r.some((e) => e.typeName === full));
        if (run >= 0) extendThrough(run);
        continue;
      }
      flush(i + 1);
    }
    extendThrough(runs.length - 1);
  }

  enumDecl(e: EnumDescriptorProto, indent: string): void {
    const inner = `${indent}  `;
    if (indent === "") this.push("");
    this.push(`${indent}${visibility(e.visibility)}enum ${e.name} {`);
    this.push(...optionLines(optionEntries(EnumOptionsSchema, e.options), inner));
    for (const v of e.value) this.push(`${inner}${v.name} = ${v.number}${bracket(optionEntries(EnumValueOptionsSchema, v.options))};`);
    for (const r of e.reservedRange) this.push(`${inner}reserved ${range(r.start, r.end, MAX_ENUM_NUMBER)};`);
    this.reservedNames(e.reservedName, inner);
    this.push(`${indent}}`);
  }

  private reservedNames(names: readonly string[], indent: string): void {
    if (names.length === 0) return;
    // Editions spells reserved names as identifiers; proto2/proto3 as strings.
    const list = names.map((n) => (this.syntax === "editions" ? n : quote(n)));
    this.push(`${indent}reserved ${list.join(", ")};`);
  }

  message(m: DescriptorProto, scope: string, indent: string): void {
    if (indent === "") this.push("");
    this.push(`${indent}${visibility(m.visibility)}message ${m.name} {`);
    this.messageBody(m, `${scope}.${m.name}`, `${indent}  `);
    this.close(indent);
  }

  private messageBody(m: DescriptorProto, name: string, indent: string): void {
    // map_entry is implied by map<K, V> syntax; writing it out is an error.
    this.push(...optionLines(optionEntries(MessageOptionsSchema, m.options, new Set(["map_entry"])), indent));
    for (const e of m.enumType) this.enumDecl(e, indent);
    this.members(name, indent, m);
    const maxField = m.options?.messageSetWireFormat === true ? MAX_ENUM_NUMBER - 1 : MAX_FIELD_NUMBER;
    for (const r of m.extensionRange) {
      this.push(`${indent}extensions ${range(r.start, r.end - 1, maxField)}${bracket(optionEntries(ExtensionRangeOptionsSchema, r.options))};`);
    }
    for (const r of m.reservedRange) this.push(`${indent}reserved ${range(r.start, r.end - 1, maxField)};`);
    this.reservedNames(m.reservedName, indent);
  }

  service(s: ServiceDescriptorProto): void {
    this.push("", `service ${s.name} {`);
    this.push(...optionLines(optionEntries(ServiceOptionsSchema, s.options), "  "));
    for (const rpc of s.method) {
      const req = `${rpc.clientStreaming ? "stream " : ""}${rpc.inputType}`;
      const res = `${rpc.serverStreaming ? "stream " : ""}${rpc.outputType}`;
      const opts = optionLines(optionEntries(MethodOptionsSchema, rpc.options), "    ");
      if (opts.length === 0) this.push(`  rpc ${rpc.name}(${req}) returns (${res});`);
      else this.push(`  rpc ${rpc.name}(${req}) returns (${res}) {`, ...opts, "  }");
    }
    this.push("}");
  }

  file(file: FileDescriptorProto): void {
    if (this.syntax === "editions") this.push(`edition = "${Edition[file.edition].replace(/^EDITION_/, "")}";`);
    else this.push(`syntax = "${this.syntax}";`);
    if (file.package !== "") this.push("", `package ${file.package};`);
    const imports = file.dependency.map((d, i) => {
      const kind = file.publicDependency.includes(i) ? "public " : file.weakDependency.includes(i) ? "weak " : "";
      return `import ${kind}${quote(d)};`;
    });
    imports.push(...file.optionDependency.map((d) => `import option ${quote(d)};`));
    if (imports.length > 0) this.push("", ...imports);
    const fileOptions = optionLines(optionEntries(FileOptionsSchema, file.options), "");
    if (fileOptions.length > 0) this.push("", ...fileOptions);

    // Top-level declarations; each starts with a blank line.
    for (const e of file.enumType) this.enumDecl(e, "");
    this.members(file.package === "" ? "" : `.${file.package}`, "", { nestedType: file.messageType, field: [], oneofDecl: [], extension: file.extension });
    for (const s of file.service) this.service(s);
  }
}

function syntaxOf(file: FileDescriptorProto): Syntax {
  // protoc leaves `syntax` unset for proto2 files, as in validate.proto's descriptor.
  if (file.syntax === "" || file.syntax === "proto2") return "proto2";
  if (file.syntax === "proto3") return "proto3";
  if (file.syntax === "editions") return "editions";
  throw new Error(`${file.name}: unsupported syntax ${quote(file.syntax)}`);
}

/**
 * .proto source for `file`: a protobuf-es DescFile (e.g. an exported
 * `file_*` GenFile) or a raw FileDescriptorProto. `header` lines are emitted
 * as `//` comments at the top.
 */
export function printProto(file: DescFile | FileDescriptorProto, header: readonly string[] = []): string {
  const proto = "proto" in file ? file.proto : file;
  const p = new Printer(syntaxOf(proto));
  p.push(...header.map((h) => (h === "" ? "//" : `// ${h}`)));
  if (header.length > 0) p.push("");
  p.file(proto);
  return p.text();
}

/** Version of the installed @bufbuild/protovalidate, recorded in the header so a stale copy is visible in review. */
function protovalidateVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.resolve("@bufbuild/protovalidate")));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "@bufbuild/protovalidate") return pkg.version ?? "unknown";
    } catch {
      // not here; keep walking up
    }
    const parent = dirname(dir);
    if (parent === dir) return "unknown";
    dir = parent;
  }
}

function main(): void {
  const out = process.argv[2] ?? "third_party/proto/buf/validate/validate.proto";
  const header = [
    "Code generated by scripts/print-proto-from-descriptor.ts. DO NOT EDIT.",
    `Source: the FileDescriptorProto embedded in @bufbuild/protovalidate ${protovalidateVersion()}`,
    "(export file_buf_validate_validate of @bufbuild/protovalidate/gen/buf/validate/validate_pb.js).",
    "",
    "Wire-identical to buf/validate/validate.proto: same messages, field numbers,",
    "types and extensions. Comments and custom options (the predefined CEL rules)",
    "are omitted; protovalidate takes those from its own embedded descriptor.",
    "Regenerate after upgrading @bufbuild/protovalidate:",
    "  node --import tsx scripts/print-proto-from-descriptor.ts third_party/proto/buf/validate/validate.proto",
  ];
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, printProto(file_buf_validate_validate, header));
  console.log(`wrote ${out}`);
}

// Run only when executed directly, so printProto can be imported (e.g. by tests).
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main();
}
