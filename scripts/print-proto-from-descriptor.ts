/**
 * Prints .proto source for a file descriptor, and writes
 * third_party/proto/buf/validate/validate.proto from the descriptor that
 * @bufbuild/protovalidate embeds.
 *
 * Why: our protos import buf/validate/validate.proto, which buf must compile,
 * but no npm package ships that source and the schema registry is out of
 * reach. The runtime package carries the exact descriptor, so we print a
 * wire-identical source from it: same messages, field numbers, types and
 * extensions. Comments and custom options (CEL predefined rules) are
 * dropped; buf only needs the shapes to encode our option values, and the
 * generated code imports the real descriptor from @bufbuild/protovalidate.
 *
 * Usage: node --import tsx scripts/print-proto-from-descriptor.ts [out]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { isFieldSet } from "@bufbuild/protobuf";
import {
  type DescriptorProto,
  type EnumDescriptorProto,
  type FieldDescriptorProto,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FieldDescriptorProtoSchema,
  FieldOptionsSchema,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

const SCALAR: Partial<Record<FieldDescriptorProto_Type, string>> = {
  [FieldDescriptorProto_Type.DOUBLE]: "double",
  [FieldDescriptorProto_Type.FLOAT]: "float",
  [FieldDescriptorProto_Type.INT64]: "int64",
  [FieldDescriptorProto_Type.UINT64]: "uint64",
  [FieldDescriptorProto_Type.INT32]: "int32",
  [FieldDescriptorProto_Type.FIXED64]: "fixed64",
  [FieldDescriptorProto_Type.FIXED32]: "fixed32",
  [FieldDescriptorProto_Type.BOOL]: "bool",
  [FieldDescriptorProto_Type.STRING]: "string",
  [FieldDescriptorProto_Type.BYTES]: "bytes",
  [FieldDescriptorProto_Type.UINT32]: "uint32",
  [FieldDescriptorProto_Type.SFIXED32]: "sfixed32",
  [FieldDescriptorProto_Type.SFIXED64]: "sfixed64",
  [FieldDescriptorProto_Type.SINT32]: "sint32",
  [FieldDescriptorProto_Type.SINT64]: "sint64",
};

function typeOf(f: FieldDescriptorProto): string {
  return SCALAR[f.type] ?? f.typeName;
}

function label(f: FieldDescriptorProto, proto2: boolean, inOneof: boolean): string {
  if (inOneof) return "";
  if (f.label === FieldDescriptorProto_Label.REPEATED) return "repeated ";
  if (f.label === FieldDescriptorProto_Label.REQUIRED) return "required ";
  return proto2 || f.proto3Optional ? "optional " : "";
}

function fieldLine(f: FieldDescriptorProto, proto2: boolean, inOneof: boolean): string {
  const opts: string[] = [];
  if (f.options !== undefined && isFieldSet(f.options, FieldOptionsSchema.field.packed)) opts.push(`packed = ${f.options.packed}`);
  if (f.options?.deprecated) opts.push("deprecated = true");
  return `${label(f, proto2, inOneof)}${typeOf(f)} ${f.name} = ${f.number}${opts.length > 0 ? ` [${opts.join(", ")}]` : ""};`;
}

function printEnum(e: EnumDescriptorProto, indent: string): string[] {
  return [`${indent}enum ${e.name} {`, ...e.value.map((v) => `${indent}  ${v.name} = ${v.number};`), `${indent}}`];
}

function printExtends(exts: readonly FieldDescriptorProto[], proto2: boolean, indent: string): string[] {
  const out: string[] = [];
  for (const [extendee, fields] of Map.groupBy(exts, (e) => e.extendee)) {
    out.push(`${indent}extend ${extendee} {`, ...fields.map((f) => `${indent}  ${fieldLine(f, proto2, false)}`), `${indent}}`);
  }
  return out;
}

function printMessage(m: DescriptorProto, proto2: boolean, indent: string): string[] {
  const out = [`${indent}message ${m.name} {`];
  const inner = `${indent}  `;
  for (const n of m.nestedType) {
    if (n.options?.mapEntry) continue;
    out.push(...printMessage(n, proto2, inner));
  }
  for (const e of m.enumType) out.push(...printEnum(e, inner));
  const mapEntries = new Map(m.nestedType.filter((n) => n.options?.mapEntry).map((n) => [`${n.name}`, n]));
  const realOneofs = new Map<number, FieldDescriptorProto[]>();
  for (const f of m.field) {
    const oneof = isFieldSet(f, FieldDescriptorProtoSchema.field.oneofIndex) && !f.proto3Optional ? f.oneofIndex : undefined;
    if (oneof !== undefined) {
      if (!realOneofs.has(oneof)) realOneofs.set(oneof, []);
      realOneofs.get(oneof)!.push(f);
      continue;
    }
    const entry = mapEntries.get(f.typeName.split(".").at(-1)!);
    if (entry !== undefined && f.label === FieldDescriptorProto_Label.REPEATED) {
      const [k, v] = entry.field;
      out.push(`${inner}map<${typeOf(k!)}, ${typeOf(v!)}> ${f.name} = ${f.number};`);
      continue;
    }
    out.push(`${inner}${fieldLine(f, proto2, false)}`);
  }
  for (const [i, fields] of realOneofs) {
    out.push(`${inner}oneof ${m.oneofDecl[i]!.name} {`, ...fields.map((f) => `${inner}  ${fieldLine(f, proto2, true)}`), `${inner}}`);
  }
  for (const r of m.extensionRange) out.push(`${inner}extensions ${r.start} to ${r.end - 1 >= 536870911 ? "max" : r.end - 1};`);
  for (const r of m.reservedRange) out.push(`${inner}reserved ${r.start} to ${r.end - 1};`);
  if (m.reservedName.length > 0) out.push(`${inner}reserved ${m.reservedName.map((n) => `"${n}"`).join(", ")};`);
  out.push(...printExtends(m.extension, proto2, inner));
  out.push(`${indent}}`);
  return out;
}

/** .proto source text with the messages, enums and extensions of `file`. */
export function printProto(file: FileDescriptorProto): string {
  const proto2 = file.syntax === "" || file.syntax === "proto2";
  const lines = [
    "// Code generated by scripts/print-proto-from-descriptor.ts from the descriptor",
    "// embedded in @bufbuild/protovalidate. DO NOT EDIT.",
    `syntax = "${proto2 ? "proto2" : "proto3"}";`,
    "",
    `package ${file.package};`,
    "",
    ...file.dependency.map((d) => `import "${d}";`),
    "",
  ];
  for (const e of file.enumType) lines.push(...printEnum(e, ""));
  for (const m of file.messageType) lines.push(...printMessage(m, proto2, ""));
  lines.push(...printExtends(file.extension, proto2, ""));
  return `${lines.join("\n")}\n`;
}

const out = process.argv[2] ?? "third_party/proto/buf/validate/validate.proto";
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, printProto(file_buf_validate_validate.proto));
console.log(`wrote ${out}`);
