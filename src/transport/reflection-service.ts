import {
  clone,
  create,
  createFileRegistry,
  fromBinary,
  type DescEnum,
  type DescExtension,
  type DescFile,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { type DescriptorProto, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  file_grpc_reflection_v1_reflection,
  ServerReflection,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
  type ServerReflectionResponse,
  ServerReflectionResponseSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";

/**
 * The one implementation of `grpc.reflection.v1.ServerReflection`, so that
 * grpcurl, `buf curl` and Postman can call the server without the protos.
 *
 * `sources` are the files (or services) to describe, typically the
 * generated `file_*` exports. Their imports are followed, so every answer is
 * self-contained: `file_by_filename` and `file_containing_symbol` return the
 * file and all its transitive dependencies, serialized FileDescriptorProtos
 * a client can load into a registry. `list_services` lists the services of
 * the given files (or the given services).
 *
 * Symbols are services, methods, messages, fields, oneofs, enums, enum
 * values and extensions, by fully-qualified name. Everything is indexed
 * once, here; a request is a map lookup. Unknown names get an in-stream
 * `error_response` with NOT_FOUND, as the reflection protocol specifies,
 * rather than failing the stream.
 */
export function createReflectionService(sources: ReadonlyArray<DescFile | DescService>): ServiceImpl<typeof ServerReflection> {
  const index = createIndex(sources);
  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield create(ServerReflectionResponseSchema, { ...answer(index, req), validHost: req.host, originalRequest: req });
      }
    },
  };
}

/**
 * `grpc.reflection.v1alpha.ServerReflection`: the same protocol under its
 * pre-release name, which grpcurl and older clients still try first. The
 * messages are identical to v1 on the wire, so this is v1's file with the
 * package renamed, and its implementation
 * ({@link createReflectionServiceV1Alpha}) re-encodes to and from v1.
 */
export const file_grpc_reflection_v1alpha_reflection: DescFile = /*@__PURE__*/ createV1AlphaFile();

/** The `grpc.reflection.v1alpha.ServerReflection` service descriptor; see {@link file_grpc_reflection_v1alpha_reflection}. */
export const ServerReflectionV1Alpha: DescService = file_grpc_reflection_v1alpha_reflection.services[0]!;

/**
 * An implementation of `grpc.reflection.v1alpha.ServerReflection` over the
 * same sources as {@link createReflectionService}; mount it with
 * {@link ServerReflectionV1Alpha}. Include
 * {@link file_grpc_reflection_v1alpha_reflection} in `sources` to have it
 * listed.
 */
export function createReflectionServiceV1Alpha(sources: ReadonlyArray<DescFile | DescService>): Partial<ServiceImpl<DescService>> {
  const v1 = createReflectionService(sources);
  const method = ServerReflectionV1Alpha.methods[0]!;
  const alphaIn = method.input;
  const alphaOut = method.output;
  async function* toV1(requests: AsyncIterable<unknown>): AsyncIterable<ServerReflectionRequest> {
    for await (const req of requests) {
      yield fromBinary(ServerReflectionRequestSchema, toBinary(alphaIn, req as never));
    }
  }
  async function* serverReflectionInfo(requests: AsyncIterable<unknown>, ctx: HandlerContext) {
    for await (const res of v1.serverReflectionInfo(toV1(requests), ctx)) {
      yield fromBinary(alphaOut, toBinary(ServerReflectionResponseSchema, res as ServerReflectionResponse));
    }
  }
  // DescService is untyped, so the method map cannot be checked against it.
  return { [method.localName]: serverReflectionInfo } as unknown as Partial<ServiceImpl<DescService>>;
}

/** Everything a reflection request can ask for, precomputed. */
interface ReflectionIndex {
  readonly services: readonly string[];
  /** By file name, e.g. "warden/v1/policy.proto". */
  readonly files: ReadonlyMap<string, DescFile>;
  /** Fully-qualified symbol (no leading dot) to its file. */
  readonly symbols: ReadonlyMap<string, DescFile>;
  readonly messages: ReadonlySet<string>;
  /** Extendee type name to extension number to the extension's file. */
  readonly extensions: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
  /** Serialized file and transitive dependencies, filled on first request. */
  readonly encoded: Map<DescFile, Uint8Array[]>;
}

function createIndex(sources: ReadonlyArray<DescFile | DescService>): ReflectionIndex {
  const services: string[] = [];
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const messages = new Set<string>();
  const extensions = new Map<string, Map<number, DescFile>>();

  const addExtension = (ext: DescExtension, file: DescFile) => {
    symbols.set(ext.typeName, file);
    let byNumber = extensions.get(ext.extendee.typeName);
    if (byNumber === undefined) extensions.set(ext.extendee.typeName, (byNumber = new Map()));
    byNumber.set(ext.number, file);
  };
  const addEnum = (e: DescEnum, file: DescFile) => {
    symbols.set(e.typeName, file);
    // Enum values are scoped like siblings of their enum, not children.
    const dot = e.typeName.lastIndexOf(".");
    const scope = dot < 0 ? "" : e.typeName.slice(0, dot + 1);
    for (const v of e.values) symbols.set(scope + v.name, file);
  };
  const addMessage = (m: DescMessage, file: DescFile) => {
    symbols.set(m.typeName, file);
    messages.add(m.typeName);
    for (const f of m.fields) symbols.set(`${m.typeName}.${f.name}`, file);
    for (const o of m.oneofs) symbols.set(`${m.typeName}.${o.name}`, file);
    for (const n of m.nestedMessages) addMessage(n, file);
    for (const e of m.nestedEnums) addEnum(e, file);
    for (const x of m.nestedExtensions) addExtension(x, file);
  };
  const addFile = (file: DescFile) => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const dep of file.dependencies) addFile(dep);
    for (const s of file.services) {
      symbols.set(s.typeName, file);
      for (const m of s.methods) symbols.set(`${s.typeName}.${m.name}`, file);
    }
    for (const m of file.messages) addMessage(m, file);
    for (const e of file.enums) addEnum(e, file);
    for (const x of file.extensions) addExtension(x, file);
  };

  for (const source of sources) {
    const listed = source.kind === "file" ? source.services : [source];
    addFile(source.kind === "file" ? source : source.file);
    for (const s of listed) if (!services.includes(s.typeName)) services.push(s.typeName);
  }
  return { services, files, symbols, messages, extensions, encoded: new Map() };
}

type ResponseBody = Pick<MessageInitShape<typeof ServerReflectionResponseSchema>, "messageResponse">;

function answer(index: ReflectionIndex, req: ServerReflectionRequest): ResponseBody {
  const r = req.messageRequest;
  switch (r.case) {
    case "listServices":
      return { messageResponse: { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } } };
    case "fileByFilename":
      return fileResponse(index, index.files.get(r.value), `file ${JSON.stringify(r.value)}`);
    case "fileContainingSymbol": {
      // Accept ".pkg.Type" too: some clients send the descriptor form.
      const name = r.value.startsWith(".") ? r.value.slice(1) : r.value;
      return fileResponse(index, index.symbols.get(name), `symbol ${JSON.stringify(r.value)}`);
    }
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = r.value;
      return fileResponse(index, index.extensions.get(containingType)?.get(extensionNumber), `extension ${extensionNumber} of ${JSON.stringify(containingType)}`);
    }
    case "allExtensionNumbersOfType": {
      if (!index.messages.has(r.value)) return errorResponse(Code.NotFound, `type ${JSON.stringify(r.value)} not found`);
      const numbers = [...(index.extensions.get(r.value)?.keys() ?? [])].sort((a, b) => a - b);
      return { messageResponse: { case: "allExtensionNumbersResponse", value: { baseTypeName: r.value, extensionNumber: numbers } } };
    }
    case undefined:
      return errorResponse(Code.InvalidArgument, "empty reflection request");
  }
}

function fileResponse(index: ReflectionIndex, file: DescFile | undefined, what: string): ResponseBody {
  if (file === undefined) return errorResponse(Code.NotFound, `${what} not found`);
  let encoded = index.encoded.get(file);
  if (encoded === undefined) {
    // The file first, then every dependency once, so a client can build a
    // complete registry from any single answer.
    const seen = new Set<DescFile>();
    encoded = [];
    const visit = (f: DescFile) => {
      if (seen.has(f)) return;
      seen.add(f);
      encoded!.push(toBinary(FileDescriptorProtoSchema, f.proto));
      for (const dep of f.dependencies) visit(dep);
    };
    visit(file);
    index.encoded.set(file, encoded);
  }
  return { messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: encoded } } };
}

function errorResponse(code: Code, message: string): ResponseBody {
  return { messageResponse: { case: "errorResponse", value: { errorCode: code, errorMessage: message } } };
}

function createV1AlphaFile(): DescFile {
  const proto = clone(FileDescriptorProtoSchema, file_grpc_reflection_v1_reflection.proto);
  const from = ".grpc.reflection.v1.";
  const to = ".grpc.reflection.v1alpha.";
  const rename = (typeName: string) => (typeName.startsWith(from) ? to + typeName.slice(from.length) : typeName);
  const renameMessage = (m: DescriptorProto): void => {
    for (const f of m.field) f.typeName = rename(f.typeName);
    m.nestedType.forEach(renameMessage);
  };
  proto.name = "grpc/reflection/v1alpha/reflection.proto";
  proto.package = "grpc.reflection.v1alpha";
  // v1's options name v1's Java/Go/C# packages; none apply to the alias.
  proto.options = undefined;
  proto.sourceCodeInfo = undefined;
  proto.messageType.forEach(renameMessage);
  for (const s of proto.service) {
    for (const m of s.method) {
      m.inputType = rename(m.inputType);
      m.outputType = rename(m.outputType);
    }
  }
  const registry = createFileRegistry(proto, () => undefined);
  return registry.getFile(proto.name)!;
}
