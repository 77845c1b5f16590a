import type { Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createServiceClients, withBearer } from "../client/create-warden-client.js";

/**
 * Creates the CLI's transport: the Connect protocol over HTTP/1.1, which
 * every deployment of the control plane serves (also behind proxies that
 * do not speak HTTP/2).
 */
export function createCliTransport(baseUrl: string): Transport {
  return createConnectTransport({ baseUrl, httpVersion: "1.1" });
}

/** Creates the clients of the services over one transport (the TypeScript client's). */
export const createWardenClients = createServiceClients;

/** `transport` with `authorization: Bearer <apiKey>` on every call; see withBearer. */
export const withApiKey = withBearer;
