import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { closeGracefully } from "./close-gracefully.js";
import { MAX_REQUEST_BYTES } from "./max-request-bytes.js";
import { createGrpcJsService, type GrpcJsServiceOptions } from "./grpc-js-adapter.js";

/** A service implementation and the descriptor it implements. */
export interface MountedService {
  readonly service: DescService;
  readonly impl: Partial<ServiceImpl<DescService>>;
}

/**
 * Pairs a service with its implementation for a list of
 * {@link MountedService}: the pair is type-checked here, then erased, since
 * a list of different services cannot keep each one's type.
 */
export function mountService<S extends DescService>(service: S, impl: Partial<ServiceImpl<S>>): MountedService {
  return { service, impl: impl as unknown as MountedService["impl"] };
}

/** Where {@link routeGrpcJsLogs} sends grpc-js's messages: a logger's three levels. */
export interface GrpcJsLogSink {
  error(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/**
 * Sends @grpc/grpc-js's own messages (a failed bind, a broken connection)
 * to the role's structured log instead of grpc-js's default, bare lines on
 * stderr, so that every line a role writes is JSON and a failed start
 * prints only its one `warden:` line there. grpc-js's logger is one per
 * process, as a role is. Its verbosity is still grpc-js's own (errors
 * only, unless GRPC_VERBOSITY says otherwise).
 */
export function routeGrpcJsLogs(log: GrpcJsLogSink): void {
  const at =
    (level: keyof GrpcJsLogSink) =>
    (message?: unknown, ...rest: unknown[]) =>
      log[level]({ component: "grpc-js" }, redactGrpcJsMessage([message, ...rest].map(String).join(" ")));
  grpc.setLogger({ error: at("error"), info: at("info"), debug: at("debug") });
}

/**
 * A grpc-js log message without the metadata values it may quote: a
 * metadata entry it refuses (a header value with a tab or a non-ASCII
 * character, from any client) is logged as "Failed to add metadata entry
 * <key>: <value>. <why, quoting the value again>", and the value of
 * `authorization` is a secret. All after the key goes, whatever the key:
 * a token may travel in any header.
 */
export function redactGrpcJsMessage(message: string): string {
  return message.replace(/(Failed to add metadata entry [^:\s]+: )[\s\S]*$/, "$1*** (value withheld: it may be a credential)");
}

/** Options of {@link createGrpcServer}. */
export interface GrpcServerOptions extends Omit<GrpcJsServiceOptions, "shutdownSignal"> {
  /** Passed to `new grpc.Server()`, e.g. message size limits or keepalive. */
  readonly serverOptions?: grpc.ServerOptions;
  /**
   * TLS or mutual TLS (see `createServerCredentials` in src/auth);
   * plaintext by default. With client certificates, each call's verified
   * certificate is in its context under `peerCertificateKey`.
   */
  readonly credentials?: grpc.ServerCredentials;
}

/** A listening gRPC server. */
export interface GrpcServer {
  readonly server: grpc.Server;
  /** The bound port; the one picked when the address asked for port 0. */
  readonly port: number;
  /**
   * Stops accepting connections and calls, lets calls in flight finish for
   * up to `graceMs` (10 s by default), then aborts the handlers that are
   * left (their signal fires with UNAVAILABLE), waits up to
   * `abortGraceMs` (see `closeGracefully`) for them to answer, and drops
   * the connections.
   * Calling it again returns the same promise.
   */
  close(graceMs?: number): Promise<void>;
}

/**
 * Starts a `@grpc/grpc-js` server on `address` ("host:port", port 0 for any
 * free port), without TLS unless `credentials` say otherwise, serving each service through
 * {@link createGrpcJsService}. This is the decision path's listener: grpc-js
 * is several times faster than connect-node's gRPC support.
 */
export async function createGrpcServer(address: string, services: readonly MountedService[], options: GrpcServerOptions = {}): Promise<GrpcServer> {
  const server = new grpc.Server({ "grpc.max_receive_message_length": MAX_REQUEST_BYTES, ...options.serverOptions });
  // Aborted only when the grace period runs out (see closeGracefully), so
  // calls in flight during a graceful close are not disturbed.
  const shutdown = new AbortController();
  const adapterOptions: GrpcJsServiceOptions = { ...options, shutdownSignal: shutdown.signal };
  for (const { service, impl } of services) {
    const { definition, handlers } = createGrpcJsService(service, impl, adapterOptions);
    server.addService(definition, handlers);
  }
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  let closing: Promise<void> | undefined;
  async function close(graceMs: number): Promise<void> {
    const drained = new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await closeGracefully({ drained, graceMs, shutdown, force: () => server.forceShutdown() });
  }
  return {
    server,
    port,
    close: (graceMs = 10_000) => (closing ??= close(graceMs)),
  };
}
