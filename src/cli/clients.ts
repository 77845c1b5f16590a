import type { Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

/**
 * Creates the CLI's transport: the Connect protocol over HTTP/1.1, which
 * every deployment of the control plane serves (also behind proxies that
 * do not speak HTTP/2).
 */
export function createCliTransport(baseUrl: string): Transport {
  return createConnectTransport({ baseUrl, httpVersion: "1.1" });
}
