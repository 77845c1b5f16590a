import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, AnySchema } from "@bufbuild/protobuf/wkt";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import type { ConnectError } from "@connectrpc/connect";

/** The trailer that carries a google.rpc.Status with error details. */
export const grpcStatusDetailsBinKey = "grpc-status-details-bin";

/**
 * Encodes the details of a ConnectError as a google.rpc.Status, the value
 * of the `grpc-status-details-bin` trailer. Returns undefined when the error
 * has no details, which is the common case and costs nothing.
 *
 * @connectrpc/connect-node sends this trailer on its gRPC and gRPC-Web
 * protocols; sending it from the grpc-js stack too means a client can read
 * e.g. protovalidate's `buf.validate.Violations` with `findDetails`
 * whichever port it called.
 *
 * google.rpc.Status is three fields (code = 1, message = 2, repeated
 * google.protobuf.Any details = 3). It is written by hand because no
 * generated schema for it ships with our dependencies' public API.
 */
export function encodeGrpcStatusDetails(err: ConnectError): Uint8Array | undefined {
  if (err.details.length === 0) return undefined;
  const w = new BinaryWriter();
  w.tag(1, WireType.Varint).int32(err.code);
  if (err.rawMessage !== "") w.tag(2, WireType.LengthDelimited).string(err.rawMessage);
  for (const d of err.details) {
    const any =
      "desc" in d
        ? anyPack(d.desc, create(d.desc, d.value))
        : create(AnySchema, { typeUrl: `type.googleapis.com/${d.type}`, value: d.value });
    w.tag(3, WireType.LengthDelimited).bytes(toBinary(AnySchema, any));
  }
  return w.finish();
}
