import type { PeerCertificate } from "node:tls";
import { createContextKey } from "@connectrpc/connect";

/**
 * The client certificate of a call, in the handler context's `values`: set
 * by the grpc-js adapter and by the Connect listener when the connection
 * is TLS and the client's certificate was verified against the listener's
 * client CA (mTLS).
 * Undefined otherwise. Authentication (src/auth) reads it; transports only
 * carry it, so a handler never looks at sockets.
 */
export const peerCertificateKey = createContextKey<PeerCertificate | undefined>(undefined, { description: "warden.peerCertificate" });
