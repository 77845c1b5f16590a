/** One instruction of a Dockerfile, continuation lines joined. */
export interface DockerInstruction {
  /** Upper-case keyword: FROM, RUN, COPY, … */
  readonly keyword: string;
  /** Everything after the keyword, trimmed. */
  readonly args: string;
  /** 1-based line where the instruction starts, for messages. */
  readonly line: number;
}

/** A build stage: one FROM and the instructions up to the next. */
export interface DockerStage {
  /** The `AS name`, if any. */
  readonly name: string | undefined;
  /** The base image with build arguments substituted. */
  readonly from: string;
  readonly instructions: readonly DockerInstruction[];
}

/** A parsed Dockerfile. */
export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  readonly globalArgs: ReadonlyMap<string, string>;
  readonly stages: readonly DockerStage[];
}

/**
 * Parses the subset of Dockerfile syntax this repository uses: comments,
 * backslash continuations, global ARGs substituted into FROM. Enough to check
 * the file's structure without a Docker engine; it is not a full parser
 * (no heredocs, no escape directive).
 */
export function parseDockerfile(text: string): Dockerfile {
  const instructions: DockerInstruction[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split("\n").forEach((raw, i) => {
    const line = raw.trimEnd();
    // Comment lines inside a continuation are dropped too, as Docker does.
    if (line.trimStart().startsWith("#") || (line.trim() === "" && pending === undefined)) return;
    const continued = line.endsWith("\\");
    const body = continued ? line.slice(0, -1) : line;
    pending = pending === undefined ? { text: body, line: i + 1 } : { text: `${pending.text} ${body.trim()}`, line: pending.line };
    if (continued) return;
    const m = /^\s*(\S+)\s*(.*)$/s.exec(pending.text);
    if (m) instructions.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: pending.line });
    pending = undefined;
  });

  const globalArgs = new Map<string, string>();
  const stages: { name: string | undefined; from: string; instructions: DockerInstruction[] }[] = [];
  for (const ins of instructions) {
    if (ins.keyword === "FROM") {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`Dockerfile:${ins.line}: cannot parse FROM ${ins.args}`);
      const from = m[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a?: string, b?: string) => globalArgs.get((a ?? b)!) ?? "");
      stages.push({ name: m[2], from, instructions: [] });
    } else if (stages.length === 0) {
      if (ins.keyword !== "ARG") throw new Error(`Dockerfile:${ins.line}: only ARG may come before FROM`);
      const [name, value = ""] = ins.args.split("=", 2);
      globalArgs.set(name!.trim(), value.trim());
    } else {
      stages.at(-1)!.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

/** The JSON array of an exec-form instruction (ENTRYPOINT, CMD), or undefined for shell form. */
export function execForm(args: string): string[] | undefined {
  if (!args.startsWith("[")) return undefined;
  const value: unknown = JSON.parse(args);
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) return undefined;
  return value;
}

/** A COPY or ADD: its `--from` stage (undefined: the build context), sources and destination. */
export interface DockerCopy {
  readonly from: string | undefined;
  readonly sources: readonly string[];
  readonly dest: string;
  readonly line: number;
}

/** Splits a COPY or ADD instruction (shell form only) into flags, sources and destination. */
export function parseCopy(ins: DockerInstruction): DockerCopy {
  const words = ins.args.split(/\s+/);
  let from: string | undefined;
  while (words[0]?.startsWith("--")) {
    const flag = words.shift()!;
    if (flag.startsWith("--from=")) from = flag.slice("--from=".length);
  }
  if (words.length < 2) throw new Error(`Dockerfile:${ins.line}: ${ins.keyword} needs a source and a destination`);
  return { from, sources: words.slice(0, -1), dest: words.at(-1)!, line: ins.line };
}
