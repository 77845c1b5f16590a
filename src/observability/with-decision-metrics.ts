import { createContextKey, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { PolicyService } from "../gen/warden/v1/policy_service_pb.js";
import { normalizeError } from "../transport/normalize-error.js";
import { type DecisionLike, grpcCodeName, type Metrics } from "./metrics.js";

/**
 * How a call was decided, the `path` label of
 * `warden_decision_duration_seconds`: a handler that knows (a sidecar
 * answering from its cache says "local", from a lease "lease", through the
 * control plane "exact") sets it with `ctx.values.set(decisionPathKey, …)`.
 * Unset, it is "store": the all-in-one server decides every call in the
 * store's transaction.
 */
export const decisionPathKey = createContextKey<string>("store", { description: "warden decision path" });

/** The methods of PolicyService that decide; the others pass through untouched. */
const decidingMethods = ["authorize", "check"] as const;

type PolicyImpl = Partial<ServiceImpl<typeof PolicyService>>;
type DecidingHandler = (req: unknown, ctx: HandlerContext) => Promise<{ decision?: DecisionLike | undefined }> | { decision?: DecisionLike | undefined };

/**
 * Wraps a PolicyService implementation so that every Authorize and Check
 * records its decision (outcome, each reason) and latency with
 * {@link Metrics.recordDecision}, and every failure (an error is not a
 * decision) its gRPC code with {@link Metrics.recordDecisionError}.
 *
 * Like `withValidation`, the result is itself a ServiceImpl, so both
 * transports report the same numbers. Put it outermost, around the
 * validated implementation, so the latency is what callers wait for and
 * rejected requests are counted too.
 */
export function withDecisionMetrics(impl: PolicyImpl, metrics: Pick<Metrics, "recordDecision" | "recordDecisionError">): PolicyImpl {
  const wrapped: Record<string, unknown> = { ...impl };
  for (const method of decidingMethods) {
    const fn = impl[method] as DecidingHandler | undefined;
    if (fn === undefined) continue;
    wrapped[method] = async (req: unknown, ctx: HandlerContext) => {
      // performance.now() is monotonic and costs tens of nanoseconds;
      // hrtime.bigint() would allocate a BigInt per call.
      const start = performance.now();
      let res: Awaited<ReturnType<DecidingHandler>>;
      try {
        res = await fn.call(impl, req, ctx);
      } catch (err) {
        metrics.recordDecisionError(method, grpcCodeName(normalizeError(err, ctx.signal).code));
        throw err;
      }
      metrics.recordDecision(method, res.decision ?? {}, (performance.now() - start) / 1000, ctx.values.get(decisionPathKey));
      return res;
    };
  }
  return wrapped as PolicyImpl;
}
