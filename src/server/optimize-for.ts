import { setFlagsFromString } from "node:v8";

/**
 * Tunes V8 for what a role is short of. "memory" turns on V8's
 * `--optimize-for-size`: the heap grows more slowly and is collected and
 * shrunk sooner. A sidecar runs beside every agent, so its resident memory
 * is multiplied by the pod count; measured with 100,000 cached sessions it
 * saves ~17–33 MB of RSS (135 against 152 MB in one run, 134 against 156 in
 * another, 133 against 166 in a third) for 10–21% fewer lease-mode
 * decisions/s (README, sidecar benchmark).
 *
 * Set here, at run time, rather than on node's command line: Node refuses
 * this flag in NODE_OPTIONS, and the image's one ENTRYPOINT serves every
 * role. V8 consults it as the heap grows, not only at start, so setting it
 * before the role allocates its caches has the same effect (measured: the
 * same RSS either way).
 */
export function optimizeFor(goal: "memory" | "speed"): void {
  if (goal === "memory") setFlagsFromString("--optimize-for-size");
}
