import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import type http2 from "node:http2";
import type { Interceptor } from "@connectrpc/connect";
import { credentialFault } from "./bearer-token.js";

/** How a sidecar proves itself to the control plane. */
export interface SidecarCredentialOptions {
  /** File holding an API key (`wdn_…`) the control plane issued: sent as `authorization: Bearer`. */
  readonly tokenFile?: string | undefined;
  /** CA that signed the control plane's certificate; given: TLS. */
  readonly caFile?: string | undefined;
  /** The sidecar's client certificate (mutual TLS). */
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  /**
   * How often the token file is read again, so a rotated secret (e.g. a
   * Kubernetes Secret volume) is picked up without a restart. Default 60 s.
   */
  readonly tokenRefreshMs?: number;
}

/** What to pass to `createGrpcTransport` of `@connectrpc/connect-node`. */
export interface SidecarCredentials {
  /** Adds the Bearer token to every call; empty without a token file. */
  readonly interceptors: Interceptor[];
  /** TLS options of the HTTP/2 connection; undefined: plaintext. */
  readonly nodeOptions: http2.SecureClientSessionOptions | undefined;
  /** Whether the control-plane URL must be https://. */
  readonly tls: boolean;
}

/**
 * The sidecar's flag values (`--control-plane-token-file`, `--tls-ca-file`,
 * `--tls-cert-file`, `--tls-key-file`) as credential options.
 */
export function sidecarCredentialOptionsFromFlags(values: Record<string, string | undefined>): SidecarCredentialOptions {
  return {
    tokenFile: values["control-plane-token-file"],
    caFile: values["tls-ca-file"],
    certFile: values["tls-cert-file"],
    keyFile: values["tls-key-file"],
  };
}

function read(file: string, flag: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new Error(`${flag}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * Builds the credentials of a sidecar's connection to the control plane:
 *
 * ```ts
 * const creds = createSidecarCredentials(sidecarCredentialOptionsFromFlags(values));
 * const transport = createGrpcTransport({ baseUrl, interceptors: creds.interceptors, nodeOptions: creds.nodeOptions });
 * ```
 *
 * Files are read now, so a missing or empty one fails at startup with the
 * flag's name. A client certificate without a key (or the reverse) is an
 * error; a certificate without `--tls-ca-file` verifies the server against
 * the system's CAs. The token is re-read every `tokenRefreshMs`; the last
 * good value is kept if a read fails. Its value never appears in errors.
 */
export function createSidecarCredentials(o: SidecarCredentialOptions): SidecarCredentials {
  if ((o.certFile === undefined) !== (o.keyFile === undefined)) {
    throw new Error("--tls-cert-file and --tls-key-file go together");
  }
  const interceptors: Interceptor[] = [];
  if (o.tokenFile !== undefined) {
    const file = o.tokenFile;
    // Checked as a header value before any call: Headers.set refuses a NUL
    // or a non-Latin-1 character with an error that repeats the whole
    // value, which the sidecar's log would then carry, key and all.
    const parse = (text: string) => {
      const token = text.trim();
      const fault = credentialFault(token);
      if (fault !== undefined) throw new Error(`--control-plane-token-file: ${file} must hold one token of visible ASCII characters, but ${fault}`);
      return token;
    };
    let token = parse(read(file, "--control-plane-token-file"));
    let readAt = Date.now();
    const refreshMs = o.tokenRefreshMs ?? 60_000;
    let reading: Promise<void> | undefined;
    const refresh = () => {
      readAt = Date.now();
      reading ??= readFile(file, "utf8")
        .then((text) => {
          token = parse(text);
        })
        .catch(() => {
          // Keep the last good token; the control plane says if it is stale.
        })
        .finally(() => {
          reading = undefined;
        });
    };
    interceptors.push((next) => async (req) => {
      if (Date.now() - readAt >= refreshMs) refresh();
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    });
  }
  const tls = o.caFile !== undefined || o.certFile !== undefined;
  const nodeOptions: http2.SecureClientSessionOptions | undefined = tls
    ? {
        ...(o.caFile !== undefined ? { ca: read(o.caFile, "--tls-ca-file") } : {}),
        ...(o.certFile !== undefined ? { cert: read(o.certFile, "--tls-cert-file"), key: read(o.keyFile!, "--tls-key-file") } : {}),
      }
    : undefined;
  return { interceptors, nodeOptions, tls };
}
