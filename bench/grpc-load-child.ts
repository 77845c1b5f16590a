/**
 * Child-process entry of {@link runGrpcLoadInChild}: reads a
 * {@link ChildLoadSpec} as JSON on stdin, runs the load, and writes the
 * {@link LoadResult} as JSON on stdout (buffers in base64).
 */
import { text } from "node:stream/consumers";
import { type ChildLoadSpec, runGrpcLoad } from "./grpc-load.js";

const spec = JSON.parse(await text(process.stdin)) as ChildLoadSpec;
const requests = spec.requests.map((b) => Buffer.from(b, "base64"));
const r = await runGrpcLoad({
  ...spec,
  request: (i) => requests[i % requests.length]!,
  headers: spec.headers.length === 0 ? undefined : (i) => spec.headers[i % spec.headers.length]!,
});
process.stdout.write(JSON.stringify({ ...r, responses: r.responses.map((b) => b.toString("base64")) }));
