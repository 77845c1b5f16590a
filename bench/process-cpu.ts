/**
 * Where a benchmark's CPU goes, process by process: every server, the
 * database and the load generator share this machine's cores, so a
 * throughput figure alone does not say whose cost limits it. Read from
 * /proc (Linux); elsewhere every figure is undefined.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";

/** Clock ticks per second of the times in /proc/<pid>/stat (USER_HZ). */
const HZ = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

const HAS_PROC = existsSync("/proc/self/stat");

/** CPU time (user + system, all threads) a process has used so far, in ms; 0 once it is gone. */
export function cpuMsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which may itself hold spaces.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) * 1000) / HZ;
  } catch {
    return 0;
  }
}

/** Pids of the processes whose command name is `name` (e.g. "postgres", "redis-server"). */
export function pidsNamed(name: string): number[] {
  if (!HAS_PROC) return [];
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, "utf8").trim() === name) out.push(Number(d));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/**
 * Processes to account, by label. Each list is taken again at the end, so
 * a process started meanwhile (a PostgreSQL backend) counts from zero.
 */
export type CpuGroups = Readonly<Record<string, () => readonly number[]>>;

/** Runs `fn` and measures the CPU time (ms) each group of processes used meanwhile; undefined without /proc. */
export async function measureCpu<T>(groups: CpuGroups, fn: () => Promise<T>): Promise<{ value: T; cpuMs: Record<string, number> | undefined }> {
  if (!HAS_PROC) return { value: await fn(), cpuMs: undefined };
  const before = new Map<number, number>();
  for (const pids of Object.values(groups)) for (const pid of pids()) before.set(pid, cpuMsOf(pid));
  const value = await fn();
  const cpuMs: Record<string, number> = {};
  for (const [label, pids] of Object.entries(groups)) {
    cpuMs[label] = [...new Set(pids())].reduce((sum, pid) => sum + cpuMsOf(pid) - (before.get(pid) ?? 0), 0);
  }
  return { value, cpuMs };
}

/** CPU µs per call of each of `labels` (and their sum), as table cells. */
export function cpuCells(cpuMs: Record<string, number> | undefined, calls: number, labels: readonly string[]): string[] {
  if (cpuMs === undefined) return [...labels, "all"].map(() => "n/a");
  const us = labels.map((l) => ((cpuMs[l] ?? 0) * 1000) / calls);
  return [...us, us.reduce((a, b) => a + b, 0)].map((v) => (v === 0 ? "–" : v.toFixed(0)));
}

/** CPU ticks the whole machine spent busy, and in all, so far (/proc/stat); undefined without /proc. */
function machineTicks(): { busy: number; all: number } | undefined {
  if (!HAS_PROC) return undefined;
  // user nice system idle iowait irq softirq steal (guest time is already in user).
  const t = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const all = t.reduce((a, b) => a + b, 0);
  return { busy: all - t[3]! - t[4]!, all };
}

/**
 * Time a process's main thread has spent runnable but waiting for a CPU,
 * in ms (/proc/<pid>/task/<pid>/schedstat, whose second field is exactly
 * that); 0 once it is gone.
 */
function runQueueWaitMsOf(pid: number): number {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[1]) / 1e6;
  } catch {
    return 0;
  }
}

/** What {@link measureContention} saw: the machine's busy share, and how long the process waited for a CPU. */
export interface Contention {
  /** Share of both cores' time that was busy (any process), in percent. */
  readonly machineBusyPct: number;
  /** Share of the run the process's main thread was ready to run but waiting for a CPU, in percent. */
  readonly waitingPct: number;
}

/**
 * Runs `fn` and measures how contended the CPU was meanwhile: on a machine
 * whose cores every process here shares, a latency figure means little
 * without it (a call that is ready but not running waits however fast the
 * code is). Undefined without /proc.
 */
export async function measureContention<T>(pid: number, fn: () => Promise<T>): Promise<{ value: T; contention: Contention | undefined }> {
  const m0 = machineTicks();
  const w0 = runQueueWaitMsOf(pid);
  const t0 = performance.now();
  const value = await fn();
  const m1 = machineTicks();
  if (m0 === undefined || m1 === undefined) return { value, contention: undefined };
  const wallMs = performance.now() - t0;
  return {
    value,
    contention: {
      machineBusyPct: ((m1.busy - m0.busy) / Math.max(1, m1.all - m0.all)) * 100,
      waitingPct: ((runQueueWaitMsOf(pid) - w0) / wallMs) * 100,
    },
  };
}
