import { type Client, Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { ApprovalService } from "../gen/warden/v1/approval_service_pb.js";

/**
 * ApprovalService as the sidecar serves it to its agent: the agent's side
 * (read, watch, cancel its session's approvals) passed through to the
 * control plane, which holds the approvals. Deciding is for people, at
 * the control plane, with an approver key; a sidecar holds only its
 * agent's credential.
 */
export function createSidecarApprovalService(controlPlane: Client<typeof ApprovalService>): ServiceImpl<typeof ApprovalService> {
  const decideThere = (): never => {
    throw new ConnectError("approvals are decided at the control plane, with an approver's API key", Code.PermissionDenied);
  };
  return {
    getApproval: (req, ctx) => controlPlane.getApproval(req, { signal: ctx.signal }),
    listApprovals: (req, ctx) => controlPlane.listApprovals(req, { signal: ctx.signal }),
    cancelApproval: (req, ctx) => controlPlane.cancelApproval(req, { signal: ctx.signal }),
    approveApproval: decideThere,
    denyApproval: decideThere,
    async *watchApproval(req, ctx) {
      // No deadline of the transport's: the wait is the approval's TTL.
      yield* controlPlane.watchApproval(req, { signal: ctx.signal, timeoutMs: 0 });
    },
  };
}
