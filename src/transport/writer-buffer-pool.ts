import { BinaryWriter } from "@bufbuild/protobuf/wire";

/**
 * protobuf-es's `toBinary` makes a new `BinaryWriter` for every message, and
 * a new writer's buffer starts at 128 bytes and doubles as it fills. A
 * decision's 300-byte `CheckResponse` thus costs four ArrayBuffers (128, 256
 * and 512 bytes, then the result), each zeroed, off the V8 heap and swept by
 * the garbage collector: ~8 µs an encode against ~2.7 with a warm buffer
 * (this machine, micro-benchmark). Every decision encodes two to three
 * messages (the answer, and on `serve` the stored action and decision; on the
 * control plane each reported record's), so that was 4–8% of a server's CPU.
 *
 * The library has no way to hand `toBinary` a writer, so this lends one:
 * a writer's grown buffer goes into a one-slot pool when the writer
 * finishes, and a new writer takes it when it first needs room. Only a
 * writer that holds no bytes takes it, and a finished writer gives it up,
 * so no two writers ever share a buffer, however their uses interleave
 * (`toBinary` is synchronous, so mostly one writer is live at a time). Its
 * old bytes need no clearing: a writer writes every byte before its
 * position, and `finish()` copies out exactly those.
 *
 * It works on the writer's own fields (`buffer`, `pos`, `viewCache`), so it
 * installs only when a fresh writer has exactly those; the test of this
 * module fails if a protobuf-es upgrade changes them, so the upgrade comes
 * with a look at this file.
 */

/** A grown buffer larger than this is left to the garbage collector, as before, not kept for ever. */
export const MAX_POOLED_BYTES = 64 * 1024;

interface WriterFields {
  buffer: Uint8Array;
  pos: number;
  viewCache: DataView;
  ensureCapacity(size: number): void;
  finish(): Uint8Array;
}

const EMPTY = new Uint8Array(0);
const EMPTY_VIEW = new DataView(EMPTY.buffer);

let pooled: Uint8Array | undefined;
let installed: boolean | undefined;

/**
 * Makes every protobuf-es `BinaryWriter` of this process (those of
 * `toBinary`, connect-es's serializers, grpc-js's through ours) reuse one
 * pooled buffer. Encodings are byte for byte what they were. Returns
 * whether it is in effect: false when this protobuf-es's writer is not the
 * shape it was written for (then nothing is changed). Safe to call again.
 */
export function poolWriterBuffers(): boolean {
  if (installed !== undefined) return installed;
  const probe = new BinaryWriter() as unknown as WriterFields;
  const proto = BinaryWriter.prototype as unknown as WriterFields;
  installed =
    probe.buffer instanceof Uint8Array &&
    probe.buffer.length === 0 &&
    probe.pos === 0 &&
    probe.viewCache instanceof DataView &&
    typeof proto.ensureCapacity === "function" &&
    typeof proto.finish === "function";
  if (!installed) return false;
  const ensureCapacity = proto.ensureCapacity;
  const finish = proto.finish;
  proto.ensureCapacity = function (this: WriterFields, size: number) {
    if (this.buffer.length === 0 && pooled !== undefined) {
      // The writer holds no bytes yet (pos is 0); its view is rebuilt for
      // the new buffer because their lengths differ.
      this.buffer = pooled;
      pooled = undefined;
    }
    ensureCapacity.call(this, size);
  };
  proto.finish = function (this: WriterFields) {
    const result = finish.call(this);
    const grown = this.buffer;
    if (grown.length > 0 && grown.length <= MAX_POOLED_BYTES && (pooled === undefined || pooled.length < grown.length)) {
      pooled = grown;
      this.buffer = EMPTY;
      this.viewCache = EMPTY_VIEW;
    }
    return result;
  };
  return true;
}
