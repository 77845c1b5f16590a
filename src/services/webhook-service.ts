import type { ServiceImpl } from "@connectrpc/connect";
import type { WebhookService } from "../gen/warden/v1/webhook_service_pb.js";
import type { WebhookStore } from "../webhooks/webhook-store.js";

/** WebhookService over the webhook store: endpoints that receive session events. */
export function createWebhookService(store: WebhookStore): ServiceImpl<typeof WebhookService> {
  return {
    async createWebhookEndpoint(req) {
      return store.createEndpoint(req);
    },
    async getWebhookEndpoint(req) {
      return { endpoint: await store.getEndpoint(req.endpointId) };
    },
    async listWebhookEndpoints(req) {
      return store.listEndpoints(req.pageSize, req.pageToken);
    },
    async deleteWebhookEndpoint(req) {
      await store.deleteEndpoint(req.endpointId);
      return {};
    },
    async enableWebhookEndpoint(req) {
      return { endpoint: await store.enableEndpoint(req.endpointId) };
    },
    async rotateWebhookSecret(req) {
      return store.rotateSecret(req);
    },
  };
}
