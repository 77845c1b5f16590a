import type { Client, ServiceImpl } from "@connectrpc/connect";
import {
  AuthorizeRequestSchema,
  CaptureRequestSchema,
  CheckRequestSchema,
  type PolicyService,
  VoidRequestSchema,
} from "../gen/warden/v1/policy_service_pb.js";
import { decisionPathKey } from "../observability/with-decision-metrics.js";
import { requestHash } from "../services/request-hash.js";
import type { SidecarEngine } from "./sidecar-engine.js";

const NO_HASH = new Uint8Array(0);

/**
 * PolicyService as the sidecar serves it to its agent: the same API as
 * the control plane's, decided by the engine; history is the store's.
 */
export function createSidecarPolicyService(engine: SidecarEngine, controlPlane: Client<typeof PolicyService>): ServiceImpl<typeof PolicyService> {
  return {
    authorize: (req, ctx) =>
      engine.authorize(req, req.idempotencyKey === "" ? NO_HASH : requestHash(AuthorizeRequestSchema, req), (p) => ctx.values.set(decisionPathKey, p)),
    check: (req, ctx) => engine.check(req, req.idempotencyKey === "" ? NO_HASH : requestHash(CheckRequestSchema, req), (p) => ctx.values.set(decisionPathKey, p)),
    capture: async (req) => ({ authorization: await engine.capture(req, requestHash(CaptureRequestSchema, req)) }),
    void: async (req) => ({ authorization: await engine.void(req, requestHash(VoidRequestSchema, req)) }),
    listActions: (req) => controlPlane.listActions(req),
  };
}
