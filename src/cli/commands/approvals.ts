import { create } from "@bufbuild/protobuf";
import {
  type Approval,
  ApprovalStatus,
  ApprovalStatusSchema,
  ApproveApprovalResponseSchema,
  CancelApprovalResponseSchema,
  DenyApprovalResponseSchema,
  GetApprovalResponseSchema,
  ListApprovalsResponseSchema,
  WatchApprovalResponseSchema,
} from "../../gen/warden/v1/approval_service_pb.js";
import { MoneySchema } from "../../gen/warden/v1/money_pb.js";
import { ApprovalTimeoutOutcomeSchema } from "../../gen/warden/v1/policy_pb.js";
import { CliError } from "../cli-error.js";
import { CLIENT_FLAGS, type CommandSpec, EXIT_NOT_ALLOWED, EXIT_OK, IDEMPOTENCY_FLAG } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { parseEnumWord, parsePositiveMoneyFlag } from "../flags.js";
import { enumWord, formatAmount, formatKeyValues, formatTable, formatTime } from "../format.js";

/** One approval as `key value` lines. */
export function formatApproval(a: Approval): string {
  const money = (m: Approval["amount"]) => (m === undefined ? undefined : formatAmount(m.amountMicros, m.currencyCode));
  return formatKeyValues([
    ["approval", a.approvalId],
    ["status", enumWord(ApprovalStatusSchema, a.status)],
    ["session", a.sessionId],
    ["agent", a.agentId],
    ["action", a.action === undefined ? undefined : `${a.action.type}${a.action.merchant ? ` at ${a.action.merchant}` : ""} (${a.method})`],
    ["amount", money(a.amount)],
    ["approved amount", money(a.approvedAmount)],
    ["requested", formatTime(a.createTime)],
    [a.status === ApprovalStatus.PENDING ? "expires" : "was due", formatTime(a.expireTime)],
    ["on timeout", a.timeoutOutcome === 0 ? "deny" : enumWord(ApprovalTimeoutOutcomeSchema, a.timeoutOutcome)],
    ["decided", formatTime(a.decideTime)],
    ["decided by", a.decidedBy || undefined],
    ["comment", a.comment || undefined],
    ["authorization", a.status === ApprovalStatus.APPROVED ? a.actionId : undefined],
    ["hold expires", formatTime(a.holdExpireTime)],
  ]);
}

function formatApprovalsTable(approvals: readonly Approval[]): string {
  if (approvals.length === 0) return "no approvals";
  return formatTable(
    [{ title: "approval" }, { title: "status" }, { title: "amount", align: "right" }, { title: "session" }, { title: "requested" }, { title: "expires" }, { title: "decided by" }],
    approvals.map((a) => [
      a.approvalId,
      enumWord(ApprovalStatusSchema, a.status),
      a.amount === undefined ? "" : formatAmount(a.amount.amountMicros, a.amount.currencyCode),
      a.sessionId,
      formatTime(a.createTime) ?? "",
      a.status === ApprovalStatus.PENDING ? (formatTime(a.expireTime) ?? "") : "",
      a.decidedBy,
    ]),
  );
}

/** The decided statuses other than APPROVED: `approvals watch` exits 2 on them. */
const NOT_APPROVED: readonly ApprovalStatus[] = [ApprovalStatus.DENIED, ApprovalStatus.EXPIRED, ApprovalStatus.CANCELED];

const SESSION_FLAG = { name: "session", type: "string", value: "SESSION_ID", description: "the session the approval belongs to (required with an agent key)" } as const;

/** The `warden approvals …` commands: the approver's queue and decisions, and the agent's wait. */
export const APPROVAL_COMMANDS: readonly CommandSpec[] = [
  {
    name: "approvals list",
    args: [],
    summary: "list approvals: pending first (oldest first), then decided ones (newest first)",
    flags: [
      { name: "session", type: "string", value: "SESSION_ID", description: "only this session's" },
      { name: "agent", type: "string", value: "AGENT_ID", description: "only this agent's" },
      { name: "status", type: "string", value: "STATUS", description: "only pending, approved, denied, expired or canceled" },
      ...pageFlags("approvals", 50),
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const status = ctx.flags.string("status");
      const res = await ctx.clients().approvals.listApprovals({
        sessionId: ctx.flags.string("session") ?? "",
        agentId: ctx.flags.string("agent") ?? "",
        status: status === undefined ? ApprovalStatus.UNSPECIFIED : parseEnumWord("--status", ApprovalStatusSchema, status),
        ...pageOf(ctx.flags),
      });
      ctx.output(ListApprovalsResponseSchema, res, () => {
        const table = formatApprovalsTable(res.approvals);
        return withNextPage(table, res.nextPageToken);
      });
      return EXIT_OK;
    },
  },
  {
    name: "approvals get",
    args: ["APPROVAL_ID"],
    summary: "show an approval: the action, the amount, its status and who decided",
    flags: [SESSION_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().approvals.getApproval({ approvalId: ctx.args[0]!, sessionId: ctx.flags.string("session") ?? "" });
      ctx.output(GetApprovalResponseSchema, res, () => (res.approval ? formatApproval(res.approval) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "approvals approve",
    args: ["APPROVAL_ID"],
    summary: "approve a pending approval (needs an approver or admin key); it becomes an authorization",
    notes: "--amount approves less than was asked (in the approval's currency); the rest of the hold is released at once.",
    flags: [
      { name: "amount", type: "string", value: "AMOUNT", description: "approve this much, at most what was asked (default: all)" },
      { name: "comment", type: "string", value: "TEXT", description: "why, for the record" },
      IDEMPOTENCY_FLAG,
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const approvalId = ctx.args[0]!;
      const amountText = ctx.flags.string("amount");
      // Checked before anything is sent; it is in the approval's currency,
      // which is read next.
      const micros = amountText === undefined ? undefined : parsePositiveMoneyFlag("--amount", amountText);
      const amount =
        micros === undefined
          ? undefined
          : create(MoneySchema, {
              currencyCode: (await ctx.clients().approvals.getApproval({ approvalId })).approval?.amount?.currencyCode ?? "",
              amountMicros: micros,
            });
      const res = await ctx.clients().approvals.approveApproval({
        approvalId,
        amount,
        comment: ctx.flags.string("comment") ?? "",
        idempotencyKey: ctx.flags.string("idempotency-key") ?? "",
      });
      ctx.output(ApproveApprovalResponseSchema, res, () => (res.approval ? formatApproval(res.approval) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "approvals deny",
    args: ["APPROVAL_ID"],
    summary: "deny a pending approval (needs an approver or admin key); its hold is released",
    flags: [{ name: "reason", type: "string", value: "TEXT", description: "why, for the record and the agent" }, IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().approvals.denyApproval({
        approvalId: ctx.args[0]!,
        reason: ctx.flags.string("reason") ?? "",
        idempotencyKey: ctx.flags.string("idempotency-key") ?? "",
      });
      ctx.output(DenyApprovalResponseSchema, res, () => (res.approval ? formatApproval(res.approval) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "approvals cancel",
    args: ["APPROVAL_ID"],
    summary: "withdraw a pending approval (the agent's side); its hold is released",
    flags: [SESSION_FLAG, { name: "reason", type: "string", value: "TEXT", description: "why, for the record" }, IDEMPOTENCY_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const res = await ctx.clients().approvals.cancelApproval({
        approvalId: ctx.args[0]!,
        sessionId: ctx.flags.string("session") ?? "",
        reason: ctx.flags.string("reason") ?? "",
        idempotencyKey: ctx.flags.string("idempotency-key") ?? "",
      });
      ctx.output(CancelApprovalResponseSchema, res, () => (res.approval ? formatApproval(res.approval) : ""));
      return EXIT_OK;
    },
  },
  {
    name: "approvals watch",
    args: ["APPROVAL_ID"],
    summary: "wait until an approval is decided or expires, printing each change",
    notes:
      "Exit code 0 when it ends APPROVED, 2 when it ends denied, expired or canceled, 1 on errors, including a watch that ends while the approval is still pending (the server shut down: watch again).",
    flags: [SESSION_FLAG, ...CLIENT_FLAGS],
    async run(ctx) {
      const approvalId = ctx.args[0]!;
      let last: Approval | undefined;
      for await (const res of ctx.clients().approvals.watchApproval({ approvalId, sessionId: ctx.flags.string("session") ?? "" }, { timeoutMs: 0 })) {
        last = res.approval;
        ctx.output(WatchApprovalResponseSchema, res, () => (res.approval ? `${formatApproval(res.approval)}\n` : ""));
      }
      if (last?.status === ApprovalStatus.APPROVED) return EXIT_OK;
      if (last !== undefined && NOT_APPROVED.includes(last.status)) return EXIT_NOT_ALLOWED;
      // Nobody decided (an older server ends the stream OK when it shuts
      // down): exit 2 would tell a script it was denied.
      throw new CliError(`approvals watch: the stream ended before ${approvalId} was decided; watch it again`);
    },
  },
];
