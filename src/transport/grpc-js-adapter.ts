import { type EventEmitter, once } from "node:events";
import type { PeerCertificate } from "node:tls";
import { create, fromBinary, toBinary, type DescMessage, type DescMethod, type DescService, type Message } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextValues,
  createServiceImplSpec,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { encodeGrpcStatusDetails, grpcStatusDetailsBinKey } from "./grpc-status-details.js";
import { peerCertificateKey } from "./peer-certificate.js";
import { type HandlerErrorHook, isServerFault, normalizeError } from "./normalize-error.js";

/**
 * What every grpc-js server call has, whatever its kind. grpc-js has this
 * type but does not export it.
 */
export interface ServerSurfaceCall extends EventEmitter {
  readonly metadata: grpc.Metadata;
  readonly cancelled: boolean;
  getDeadline(): grpc.Deadline;
  getHost(): string;
  getPath(): string;
  getPeer(): string;
  sendMetadata(responseMetadata: grpc.Metadata): void;
  /** The TLS peer certificate, when the listener verified one (grpc-js ≥ 1.10). */
  getAuthContext?(): { readonly sslPeerCertificate?: PeerCertificate } | null;
}

/** Options of {@link createGrpcJsService}. */
export interface GrpcJsServiceOptions {
  /**
   * Called with what a handler threw when the failure is the server's fault
   * (INTERNAL, UNKNOWN, DATA_LOSS), so it can be logged. Clients only get a
   * generic message for those.
   */
  readonly onError?: HandlerErrorHook;
  /** Aborts the signal of every handler context, e.g. on forced shutdown. */
  readonly shutdownSignal?: AbortSignal;
}

/** A service ready for `grpc.Server.addService(definition, handlers)`. */
export interface GrpcJsService {
  readonly definition: grpc.ServiceDefinition;
  readonly handlers: grpc.UntypedServiceImplementation;
}

/**
 * Mounts a connect-es service implementation on a `@grpc/grpc-js` server.
 *
 * The implementation is the same `ServiceImpl` that `ConnectRouter.service`
 * takes, so a service is written once and served by both stacks. Messages are
 * (de)serialized with protobuf-es from the generated descriptors; each handler
 * gets a `HandlerContext` (request headers from the gRPC metadata, a
 * signal that aborts on cancellation, deadline or shutdown, the remaining
 * time, and the client's verified TLS certificate under
 * `peerCertificateKey` in `values`); a thrown `ConnectError` becomes the gRPC status with the
 * same code and message, anything else INTERNAL "internal error", exactly as
 * connect-node answers.
 *
 * Methods missing from `impl` answer UNIMPLEMENTED, as on a ConnectRouter.
 * The keys of `definition` and `handlers` are the methods' local names
 * ("check"), so `grpc.makeGenericClientConstructor(definition)` makes a
 * client with the same method names as a connect-es client.
 *
 * Everything that depends only on the method is computed here, once, so a
 * call costs the context, the handler and the (de)serialization.
 */
export function createGrpcJsService<S extends DescService>(
  service: S,
  impl: Partial<ServiceImpl<S>>,
  options: GrpcJsServiceOptions = {},
): GrpcJsService {
  // createServiceImplSpec binds the methods to `impl` and fills in the
  // UNIMPLEMENTED stubs, the same way a ConnectRouter does.
  const spec = createServiceImplSpec(service, impl);
  const definition: Record<string, grpc.MethodDefinition<Message, Message>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const rt: MethodRuntime = {
      service,
      method,
      output: method.output,
      impl: spec.methods[method.localName]!.impl as AnyImpl,
      path: `/${service.typeName}/${method.name}`,
      onError: options.onError,
      shutdownSignal: options.shutdownSignal,
    };
    const streamsIn = method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming";
    const streamsOut = method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming";
    definition[method.localName] = {
      path: rt.path,
      requestStream: streamsIn,
      responseStream: streamsOut,
      originalName: method.name,
      requestSerialize: createSerializer(method.input),
      requestDeserialize: createDeserializer(method.input),
      responseSerialize: createSerializer(method.output),
      responseDeserialize: createDeserializer(method.output),
    };
    handlers[method.localName] = createHandler(rt);
  }
  return { definition, handlers };
}

/** Any of the four implementation shapes, as seen by the adapter. */
type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

/** What a call needs to know about its method, computed once per method. */
interface MethodRuntime {
  readonly service: DescService;
  readonly method: DescMethod;
  readonly output: DescMessage;
  readonly impl: AnyImpl;
  /** "/package.Service/Method", the gRPC path and the `procedure` of onError. */
  readonly path: string;
  readonly onError: HandlerErrorHook | undefined;
  readonly shutdownSignal: AbortSignal | undefined;
}

function createSerializer(schema: DescMessage): grpc.serialize<Message> {
  return (message) => {
    const bytes = toBinary(schema, message);
    // A view, not a copy: toBinary returns a fresh, exactly sized array.
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function createDeserializer(schema: DescMessage): grpc.deserialize<Message> {
  // Unknown fields dropped, as on the Connect listener (connect-server.ts).
  return (bytes) => fromBinary(schema, bytes, { readUnknownFields: false });
}

function createHandler(rt: MethodRuntime): grpc.UntypedHandleCall {
  switch (rt.method.methodKind) {
    case "unary":
      return (call: grpc.ServerUnaryCall<Message, Message>, callback: grpc.sendUnaryData<Message>) => {
        void runUnary(rt, call, call.request, callback);
      };
    case "client_streaming":
      return (call: grpc.ServerReadableStream<Message, Message>, callback: grpc.sendUnaryData<Message>) => {
        void runUnary(rt, call, requestsOf(call), callback);
      };
    case "server_streaming":
      return (call: grpc.ServerWritableStream<Message, Message>) => {
        void runStream(rt, call, call.request);
      };
    case "bidi_streaming":
      return (call: grpc.ServerDuplexStream<Message, Message>) => {
        void runStream(rt, call, requestsOf(call));
      };
  }
}

/**
 * The request messages of a client-streaming call. The default async
 * iterator of a Readable destroys the stream when iteration ends, which
 * would tear down the response side of a duplex before the status is sent.
 */
function requestsOf(call: grpc.ServerReadableStream<Message, Message> | grpc.ServerDuplexStream<Message, Message>): AsyncIterable<Message> {
  return { [Symbol.asyncIterator]: () => call.iterator({ destroyOnReturn: false }) };
}

async function runUnary(rt: MethodRuntime, call: ServerSurfaceCall, input: unknown, callback: grpc.sendUnaryData<Message>): Promise<void> {
  const ctx = createContext(rt, call);
  let response: Message;
  let trailer: grpc.Metadata | undefined;
  try {
    response = normalizeOutput(rt.output, await rt.impl(input, ctx));
    sendHeader(call, ctx);
    trailer = toMetadata(ctx.written("trailer"));
  } catch (reason) {
    sendHeader(call, ctx);
    callback(toStatus(rt, reason, ctx));
    return;
  } finally {
    // Like connect-node: the signal also fires when the call is done, which
    // stops work the handler left running and clears the deadline timer.
    ctx.abort(callCompleted);
  }
  callback(null, response, trailer);
}

async function runStream(
  rt: MethodRuntime,
  call: grpc.ServerWritableStream<Message, Message> | grpc.ServerDuplexStream<Message, Message>,
  input: unknown,
): Promise<void> {
  const ctx = createContext(rt, call);
  let headerSent = false;
  try {
    for await (const output of rt.impl(input, ctx) as AsyncIterable<unknown>) {
      const message = normalizeOutput(rt.output, output);
      if (!headerSent) {
        // Headers go out with the first message, as the HandlerContext
        // documents: handlers set them before their first yield.
        sendHeader(call, ctx);
        headerSent = true;
      }
      if (!call.write(message)) await once(call, "drain", { signal: ctx.signal });
    }
    if (!headerSent) sendHeader(call, ctx);
    call.end(toMetadata(ctx.written("trailer")));
  } catch (reason) {
    if (!headerSent) sendHeader(call, ctx);
    // grpc-js turns an "error" event on a server stream into the final status.
    call.emit("error", toStatus(rt, reason, ctx));
  } finally {
    ctx.abort(callCompleted);
  }
}

/** The abort reason once a call has completed; shared, so completing costs no stack trace. */
const callCompleted = new ConnectError("the call has completed", Code.Canceled);

const kContext = Symbol("warden.handlerContext");

type CallWithContext = ServerSurfaceCall & { [kContext]?: CallContext };

function createContext(rt: MethodRuntime, call: CallWithContext): CallContext {
  const ctx = new CallContext(rt, call);
  // One shared listener reads the context from the call instead of a new
  // closure per call.
  call[kContext] = ctx;
  call.once("cancelled", onCancelled);
  return ctx;
}

/**
 * A call's HandlerContext, built as it is used. connect's
 * createHandlerContext makes everything up front: two AbortControllers
 * listening on three signals, three Headers and a deadline timer. A unary
 * handler here mostly reads a header or two and never touches the signal
 * or the response headers, and that setup was the largest single part of
 * a sidecar decision's own cost after (de)serialization. The behaviour is
 * the same: the signal aborts on cancellation, deadline, forced shutdown
 * or completion, whenever it is first read (already aborted, if that
 * happened before).
 */
class CallContext implements HandlerContext {
  readonly protocolName = "grpc";
  readonly requestMethod = "POST";
  readonly values: ContextValues;
  private readonly deadlineMs: number | undefined;
  private controller: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  private reason: unknown;
  private done = false;
  private reqHeader: Headers | undefined;
  private resHeader: Headers | undefined;
  private resTrailer: Headers | undefined;

  constructor(
    private readonly rt: MethodRuntime,
    private readonly call: ServerSurfaceCall,
  ) {
    const deadline = call.getDeadline();
    // grpc-js reports "no deadline" as Infinity.
    this.deadlineMs = deadline === Infinity ? undefined : +deadline;
    // grpc-js reports a certificate only on TLS connections where the client
    // presented one that verified against the listener's CA.
    const peerCertificate = call.getAuthContext?.()?.sslPeerCertificate;
    this.values = peerCertificate === undefined ? createContextValues() : createContextValues().set(peerCertificateKey, peerCertificate);
  }

  get method(): DescMethod {
    return this.rt.method;
  }

  get service(): DescService {
    return this.rt.service;
  }

  get url(): string {
    return `http://${this.call.getHost()}${this.rt.path}`;
  }

  /** Binary ("-bin") values arrive base64-encoded, as on the wire and as connect-node presents them. */
  get requestHeader(): Headers {
    return (this.reqHeader ??= new Headers(this.call.metadata.toHttp2Headers() as Record<string, string>));
  }

  get responseHeader(): Headers {
    return (this.resHeader ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.resTrailer ??= new Headers());
  }

  /** Response headers or trailers a handler set; undefined when it touched neither (the usual case). */
  written(which: "header" | "trailer"): Headers | undefined {
    return which === "header" ? this.resHeader : this.resTrailer;
  }

  readonly timeoutMs = (): number | undefined => (this.deadlineMs === undefined ? undefined : this.deadlineMs - Date.now());

  get signal(): AbortSignal {
    if (this.controller !== undefined) return this.controller.signal;
    const controller = (this.controller = new AbortController());
    const shutdown = this.rt.shutdownSignal;
    if (this.done) controller.abort(this.reason);
    else if (shutdown?.aborted) this.abort(shutdown.reason);
    else {
      if (shutdown !== undefined) {
        this.onShutdown = () => this.abort(shutdown.reason);
        shutdown.addEventListener("abort", this.onShutdown);
      }
      const remaining = this.timeoutMs();
      if (remaining !== undefined) {
        const timedOut = () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
        if (remaining <= 0) timedOut();
        else this.timer = setTimeout(timedOut, remaining);
      }
    }
    return controller.signal;
  }

  /** Listens to the server's shutdown signal once the signal exists. */
  private onShutdown: (() => void) | undefined;

  /** Ends the context: the signal (now or when first read) aborts with `reason`. */
  abort(reason: unknown): void {
    if (this.done) return;
    this.done = true;
    this.reason = reason;
    clearTimeout(this.timer);
    if (this.onShutdown !== undefined) this.rt.shutdownSignal?.removeEventListener("abort", this.onShutdown);
    this.controller?.abort(reason);
  }

  get aborted(): boolean {
    return this.done;
  }
}

/** grpc-js emits "cancelled" when the client cancels, the connection drops, or the deadline passes. */
function onCancelled(this: CallWithContext): void {
  const ctx = this[kContext];
  if (ctx === undefined || ctx.aborted) return;
  const remaining = ctx.timeoutMs();
  ctx.abort(
    remaining !== undefined && remaining <= 0
      ? new ConnectError("the operation timed out", Code.DeadlineExceeded)
      : new ConnectError("the call was cancelled", Code.Canceled),
  );
}

/** Implementations may return init shapes; the serializer needs messages. */
function normalizeOutput(schema: DescMessage, value: unknown): Message {
  const m = value as Message;
  return m !== null && typeof m === "object" && m.$typeName === schema.typeName ? m : (create(schema, m) as Message);
}

/**
 * The final status of a failed call. It must not throw: the call would
 * never end, and the rejection would be unhandled.
 */
function toStatus(rt: MethodRuntime, reason: unknown, ctx: CallContext): Partial<grpc.StatusObject> {
  const err = normalizeError(reason, ctx.signal);
  if (isServerFault(err.code) && rt.onError !== undefined) {
    try {
      rt.onError(reason, rt.path);
    } catch {
      // A failing log call must not keep the client from its answer.
    }
  }
  const metadata = toMetadata(ctx.written("trailer")) ?? new grpc.Metadata();
  copyHeaders(err.metadata, metadata);
  try {
    const details = encodeGrpcStatusDetails(err);
    if (details !== undefined) metadata.set(grpcStatusDetailsBinKey, Buffer.from(details.buffer, details.byteOffset, details.byteLength));
  } catch {
    // Details that do not encode are dropped; code and message still go out.
  }
  // Connect codes are gRPC status codes, value for value.
  return { code: err.code as number, details: err.rawMessage, metadata };
}

function sendHeader(call: ServerSurfaceCall, ctx: CallContext): void {
  const md = toMetadata(ctx.written("header"));
  if (md !== undefined) call.sendMetadata(md);
}

/** Headers a handler must not set as gRPC metadata: the protocol and HTTP/2 own them. */
const reservedHeaders = new Set(["content-type", "te", "connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length"]);

/** Converts handler-set headers to metadata; undefined when there are none (the usual case). */
function toMetadata(headers: Headers | undefined): grpc.Metadata | undefined {
  if (headers === undefined || headers.keys().next().done === true) return undefined;
  const md = new grpc.Metadata();
  copyHeaders(headers, md);
  return md;
}

function copyHeaders(from: Headers, to: grpc.Metadata): void {
  from.forEach((value, key) => {
    if (reservedHeaders.has(key) || key.startsWith("grpc-")) return;
    try {
      if (key.endsWith("-bin")) {
        // Headers joins repeated values with ", "; each is base64.
        for (const part of value.split(",")) to.add(key, Buffer.from(part.trim(), "base64"));
      } else {
        to.add(key, value);
      }
    } catch {
      // grpc-js rejects values that are not printable ASCII. Dropping one
      // header is better than failing a call that has already succeeded.
    }
  });
}
