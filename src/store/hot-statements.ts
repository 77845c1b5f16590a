import { createHash } from "node:crypto";
import type pg from "pg";

/** Options of {@link HotStatements}; the defaults suit the store. */
export interface HotStatementsOptions {
  /** Most texts ever named. Default 128. */
  readonly maxNamed?: number;
  /** Runs of a text before it is named. Default 3. */
  readonly runsBeforeNamed?: number;
}

/**
 * Names the statements the store runs again and again, so each connection
 * parses and analyzes them once (pg prepares a named statement on its first
 * use on a connection) instead of on every call. The decision path's
 * statements are long (a batch's writes are one statement of
 * data-modifying CTEs): parsing, analyzing and planning them anew each time
 * was about a quarter of PostgreSQL's CPU per decision, half of it before
 * the planner. The plan is still made for each run's parameters (see
 * createPgDatabase).
 *
 * A text is named from its third run on, and at most `maxNamed` texts are,
 * for the life of the process: in this store texts are a bounded set
 * (values travel as parameters), and the cap keeps one-off texts from
 * holding server memory on every connection. Statements without
 * parameters (BEGIN, DDL, scripts of several statements) are never named.
 */
export class HotStatements {
  private readonly maxNamed: number;
  private readonly runsBeforeNamed: number;
  private readonly names = new Map<string, string>();
  /** Runs of texts not named yet; forgotten wholesale when it grows large. */
  private readonly runs = new Map<string, number>();

  constructor(o: HotStatementsOptions = {}) {
    this.maxNamed = o.maxNamed ?? 128;
    this.runsBeforeNamed = o.runsBeforeNamed ?? 3;
  }

  /** How many texts are named. */
  get size(): number {
    return this.names.size;
  }

  /** The query to run for `text` with `params`: named once the text is hot. */
  config(text: string, params: readonly unknown[] | undefined): pg.QueryConfig {
    const values = params as unknown[] | undefined;
    if (values === undefined || values.length === 0) return { text, values };
    let name = this.names.get(text);
    if (name === undefined && this.names.size < this.maxNamed) {
      const n = (this.runs.get(text) ?? 0) + 1;
      if (n >= this.runsBeforeNamed) {
        // The text's hash: the same name on every connection and in every
        // process, and a different text can never reuse it (pg refuses a
        // name bound to another text).
        name = `warden_${createHash("sha256").update(text).digest("hex").slice(0, 32)}`;
        this.names.set(text, name);
        this.runs.delete(text);
      } else {
        if (this.runs.size >= 4 * this.maxNamed) this.runs.clear();
        this.runs.set(text, n);
      }
    }
    return { text, values, name };
  }
}
