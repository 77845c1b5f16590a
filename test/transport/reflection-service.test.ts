import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { create, createFileRegistry, type DescService, fromBinary, type Message, type MessageInitShape } from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { file_grpc_health_v1_health, Health } from "../../src/gen/grpc/health/v1/health_pb.js";
import {
  file_grpc_reflection_v1_reflection,
  ServerReflection,
  type ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "../../src/gen/grpc/reflection/v1/reflection_pb.js";
import { file_warden_v1_policy_service } from "../../src/gen/warden/v1/policy_service_pb.js";
import { mountService } from "../../src/transport/grpc-server.js";
import { createHealthService, HealthStatus } from "../../src/transport/health-service.js";
import {
  createReflectionService,
  createReflectionServiceV1Alpha,
  file_grpc_reflection_v1alpha_reflection,
  ServerReflectionV1Alpha,
} from "../../src/transport/reflection-service.js";
import { grpcJsClient, type Stacks, stackUrls, startStacks } from "./harness.js";

type RequestInit = MessageInitShape<typeof ServerReflectionRequestSchema>;

const sources = [file_warden_v1_policy_service, file_grpc_health_v1_health, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection];

/**
 * Sends requests over one grpc-js bidi call, as grpcurl does, and collects
 * the answers. `service` is v1 or v1alpha; the answers are read back as v1
 * (the wire format is the same).
 */
async function reflect(address: string, service: DescService, requests: RequestInit[]): Promise<ServerReflectionResponse[]> {
  const client = grpcJsClient(service, address);
  const input = service.methods[0]!.input;
  try {
    const call = (client.serverReflectionInfo as () => grpc.ClientDuplexStream<Message, Message>)();
    const responses: Message[] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on("data", (m: Message) => responses.push(m));
      call.on("error", reject);
      call.on("status", (s: grpc.StatusObject) => (s.code === grpc.status.OK ? resolve() : reject(new Error(s.details))));
    });
    for (const r of requests) call.write(create(input, r as never));
    call.end();
    await done;
    // Re-read as v1: the answers of v1alpha differ only in type name.
    return responses.map((m) => m as unknown as ServerReflectionResponse);
  } finally {
    client.close();
  }
}

/** Decodes a file_descriptor_response; fails the test if it is anything else. */
function filesOf(res: ServerReflectionResponse): string[] {
  assert.equal(res.messageResponse.case, "fileDescriptorResponse", JSON.stringify(res.messageResponse.value));
  return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
}

/**
 * Orders files so each comes after its imports, as a FileDescriptorSet must
 * be; throws if an import is not in the answer at all.
 */
function dependenciesFirst(protos: FileDescriptorProto[]): FileDescriptorProto[] {
  const byName = new Map(protos.map((p) => [p.name, p]));
  const sorted: FileDescriptorProto[] = [];
  const visit = (p: FileDescriptorProto) => {
    if (sorted.includes(p)) return;
    for (const dep of p.dependency) {
      const d = byName.get(dep);
      if (d === undefined) throw new Error(`${p.name} imports ${dep}, which the answer lacks`);
      visit(d);
    }
    sorted.push(p);
  };
  protos.forEach(visit);
  return sorted;
}

describe("createReflectionService on both stacks", { timeout: 20_000 }, () => {
  let stacks: Stacks;

  before(async () => {
    stacks = await startStacks([
      mountService(Health, createHealthService(new HealthStatus())),
      mountService(ServerReflection, createReflectionService(sources)),
      { service: ServerReflectionV1Alpha, impl: createReflectionServiceV1Alpha(sources) },
    ]);
  });
  after(() => stacks.close());

  for (const version of [
    { name: "v1", service: ServerReflection as DescService },
    { name: "v1alpha", service: ServerReflectionV1Alpha },
  ]) {
    test(`${version.name}: list_services lists the services of the given files`, async () => {
      for (const { name, grpcAddress } of stackUrls(stacks)) {
        const [res] = await reflect(grpcAddress, version.service, [{ host: "h", messageRequest: { case: "listServices", value: "*" } }]);
        assert.equal(res!.messageResponse.case, "listServicesResponse", name);
        assert.deepEqual(
          res!.messageResponse.value!.service.map((s) => s.name),
          ["warden.v1.PolicyService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"],
          name,
        );
        assert.equal(res!.validHost, "h", name);
        assert.equal(res!.originalRequest?.messageRequest.case, "listServices", name);
      }
    });

    test(`${version.name}: file_containing_symbol returns the file and its dependencies, enough to build a registry`, async () => {
      for (const { name, grpcAddress } of stackUrls(stacks)) {
        const [res] = await reflect(grpcAddress, version.service, [{ messageRequest: { case: "fileContainingSymbol", value: "warden.v1.PolicyService" } }]);
        assert.equal(res!.messageResponse.case, "fileDescriptorResponse", name);
        const protos = res!.messageResponse.value!.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b as Uint8Array));
        assert.equal(protos[0]!.name, "warden/v1/policy_service.proto", name);
        const names = protos.map((p) => p.name);
        for (const dep of ["buf/validate/validate.proto", "google/protobuf/descriptor.proto", "google/protobuf/timestamp.proto", "warden/v1/money.proto", "warden/v1/decision.proto"]) {
          assert.ok(names.includes(dep), `${name}: ${dep} in ${names.join(", ")}`);
        }
        assert.equal(new Set(names).size, names.length, `${name}: each file once`);
        // What grpcurl does with the answer: load it, resolving imports from
        // the same answer, and look up the method.
        const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: dependenciesFirst(protos) }));
        const check = registry.getService("warden.v1.PolicyService")?.methods.find((m) => m.name === "Check");
        assert.equal(check?.input.typeName, "warden.v1.CheckRequest", name);
        assert.equal(check?.input.field.action?.message?.field.amount?.message?.typeName, "warden.v1.Money", name);
      }
    });
  }

  test("file_containing_symbol knows methods, messages, nested types, fields, enums and enum values", async () => {
    const symbols: [string, string][] = [
      ["warden.v1.PolicyService.Check", "warden/v1/policy_service.proto"],
      [".warden.v1.CheckRequest", "warden/v1/policy_service.proto"],
      ["google.protobuf.DescriptorProto.ExtensionRange", "google/protobuf/descriptor.proto"],
      ["warden.v1.Action.amount", "warden/v1/policy_service.proto"],
      ["warden.v1.ActionStatus", "warden/v1/policy_service.proto"],
      ["warden.v1.ACTION_STATUS_HELD", "warden/v1/policy_service.proto"],
      ["warden.v1.Money", "warden/v1/money.proto"],
      ["grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"],
      ["grpc.health.v1.HealthCheckResponse.SERVING", "grpc/health/v1/health.proto"],
      ["buf.validate.field", "buf/validate/validate.proto"],
      ["grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"],
    ];
    const answers = await reflect(
      stacks.grpcAddress,
      ServerReflection,
      symbols.map(([s]) => ({ messageRequest: { case: "fileContainingSymbol", value: s } })),
    );
    assert.equal(answers.length, symbols.length);
    answers.forEach((res, i) => assert.equal(filesOf(res)[0], symbols[i]![1], symbols[i]![0]));
  });

  test("file_by_filename, and an unknown name answers NOT_FOUND without ending the stream", async () => {
    const [money, missing, again] = await reflect(stacks.grpcAddress, ServerReflection, [
      { messageRequest: { case: "fileByFilename", value: "warden/v1/money.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "warden.v1.NoSuchThing" } },
      { messageRequest: { case: "fileByFilename", value: "grpc/health/v1/health.proto" } },
    ]);
    const moneyFiles = filesOf(money!);
    assert.equal(moneyFiles[0], "warden/v1/money.proto");
    assert.ok(moneyFiles.includes("buf/validate/validate.proto"));
    assert.ok(!moneyFiles.includes("warden/v1/policy_service.proto"), "only what money.proto needs");
    assert.equal(missing!.messageResponse.case, "errorResponse");
    assert.equal(missing!.messageResponse.value!.errorCode, Code.NotFound);
    assert.match(missing!.messageResponse.value!.errorMessage, /warden\.v1\.NoSuchThing/);
    assert.deepEqual(filesOf(again!), ["grpc/health/v1/health.proto"]);
  });

  test("file_containing_extension and all_extension_numbers_of_type", async () => {
    const [byExtension, numbers, unknownType, unknownNumber] = await reflect(stacks.grpcAddress, ServerReflection, [
      { messageRequest: { case: "fileContainingExtension", value: { containingType: "google.protobuf.FieldOptions", extensionNumber: 1159 } } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "google.protobuf.FieldOptions" } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "no.such.Type" } },
      { messageRequest: { case: "fileContainingExtension", value: { containingType: "google.protobuf.FieldOptions", extensionNumber: 4242 } } },
    ]);
    assert.equal(filesOf(byExtension!)[0], "buf/validate/validate.proto");
    assert.equal(numbers!.messageResponse.case, "allExtensionNumbersResponse");
    assert.deepEqual(numbers!.messageResponse.value, { $typeName: "grpc.reflection.v1.ExtensionNumberResponse", baseTypeName: "google.protobuf.FieldOptions", extensionNumber: [1159, 1160] });
    assert.equal(unknownType!.messageResponse.case, "errorResponse");
    assert.equal(unknownType!.messageResponse.value!.errorCode, Code.NotFound);
    assert.equal(unknownNumber!.messageResponse.case, "errorResponse");
  });

  test("a connect-es client can reflect over gRPC on both stacks", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: `http://${grpcAddress}` }));
      async function* requests() {
        yield { messageRequest: { case: "listServices" as const, value: "" } };
        yield { messageRequest: { case: "fileContainingSymbol" as const, value: "grpc.health.v1.Health.Watch" } };
      }
      const answers: ServerReflectionResponse[] = [];
      for await (const res of client.serverReflectionInfo(requests())) answers.push(res);
      assert.equal(answers.length, 2, name);
      assert.equal(answers[0]!.messageResponse.case, "listServicesResponse", name);
      assert.deepEqual(filesOf(answers[1]!), ["grpc/health/v1/health.proto"], name);
    }
  });

  test("buf curl, knowing no protos, lists and calls methods through reflection on both ports (v1 and v1alpha)", async () => {
    const buf = join(import.meta.dirname, "..", "..", "node_modules", ".bin", "buf");
    const run = async (...args: string[]) => (await promisify(execFile)(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args])).stdout;
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
        const methods = await run("--reflect-protocol", protocol, "--list-methods", `http://${grpcAddress}`);
        assert.match(methods, /^warden\.v1\.PolicyService\/Check$/m, `${name}, ${protocol}`);
        assert.match(methods, /^grpc\.health\.v1\.Health\/Watch$/m, `${name}, ${protocol}`);
      }
      // A call needs the request schema, which only reflection can supply.
      const health = await run("-d", '{"service":""}', `http://${grpcAddress}/grpc.health.v1.Health/Check`);
      assert.deepEqual(JSON.parse(health), { status: "SERVING" }, name);
    }
  });
});
