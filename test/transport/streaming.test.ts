import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { create, createFileRegistry, type DescMessage, type DescService, type Message } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient, type HandlerContext } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import type { MountedService } from "../../src/transport/grpc-server.js";
import { grpcJsClient, type Stacks, stackUrls, startStacks } from "./harness.js";

/**
 * A service with every streaming shape, described in the test itself:
 *
 *   message Num { int64 n = 1; bytes pad = 2; }
 *   service Numbers {
 *     rpc Sum(stream Num) returns (Num);            // client streaming
 *     rpc Count(Num) returns (stream Num);          // server streaming
 *     rpc Double(stream Num) returns (stream Num);  // bidi streaming
 *     rpc First(stream Num) returns (stream Num);   // bidi, stops reading early
 *   }
 */
const numbersFile = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "test/v1/numbers.proto",
    package: "test.v1",
    syntax: "proto3",
    messageType: [
      {
        name: "Num",
        field: [
          { name: "n", jsonName: "n", number: 1, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.INT64 },
          { name: "pad", jsonName: "pad", number: 2, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.BYTES },
        ],
      },
    ],
    service: [
      {
        name: "Numbers",
        method: [
          { name: "Sum", inputType: ".test.v1.Num", outputType: ".test.v1.Num", clientStreaming: true },
          { name: "Count", inputType: ".test.v1.Num", outputType: ".test.v1.Num", serverStreaming: true },
          { name: "Double", inputType: ".test.v1.Num", outputType: ".test.v1.Num", clientStreaming: true, serverStreaming: true },
          { name: "First", inputType: ".test.v1.Num", outputType: ".test.v1.Num", clientStreaming: true, serverStreaming: true },
        ],
      },
    ],
  }),
  () => undefined,
);
const Numbers: DescService = numbersFile.getService("test.v1.Numbers")!;
const NumSchema: DescMessage = numbersFile.getMessage("test.v1.Num")!;
type Num = Message & { n: bigint; pad: Uint8Array };

const num = (n: number, padBytes = 0) => create(NumSchema, { n: BigInt(n), pad: new Uint8Array(padBytes) }) as Num;

/** Big enough that a few dozen of them overflow grpc-js' write buffer and exercise backpressure. */
const padBytes = 64 * 1024;

const impl = {
  async sum(requests: AsyncIterable<Num>) {
    let total = 0n;
    for await (const r of requests) total += r.n;
    return { n: total };
  },
  async *count(req: Num, ctx: HandlerContext) {
    for (let i = 1n; i <= req.n && !ctx.signal.aborted; i++) yield num(Number(i), padBytes);
  },
  async *double(requests: AsyncIterable<Num>) {
    for await (const r of requests) yield { n: r.n * 2n };
  },
  async *first(requests: AsyncIterable<Num>) {
    let first: bigint | undefined;
    for await (const r of requests) {
      first = r.n;
      break; // the response stream must outlive the request stream
    }
    yield { n: first ?? -1n };
    yield { n: 0n };
  },
};

describe("streaming methods through the adapter, on both stacks", { timeout: 20_000 }, () => {
  let stacks: Stacks;
  before(async () => {
    stacks = await startStacks([{ service: Numbers, impl: impl as unknown as MountedService["impl"] }]);
  });
  after(() => stacks.close());

  test("client streaming, server streaming and bidi with a grpc-js client", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = grpcJsClient(Numbers, grpcAddress);
      try {
        const sum = await new Promise<Num>((resolve, reject) => {
          const call = (client.sum as (cb: (e: Error | null, r: Num) => void) => grpc.ClientWritableStream<Num>)((e, r) => (e ? reject(e) : resolve(r)));
          for (const n of [1, 2, 3, 4]) call.write(num(n));
          call.end();
        });
        assert.equal(sum.n, 10n, name);

        const counted: bigint[] = [];
        const count = (client.count as (r: Num) => grpc.ClientReadableStream<Num>)(num(50));
        for await (const r of count) {
          counted.push((r as Num).n);
          assert.equal((r as Num).pad.length, padBytes);
        }
        assert.deepEqual(counted, Array.from({ length: 50 }, (_, i) => BigInt(i + 1)), name);

        const doubled: bigint[] = [];
        const bidi = (client.double as () => grpc.ClientDuplexStream<Num, Num>)();
        for (const n of [5, 6, 7]) bidi.write(num(n));
        bidi.end();
        for await (const r of bidi) doubled.push((r as Num).n);
        assert.deepEqual(doubled, [10n, 12n, 14n], name);

        const firsts: bigint[] = [];
        const early = (client.first as () => grpc.ClientDuplexStream<Num, Num>)();
        for (const n of [8, 9]) early.write(num(n));
        early.end();
        for await (const r of early) firsts.push((r as Num).n);
        assert.deepEqual(firsts, [8n, 0n], name);
      } finally {
        client.close();
      }
    }
  });

  test("the same with a connect-es gRPC client", async () => {
    for (const { name, grpcAddress } of stackUrls(stacks)) {
      const client = createClient(Numbers, createGrpcTransport({ baseUrl: `http://${grpcAddress}` })) as unknown as {
        sum(reqs: AsyncIterable<Num>): Promise<Num>;
        count(req: Num): AsyncIterable<Num>;
        double(reqs: AsyncIterable<Num>): AsyncIterable<Num>;
      };
      async function* nums(...ns: number[]) {
        for (const n of ns) yield num(n);
      }
      assert.equal((await client.sum(nums(1, 2, 3))).n, 6n, name);
      let last = 0n;
      for await (const r of client.count(num(20))) last = r.n;
      assert.equal(last, 20n, name);
      const doubled: bigint[] = [];
      for await (const r of client.double(nums(1, 2))) doubled.push(r.n);
      assert.deepEqual(doubled, [2n, 4n], name);
    }
  });
});
