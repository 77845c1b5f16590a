import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

/** The PEM files of a TLS listener. */
export interface ServerTlsFiles {
  /** The server's certificate chain. */
  readonly certFile: string;
  readonly keyFile: string;
  /**
   * CA of client certificates. Given: mutual TLS, every client must present
   * a certificate it signed, and that certificate identifies the caller
   * (see principalFromCertificate).
   */
  readonly clientCaFile?: string | undefined;
}

/**
 * The server TLS files from role flags (`--tls-cert-file`, `--tls-key-file`,
 * `--tls-client-ca-file`): undefined when none is given (plaintext), or a
 * one-line error naming the flag when they do not make a whole.
 */
export function serverTlsFromFlags(values: Record<string, string | undefined>): ServerTlsFiles | undefined {
  const certFile = values["tls-cert-file"];
  const keyFile = values["tls-key-file"];
  const clientCaFile = values["tls-client-ca-file"];
  if (certFile === undefined && keyFile === undefined) {
    if (clientCaFile !== undefined) throw new Error("--tls-client-ca-file needs --tls-cert-file and --tls-key-file");
    return undefined;
  }
  if (certFile === undefined) throw new Error("--tls-key-file needs --tls-cert-file");
  if (keyFile === undefined) throw new Error("--tls-cert-file needs --tls-key-file");
  return { certFile, keyFile, clientCaFile };
}

function read(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * The PEM material of the Connect listener (HTTPS, see createConnectServer):
 * the same files as the gRPC listener's, so one certificate serves both.
 */
export function readListenerTls(files: ServerTlsFiles): { cert: Buffer; key: Buffer; ca: Buffer | undefined } {
  return {
    cert: read(files.certFile, "certificate file"),
    key: read(files.keyFile, "key file"),
    ca: files.clientCaFile === undefined ? undefined : read(files.clientCaFile, "client CA file"),
  };
}

/**
 * grpc-js server credentials: insecure without files (loopback and
 * development), TLS with a certificate and key, and mutual TLS — client
 * certificates required and verified — when a client CA is given. The
 * verified certificate reaches handlers through the grpc-js adapter
 * (peerCertificateKey).
 */
export function createServerCredentials(files: ServerTlsFiles | undefined): grpc.ServerCredentials {
  if (files === undefined) return grpc.ServerCredentials.createInsecure();
  const ca = files.clientCaFile === undefined ? null : read(files.clientCaFile, "client CA file");
  return grpc.ServerCredentials.createSsl(
    ca,
    [{ cert_chain: read(files.certFile, "certificate file"), private_key: read(files.keyFile, "key file") }],
    ca !== null,
  );
}
