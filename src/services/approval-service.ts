import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { principalKey } from "../auth/principal.js";
import { sessionTokenClaimsKey } from "../auth/with-session-token-auth.js";
import {
  type ApprovalService,
  ApprovalStatus,
  ApproveApprovalRequestSchema,
  CancelApprovalRequestSchema,
  DenyApprovalRequestSchema,
} from "../gen/warden/v1/approval_service_pb.js";
import type { NotifyWatch } from "../store/notify-watch.js";
import type { WardenStore } from "../store/warden-store.js";
import { keyedCall } from "./request-hash.js";

/** Who made a decision, for the record: the API key or certificate, never the secret. */
function caller(ctx: HandlerContext): string {
  const p = ctx.values.get(principalKey);
  // An agent (through its sidecar, with its agent credential) is named as the agent.
  if (p !== undefined) return p.role === "agent" && p.agentId !== undefined ? `agent:${p.agentId}` : p.keyId;
  const token = ctx.values.get(sessionTokenClaimsKey);
  if (token !== undefined) return `session:${token.sessionId}`;
  // Only when the server runs without --require-auth.
  return "unauthenticated";
}

/** ApprovalService over the store; WatchApproval waits on `watch`. */
export function createApprovalService(store: WardenStore, watch: NotifyWatch): ServiceImpl<typeof ApprovalService> {
  return {
    async getApproval(req) {
      return { approval: await store.getApproval(req.approvalId, req.sessionId) };
    },
    async listApprovals(req) {
      return store.listApprovals(req);
    },
    async approveApproval(req, ctx) {
      const keyed = keyedCall(ApproveApprovalRequestSchema, req);
      return { approval: await store.approveApproval(req.approvalId, caller(ctx), req.comment, req.amount, keyed) };
    },
    async denyApproval(req, ctx) {
      return { approval: await store.denyApproval(req.approvalId, caller(ctx), req.reason, keyedCall(DenyApprovalRequestSchema, req)) };
    },
    async cancelApproval(req, ctx) {
      const keyed = keyedCall(CancelApprovalRequestSchema, req);
      return { approval: await store.cancelApproval(req.approvalId, req.sessionId, caller(ctx), req.reason, keyed) };
    },
    async *watchApproval(req, ctx) {
      let mark = await watch.mark();
      let approval = await store.getApproval(req.approvalId, req.sessionId);
      yield { approval };
      while (approval.status === ApprovalStatus.PENDING) {
        const untilExpiry = timestampMs(approval.expireTime!) - store.now();
        if (untilExpiry <= 0) {
          // Its deadline: settle it here rather than wait for the sweeper.
          await store.expireApproval(req.approvalId);
        } else if (!(await watch.changed(mark, untilExpiry, ctx.signal))) {
          // The call ended (the client canceled, its deadline passed): end with its reason.
          if (ctx.signal.aborted) throw ConnectError.from(ctx.signal.reason, Code.Canceled);
          // The server is shutting down. An OK end would read as "the watch
          // is over", yet nobody decided: the client must watch again.
          throw new ConnectError("the server is shutting down while the approval is still pending; watch it again", Code.Unavailable);
        }
        mark = await watch.mark();
        const next = await store.getApproval(req.approvalId);
        if (next.status !== approval.status) yield { approval: next };
        approval = next;
      }
    },
  };
}
