import assert from "node:assert/strict";
import { test } from "node:test";
import { create, type DescMessage, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { file_warden_v1_approval_service } from "../../src/gen/warden/v1/approval_service_pb.js";
import { file_warden_v1_decision } from "../../src/gen/warden/v1/decision_pb.js";
import { file_warden_v1_policy } from "../../src/gen/warden/v1/policy_pb.js";
import { file_warden_v1_session } from "../../src/gen/warden/v1/session_pb.js";
import { file_warden_v1_policy_service, ActionSchema } from "../../src/gen/warden/v1/policy_service_pb.js";
import { file_warden_v1_session_service } from "../../src/gen/warden/v1/session_service_pb.js";
import { file_warden_v1_sync_service } from "../../src/gen/warden/v1/sync_service_pb.js";
import { MAX_POOLED_BYTES, poolWriterBuffers } from "../../src/transport/writer-buffer-pool.js";
import { randomMessage } from "../helpers/random-message.js";
import { seededRandom } from "../helpers/seeded-random.js";

// node --test runs each file in a process of its own, and nothing this file
// imports installs the pool, so everything encoded before poolWriterBuffers()
// below is protobuf-es's own output: the reference.

const SCHEMAS: DescMessage[] = [
  file_warden_v1_decision,
  file_warden_v1_policy,
  file_warden_v1_session,
  file_warden_v1_policy_service,
  file_warden_v1_session_service,
  file_warden_v1_sync_service,
  file_warden_v1_approval_service,
].flatMap((f) => f.messages);

/** Writes by hand with the wire API, in two halves: a nested, length-delimited field and a few scalars. */
function writeHead(w: BinaryWriter, seed: number): void {
  w.tag(1, WireType.LengthDelimited).fork();
  w.tag(1, WireType.Varint).int64(BigInt(seed) * 1_000_003n);
}
function writeTail(w: BinaryWriter, seed: number): void {
  w.tag(2, WireType.LengthDelimited).string(`é${"x".repeat(seed % 300)}`);
  w.join();
  w.tag(2, WireType.Bit64).double(seed / 7);
}
function writeSome(w: BinaryWriter, seed: number): void {
  writeHead(w, seed);
  writeTail(w, seed);
}

test("the pool installs on this protobuf-es, and what is encoded with it is byte for byte what protobuf-es encodes without it", () => {
  const rand = seededRandom(20261207);
  const messages = SCHEMAS.flatMap((schema) => Array.from({ length: 20 }, () => ({ schema, message: randomMessage(schema, rand) })));
  // Larger than a pooled buffer may be, and one large enough to leave a
  // buffer full of non-zero bytes behind for the messages after it.
  const big = create(ActionSchema, { type: "payment", description: "\u00ff".repeat(20_000), metadata: { k: "v".repeat(MAX_POOLED_BYTES) } });
  const dirty = create(ActionSchema, { type: "payment", description: "\u00ff".repeat(12_000) });
  messages.push({ schema: ActionSchema, message: big }, { schema: ActionSchema, message: dirty });
  const expected = messages.map(({ schema, message }) => toBinary(schema, message));
  const handWritten = [3, 150, 299].map((seed) => {
    const w = new BinaryWriter();
    writeSome(w, seed);
    return w.finish();
  });

  assert.equal(poolWriterBuffers(), true, "protobuf-es's BinaryWriter changed: see src/transport/writer-buffer-pool.ts");
  assert.equal(poolWriterBuffers(), true);

  // Three passes in different orders: each message is encoded after larger
  // and smaller ones, and after the 0xff-filled ones.
  for (let pass = 0; pass < 3; pass++) {
    const order = messages.map((_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    toBinary(ActionSchema, dirty);
    for (const i of order) {
      const { schema, message } = messages[i]!;
      assert.deepEqual(toBinary(schema, message), expected[i], `${schema.typeName} #${i}, pass ${pass}`);
    }
  }

  // Writers used at the same time never share a buffer: each is written
  // into while another is half done, and a finished writer is used again
  // while the one that took its buffer is half done.
  toBinary(ActionSchema, dirty);
  const a = new BinaryWriter();
  const b = new BinaryWriter();
  writeHead(a, 3);
  writeSome(b, 150);
  assert.deepEqual(b.finish(), handWritten[1]);
  const c = new BinaryWriter();
  writeHead(c, 299);
  writeSome(b, 150);
  assert.deepEqual(b.finish(), handWritten[1]);
  writeTail(c, 299);
  writeTail(a, 3);
  assert.deepEqual(c.finish(), handWritten[2]);
  assert.deepEqual(a.finish(), handWritten[0]);
  // What finish() returned is the caller's: later encodes do not change it.
  const kept = toBinary(messages[0]!.schema, messages[0]!.message);
  const copy = kept.slice();
  for (const { schema, message } of messages.slice(0, 50)) toBinary(schema, message);
  assert.deepEqual(kept, copy);
});
