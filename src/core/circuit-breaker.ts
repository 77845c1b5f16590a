import { Outcome, Reason } from "../gen/warden/v1/decision_pb.js";
import type { CompiledPolicy } from "./compiled-policy.js";

/**
 * The circuit breaker of design.md §5: a session whose agent keeps being
 * denied is PAUSED (a person resumes it), and one whose requests keep
 * failing with errors ends as FAILED. Pure: the store applies it under the
 * session's lock, to decisions in the order they were made.
 */

/** What a breaker counts to: denials in a row, or failed requests. */
export type BreakerKind = "pauseAfterDenials" | "failAfterErrors";

/**
 * The threshold that trips first among a decision's scopes (the session,
 * its parents, its agent): the lowest one set. 0 when none sets one.
 */
export function tripThreshold(policies: Iterable<Pick<CompiledPolicy, BreakerKind>>, kind: BreakerKind): number {
  let out = 0;
  for (const p of policies) if (p[kind] > 0 && (out === 0 || p[kind] < out)) out = p[kind];
  return out;
}

/**
 * Denials for the session's state (paused, ended, a parent stopped) or for
 * an unreachable control plane, rather than for what the agent asked. A
 * sidecar keeps denying a paused session's calls and reports them after
 * its next resume: counted, they would trip the breaker again at once.
 */
const STATE_REASONS: ReadonlySet<Reason> = new Set([
  Reason.SESSION_PAUSED,
  Reason.SESSION_EXPIRED,
  Reason.SESSION_IDLE_TIMEOUT,
  Reason.SESSION_REVOKED,
  Reason.SESSION_COMPLETED,
  Reason.SESSION_EXHAUSTED,
  Reason.SESSION_FAILED,
  Reason.PARENT_INACTIVE,
  Reason.CONTROL_PLANE_UNAVAILABLE,
]);

/**
 * Denials in a row after one more decision: a DENY adds one, anything else
 * starts over, and a DENY only for the session's state leaves the count as
 * it was. APPROVAL_REQUIRED, listed on a DENY of an amount above a
 * threshold, says what would be asked next, not why it was denied: a
 * paused session's large amounts would otherwise count, and pause a fork
 * for its parent's pause.
 */
export function denialRun(run: number, outcome: Outcome, reasons: readonly Reason[]): number {
  if (outcome !== Outcome.DENY) return 0;
  const why = reasons.filter((r) => r !== Reason.APPROVAL_REQUIRED);
  if (why.length > 0 && why.every((r) => STATE_REASONS.has(r))) return run;
  return run + 1;
}

/** Whether a count has reached a threshold (0: the breaker is off). */
export function trips(count: number | bigint, threshold: number): boolean {
  return threshold > 0 && count >= threshold;
}

/** The status reason of a session the breaker paused. */
export function breakerPauseReason(run: number): string {
  return `circuit breaker: ${run} denials in a row`;
}

/** The status reason of a session the breaker ended as FAILED. */
export function breakerFailReason(errors: number | bigint): string {
  return `circuit breaker: ${errors} failed requests`;
}
