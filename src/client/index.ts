/**
 * Warden's TypeScript client: typed clients of every service, and what a
 * webhook receiver needs to check a delivery. Messages and enums are the
 * generated ones (`src/gen/warden/v1/*_pb.ts`).
 */
export { createServiceClients, createWardenClient, type WardenClientOptions, type WardenClients, withBearer } from "./create-warden-client.js";
export {
  computeWebhookSignature,
  EVENT_ID_HEADER,
  SIGNATURE_HEADER,
  verifyWebhookSignature,
  type VerifyWebhookSignatureOptions,
  WebhookSignatureError,
} from "../webhooks/verify-webhook-signature.js";
