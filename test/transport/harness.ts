import type { DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { createConnectServer, type ListeningServer } from "../../src/transport/connect-server.js";
import { createGrpcJsService } from "../../src/transport/grpc-js-adapter.js";
import { createGrpcServer, type GrpcServer, type MountedService } from "../../src/transport/grpc-server.js";

/** One error reported to onError. */
export interface Reported {
  readonly reason: unknown;
  readonly procedure: string;
}

/** Both stacks serving the same implementations, on loopback. */
export interface Stacks {
  readonly grpc: GrpcServer;
  readonly connect: ListeningServer;
  /** "127.0.0.1:port" of the grpc-js server. */
  readonly grpcAddress: string;
  /** What onError received, on either stack. */
  readonly reported: Reported[];
  close(graceMs?: number): Promise<void>;
}

/** Starts a grpc-js server and a Connect server on 127.0.0.1, port 0, mounting the same services. */
export async function startStacks(services: readonly MountedService[]): Promise<Stacks> {
  const reported: Reported[] = [];
  const onError = (reason: unknown, procedure: string) => reported.push({ reason, procedure });
  const grpcServer = await createGrpcServer("127.0.0.1:0", services, { onError });
  const connect = await createConnectServer(
    "127.0.0.1:0",
    (router: ConnectRouter) => {
      for (const s of services) router.service(s.service, s.impl);
    },
    { onError },
  );
  return {
    grpc: grpcServer,
    connect,
    grpcAddress: `127.0.0.1:${grpcServer.port}`,
    reported,
    async close(graceMs = 0) {
      await Promise.all([grpcServer.close(graceMs), connect.close(graceMs)]);
    },
  };
}

/** A named connect-es transport. */
export interface NamedTransport {
  readonly name: string;
  readonly transport: Transport;
}

/**
 * Every connect-es client transport against both stacks: gRPC against the
 * grpc-js server, and gRPC, Connect (HTTP/1.1 and HTTP/2) and gRPC-Web
 * against the Connect server.
 */
export function connectTransports(stacks: Stacks): NamedTransport[] {
  const url = stacks.connect.url;
  return [
    { name: "grpc-js server, connect gRPC client", transport: createGrpcTransport({ baseUrl: `http://${stacks.grpcAddress}` }) },
    { name: "connect server, gRPC", transport: createGrpcTransport({ baseUrl: url }) },
    { name: "connect server, Connect HTTP/1.1", transport: createConnectTransport({ baseUrl: url, httpVersion: "1.1" }) },
    { name: "connect server, Connect HTTP/2", transport: createConnectTransport({ baseUrl: url, httpVersion: "2" }) },
    { name: "connect server, gRPC-Web HTTP/1.1", transport: createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" }) },
  ];
}

/** A plain @grpc/grpc-js client, built from the adapter's ServiceDefinition. */
export type GrpcJsClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/** Creates a generic grpc-js client for `service` at `address` ("host:port"). */
export function grpcJsClient(service: DescService, address: string): GrpcJsClient {
  const { definition } = createGrpcJsService(service, {});
  const Client = grpc.makeGenericClientConstructor(definition, service.name);
  return new Client(address, grpc.credentials.createInsecure()) as unknown as GrpcJsClient;
}

/** Calls a unary method of a grpc-js client; resolves with the response, metadata and status. */
export function grpcJsUnary<Res = unknown>(
  client: GrpcJsClient,
  method: string,
  request: unknown,
  options: { metadata?: grpc.Metadata; deadline?: grpc.Deadline; onCall?: (call: grpc.ClientUnaryCall) => void } = {},
): Promise<{ response: Res; header: grpc.Metadata; status: grpc.StatusObject }> {
  return new Promise((resolve, reject) => {
    let header = new grpc.Metadata();
    let response: Res | undefined;
    let error: grpc.ServiceError | null = null;
    const call = client[method]!(request, options.metadata ?? new grpc.Metadata(), { deadline: options.deadline }, (err: grpc.ServiceError | null, res: Res) => {
      error = err;
      response = res;
    }) as grpc.ClientUnaryCall;
    call.on("metadata", (md: grpc.Metadata) => (header = md));
    // "status" comes after the callback, with the trailers.
    call.on("status", (status: grpc.StatusObject) => (error ? reject(error) : resolve({ response: response as Res, header, status })));
    options.onCall?.(call);
  });
}

/** A promise with its resolve function, for handlers that wait on the test. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Both servers, named, for tests that run once per stack. */
export function stackUrls(stacks: Stacks): { name: string; grpcAddress: string }[] {
  return [
    { name: "grpc-js server", grpcAddress: stacks.grpcAddress },
    { name: "connect server", grpcAddress: `127.0.0.1:${stacks.connect.port}` },
  ];
}
