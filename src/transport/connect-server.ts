import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import tls from "node:tls";
import type { PeerCertificate } from "node:tls";
import { type ConnectRouter, createContextValues, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import { closeGracefully } from "./close-gracefully.js";
import { MAX_REQUEST_BYTES } from "./max-request-bytes.js";
import { nameEnumFieldsInErrors } from "./enum-field-errors.js";
import { type HandlerErrorHook, isServerFault, normalizeError } from "./normalize-error.js";
import { peerCertificateKey } from "./peer-certificate.js";

/** The request handler of {@link createConnectHandler}, for `http` and `http2` servers alike. */
export type ConnectHandler = ReturnType<typeof connectNodeAdapter>;

/** Options of {@link createConnectHandler}: connect-node's, plus an error hook. */
export interface ConnectHandlerOptions extends Omit<ConnectNodeAdapterOptions, "routes"> {
  /**
   * Called with what a handler threw when the failure is the server's fault
   * (INTERNAL, UNKNOWN, DATA_LOSS), so it can be logged. Clients only get a
   * generic message for those.
   */
  readonly onError?: HandlerErrorHook;
}

/**
 * Creates the request handler that serves the routes over the Connect,
 * gRPC-Web and gRPC protocols, for browsers, `curl` and `buf curl`.
 *
 * Errors are normalised exactly as on the grpc-js stack (see
 * `createGrpcJsService`): a ConnectError is sent as it is, anything else
 * becomes INTERNAL "internal error" and is reported to `onError`. The
 * normalising interceptor runs outermost, so it also sees errors from
 * interceptors passed in `options`.
 */
export function createConnectHandler(routes: (router: ConnectRouter) => void, options: ConnectHandlerOptions = {}): ConnectHandler {
  const { onError, interceptors = [], ...adapterOptions } = options;
  const handler = connectNodeAdapter({
    ...adapterOptions,
    // connect-es ignores unknown JSON fields by default, and with them enum
    // names it does not know: a misspelt limit ("dailly") would then create
    // a session without that limit, and a misspelt status filter list every
    // session. Here they are INVALID_ARGUMENT naming the field, as the
    // proto3 JSON mapping asks of a parser by default.
    jsonOptions: { ignoreUnknownFields: false, ...adapterOptions.jsonOptions },
    // Fields a binary request carries that the schema does not know are
    // dropped, not kept: kept, they were stored with the action (1 MiB of
    // them passed every validation limit) and hashed with the request.
    binaryOptions: { readUnknownFields: false, ...adapterOptions.binaryOptions },
    // The grpc-js listener's limit (its default) on this port too, after
    // decompression: connect-es reads up to 4 GiB unless told, so a 20 KiB
    // gzip body could inflate to gigabytes.
    readMaxBytes: adapterOptions.readMaxBytes ?? MAX_REQUEST_BYTES,
    routes: (router) => {
      routes(router);
      nameEnumFieldsInErrors(router);
    },
    interceptors: [createErrorInterceptor(onError), ...interceptors],
  });
  return (req, res) => {
    if (isGrpcRequest(req.headers["content-type"])) encodeGrpcMessageLikeGrpcJs(res);
    handler(req, res);
  };
}

/** A listening server, from {@link listen} or {@link createConnectServer}. */
export interface ListeningServer {
  /** The bound host, e.g. "127.0.0.1" or "::". */
  readonly host: string;
  /** The bound port; the one picked when the address asked for port 0. */
  readonly port: number;
  /** "http://host:port" (or https:// with TLS), for clients. */
  readonly url: string;
  /**
   * Stops accepting connections, tells HTTP/2 clients to go away (GOAWAY)
   * and HTTP/1.1 clients to close, lets requests in flight finish for up to
   * `graceMs` (10 s by default), then aborts `shutdown` and, shortly after
   * (see `closeGracefully`), destroys what is left. Calling it again returns
   * the same promise.
   */
  close(graceMs?: number): Promise<void>;
}

/** PEM material of a TLS listener. */
export interface ListenerTls {
  readonly cert: Buffer;
  readonly key: Buffer;
  /**
   * CA of client certificates. Given: clients are asked for a certificate
   * and one that verifies identifies the caller (see peerCertificateOf);
   * clients without one still connect (they authenticate with API keys).
   */
  readonly ca?: Buffer | undefined;
}

/** Options of {@link listen}. */
export interface ListenOptions {
  /** Aborted when the grace period of `close` runs out, before connections are destroyed. */
  readonly shutdown?: AbortController;
  /** Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) instead of cleartext. */
  readonly tls?: ListenerTls | undefined;
}

/**
 * Serves `handler` on `address` ("host:port", port 0 for any free port) over
 * cleartext HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on the same port.
 *
 * Node's `http2.createServer({ allowHTTP1: true })` only falls back to
 * HTTP/1.1 on TLS connections (through ALPN); in cleartext it answers an
 * HTTP/1.1 request with HTTP/2 frames. So connections are accepted by a
 * `net.Server` and handed to an `http2` or an `http` server depending on
 * whether they open with the HTTP/2 connection preface. Both servers run the
 * same handler.
 */
export async function listen(handler: ConnectHandler, address: string, options: ListenOptions = {}): Promise<ListeningServer> {
  const { host, port } = parseAddress(address);
  const h2 = http2.createServer(handler);
  const h1 = http.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  /** HTTP/1.1 connections and how many requests each is serving. */
  const h1Busy = new Map<net.Socket, number>();
  /** Connections that have not yet sent enough to tell the protocol. */
  const undecided = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();
  let closing = false;

  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  h1.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    h1Busy.set(socket, (h1Busy.get(socket) ?? 0) + 1);
    // While closing, ask the client not to reuse the connection.
    if (closing) res.shouldKeepAlive = false;
    res.once("close", () => {
      const busy = (h1Busy.get(socket) ?? 1) - 1;
      h1Busy.set(socket, busy);
      if (closing && busy === 0) socket.end();
    });
  });

  /** Hands a connection whose protocol is known to the server of that protocol. */
  const handOff = (socket: net.Socket, isHttp2: boolean) => {
    undecided.delete(socket);
    if (isHttp2) {
      h2.emit("connection", socket);
    } else {
      h1Busy.set(socket, 0);
      h1.emit("connection", socket);
    }
  };
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    undecided.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      undecided.delete(socket);
      h1Busy.delete(socket);
    });
  };
  // With TLS, ALPN says the protocol: no sniffing. A client that offers no
  // ALPN speaks HTTP/1.1 (as curl --http1.1 and Node's https do).
  const server: net.Server =
    options.tls === undefined
      ? net.createServer((socket) => sniff(socket))
      : tls.createServer(
          {
            cert: options.tls.cert,
            key: options.tls.key,
            ALPNProtocols: ["h2", "http/1.1"],
            handshakeTimeout: firstBytesTimeoutMs,
            ...(options.tls.ca === undefined ? {} : { ca: options.tls.ca, requestCert: true, rejectUnauthorized: false }),
          },
          (socket) => {
            track(socket);
            socket.on("error", ignore);
            handOff(socket, socket.alpnProtocol === "h2");
          },
        );
  // A failed handshake (plaintext, an unknown CA) concerns that client only.
  server.on("tlsClientError", ignore);

  const sniff = (socket: net.Socket) => {
    track(socket);
    // A reset before the protocol is known must not crash the process; the
    // protocol servers add their own handlers after the hand-off.
    socket.on("error", ignore);
    // Nor may a client that connects and says nothing hold a socket forever.
    socket.setTimeout(firstBytesTimeoutMs, () => socket.destroy());
    let head: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, http2Preface.length);
      const isHttp2 = head.subarray(0, n).equals(http2Preface.subarray(0, n));
      if (isHttp2 && head.length < http2Preface.length) return; // could still be either
      socket.off("data", onData);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(head);
      // The HTTP/2 session reads what was unshifted before it consumes the socket.
      handOff(socket, isHttp2);
      // The HTTP/1.1 parser reads the socket directly from now on; the
      // unshifted bytes reach it as a "data" event, which needs the stream
      // flowing. They are delivered on the next tick, before any new bytes
      // from the network.
      if (!isHttp2) socket.resume();
    };
    socket.on("data", onData);
  };
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as net.AddressInfo;
  const urlHost = bound.family === "IPv6" ? `[${bound.address}]` : bound.address;

  let closed: Promise<void> | undefined;
  async function close(graceMs: number): Promise<void> {
    closing = true;
    const drained = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const session of sessions) session.close();
    for (const socket of undecided) socket.destroy();
    for (const [socket, busy] of h1Busy) if (busy === 0) socket.end();
    await closeGracefully({
      drained,
      graceMs,
      shutdown: options.shutdown,
      force() {
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
      },
    });
    await drained;
  }

  return {
    host: bound.address,
    port: bound.port,
    url: `${options.tls === undefined ? "http" : "https"}://${urlHost}:${bound.port}`,
    close: (graceMs = 10_000) => (closed ??= close(graceMs)),
  };
}

/**
 * Plain HTTP routes served next to the RPCs, e.g. `/metrics` and `/readyz`.
 * Called first with every request, on HTTP/1.1 and HTTP/2 alike; returns
 * true when it took the request (and will answer it), false to pass it on
 * to the Connect handler.
 */
export type HttpRoutes = (req: Parameters<ConnectHandler>[0], res: Parameters<ConnectHandler>[1]) => boolean;

/** Options of {@link createConnectServer}. */
export interface ConnectServerOptions extends Omit<ConnectHandlerOptions, "shutdownSignal" | "contextValues"> {
  /** Plain HTTP routes tried before the Connect handler; see {@link HttpRoutes}. */
  readonly httpRoutes?: HttpRoutes;
  /**
   * Serve HTTPS. With a client CA, a client certificate that verified
   * reaches handlers under `peerCertificateKey`, as on the grpc-js listener.
   */
  readonly tls?: ListenerTls | undefined;
}

/**
 * Serves the routes on `address` with {@link createConnectHandler} and
 * {@link listen}: Connect, gRPC-Web and gRPC over HTTP/1.1 and h2c on one
 * port, plus `httpRoutes` if given. When the grace period of `close` runs
 * out, handlers' signals abort with UNAVAILABLE "server is shutting down".
 */
export async function createConnectServer(
  address: string,
  routes: (router: ConnectRouter) => void,
  options: ConnectServerOptions = {},
): Promise<ListeningServer> {
  const { httpRoutes, tls: tlsFiles, ...handlerOptions } = options;
  const shutdown = new AbortController();
  const connect = createConnectHandler(routes, {
    ...handlerOptions,
    shutdownSignal: shutdown.signal,
    ...(tlsFiles?.ca === undefined ? {} : { contextValues: (req) => createContextValues().set(peerCertificateKey, peerCertificateOf(req.socket)) }),
  });
  // Probes and scrapers share the port with the RPCs, so one address serves
  // both and Kubernetes needs no second port on the main listener.
  const handler: ConnectHandler =
    httpRoutes === undefined
      ? connect
      : (req, res) => {
          if (!httpRoutes(req, res)) connect(req, res);
        };
  return listen(handler, address, { shutdown, tls: tlsFiles });
}

/**
 * The client certificate of a TLS connection when it verified against the
 * listener's client CA; undefined otherwise (no TLS, no certificate, or one
 * that did not verify: the connection stays open for API keys, but the
 * certificate identifies nobody).
 */
export function peerCertificateOf(socket: net.Socket): PeerCertificate | undefined {
  if (!(socket instanceof tls.TLSSocket) || !socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  return cert === null || Object.keys(cert).length === 0 ? undefined : cert;
}

/** How long a new connection may take to send its first bytes. */
const firstBytesTimeoutMs = 10_000;

/** The first bytes of every HTTP/2 connection (RFC 9113, section 3.4). */
const http2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

function ignore(): void {}

/** Splits "host:port", "[v6]:port" or ":port" (all interfaces). */
function parseAddress(address: string): { host: string | undefined; port: number } {
  const i = address.lastIndexOf(":");
  const port = Number(address.slice(i + 1));
  if (i < 0 || address.slice(i + 1) === "" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid listen address ${JSON.stringify(address)}: want host:port`);
  }
  let host = address.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host: host === "" ? undefined : host, port };
}

/**
 * Normalises errors as the grpc-js adapter does and reports server faults.
 * For streaming responses the error surfaces while the body is iterated, so
 * the iterable is wrapped too.
 */
function createErrorInterceptor(onError: HandlerErrorHook | undefined): Interceptor {
  return (next) => async (req) => {
    const procedure = `/${req.service.typeName}/${req.method.name}`;
    const report = (reason: unknown) => {
      const err = normalizeError(reason, req.signal);
      if (isServerFault(err.code)) onError?.(reason, procedure);
      return err;
    };
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (reason) {
            throw report(reason);
          }
        })(),
      };
    } catch (reason) {
      throw report(reason);
    }
  };
}

/** gRPC proper ("application/grpc", "application/grpc+proto"), not gRPC-Web. */
function isGrpcRequest(contentType: string | undefined): boolean {
  return contentType !== undefined && contentType.startsWith("application/grpc") && !contentType.startsWith("application/grpc-web");
}

/**
 * connect-node percent-encodes the grpc-message trailer with
 * encodeURIComponent, which also escapes ":", ",", "$" and the like; the
 * grpc-js client decodes with decodeURI, which leaves those escaped. So a
 * grpc-js client would read "invalid request%3A session_id%3A ..." from this
 * port but "invalid request: session_id: ..." from the grpc-js port.
 * Re-encoding with the gRPC spec's own set (escape only "%" and bytes
 * outside 0x20-0x7E) reads the same in every client. Only gRPC responses
 * carry the trailer, and only they get this.
 */
function encodeGrpcMessageLikeGrpcJs(res: Parameters<ConnectHandler>[1]): void {
  const addTrailers = res.addTrailers;
  res.addTrailers = function (this: typeof res, headers: Parameters<typeof addTrailers>[0]) {
    const h = headers as Record<string, string | string[] | undefined>;
    const message = h["grpc-message"];
    if (typeof message === "string") h["grpc-message"] = percentEncodeGrpcMessage(safeDecode(message));
    return addTrailers.call(this, headers as never);
  } as typeof addTrailers;
}

/** Percent-encoding of a gRPC status message, per the gRPC over HTTP/2 spec. */
function percentEncodeGrpcMessage(message: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(message)) return message;
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function safeDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}
