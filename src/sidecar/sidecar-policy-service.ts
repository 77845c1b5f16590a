import type { Client, ServiceImpl } from "@connectrpc/connect";
import {
  AuthorizeRequestSchema,
  CaptureRequestSchema,
  CheckRequestSchema,
  type PolicyService,
  VoidRequestSchema,
} from "../gen/warden/v1/policy_service_pb.js";
import { requestHash } from "../services/request-hash.js";
import type { SidecarEngine } from "./sidecar-engine.js";

const NO_HASH = new Uint8Array(0);

/**
 * PolicyService as the sidecar serves it to its agent: the same API as
 * the control plane's, decided by the engine; history is the store's.
 */
export function createSidecarPolicyService(engine: SidecarEngine, controlPlane: Client<typeof PolicyService>): ServiceImpl<typeof PolicyService> {
  return {
    authorize: (req) => engine.authorize(req, req.idempotencyKey === "" ? NO_HASH : requestHash(AuthorizeRequestSchema, req)),
    check: (req) => engine.check(req, req.idempotencyKey === "" ? NO_HASH : requestHash(CheckRequestSchema, req)),
    capture: async (req) => ({ authorization: await engine.capture(req, requestHash(CaptureRequestSchema, req)) }),
    void: async (req) => ({ authorization: await engine.void(req, requestHash(VoidRequestSchema, req)) }),
    listActions: (req) => controlPlane.listActions(req),
  };
}
