import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type AuthorizeResponse,
  AuthorizeRequestSchema,
  CaptureRequestSchema,
  type CheckResponse,
  CheckRequestSchema,
  type PolicyService,
  VoidRequestSchema,
} from "../gen/warden/v1/policy_service_pb.js";
import type { WardenStore } from "../store/warden-store.js";
import { requestHash } from "./request-hash.js";

const NO_HASH = new Uint8Array(0);

/**
 * The errors that count against a session (its circuit breaker's
 * fail_after_errors): the agent's own mistakes, such as a wrong currency,
 * a capture above the hold or of a hold already settled. Not a session
 * that does not exist, nor the store's trouble (INTERNAL, UNAVAILABLE, a
 * deadline, a key in progress elsewhere): an outage would otherwise end
 * every session with a breaker FAILED, for good.
 */
const AGENT_FAULTS: ReadonlySet<Code> = new Set([Code.InvalidArgument, Code.FailedPrecondition, Code.OutOfRange, Code.AlreadyExists]);

/**
 * PolicyService over the store: what an agent calls before each action.
 * Requests arrive validated (see withValidation); what needs the session's
 * state (currency, status, holds) is checked by the store under lock.
 */
export function createPolicyService(store: WardenStore): ServiceImpl<typeof PolicyService> {
  /** Counts an error of the agent's making against the session (see AGENT_FAULTS), then rethrows it. */
  const counted = (sessionId: string) => (err: unknown) => {
    const e = ConnectError.from(err);
    if (AGENT_FAULTS.has(e.code)) void store.recordError(sessionId);
    throw e;
  };
  return {
    async authorize(req) {
      const hash = req.idempotencyKey === "" ? NO_HASH : requestHash(AuthorizeRequestSchema, req);
      return (await store
        .decide({ method: "authorize", sessionId: req.sessionId, action: req.action!, idempotencyKey: req.idempotencyKey, requestHash: hash })
        .catch(counted(req.sessionId))) as AuthorizeResponse;
    },
    async check(req) {
      const hash = req.idempotencyKey === "" ? NO_HASH : requestHash(CheckRequestSchema, req);
      return (await store
        .decide({ method: "check", sessionId: req.sessionId, action: req.action!, idempotencyKey: req.idempotencyKey, requestHash: hash })
        .catch(counted(req.sessionId))) as CheckResponse;
    },
    async capture(req) {
      const authorization = await store.capture(req, requestHash(CaptureRequestSchema, req)).catch(counted(req.sessionId));
      return { authorization };
    },
    async void(req) {
      const authorization = await store.void(req, requestHash(VoidRequestSchema, req)).catch(counted(req.sessionId));
      return { authorization };
    },
    async listActions(req) {
      return store.listActions(req);
    },
  };
}
