/**
 * `sql` with its parameters `$1…` renumbered after those already in
 * `params`, to which `own` is appended: how several statements, each
 * written with its own `$1…`, become the data-modifying CTEs of one
 * statement (one round trip, the transaction's locks held for less time).
 */
export function appendStatement(params: unknown[], sql: string, own: readonly unknown[]): string {
  const base = params.length;
  params.push(...own);
  return sql.replace(/\$(\d+)/g, (_, n: string) => `$${base + Number(n)}`);
}

/** {@link appendStatement} for each of `statements`, in order. */
export function appendStatements(params: unknown[], statements: readonly { readonly sql: string; readonly params: readonly unknown[] }[]): string[] {
  return statements.map((s) => appendStatement(params, s.sql, s.params));
}

/**
 * Data-modifying statements (their parameters already numbered into one
 * list, see {@link appendStatement}) as one statement: each a CTE, which
 * PostgreSQL runs to completion whether or not anything reads it. They
 * share one snapshot, so none sees another's changes, and no two may
 * change the same row.
 */
export function foldStatements(writes: readonly string[]): string {
  return `WITH ${writes.map((w, i) => `w${i} AS (${w})`).join(",\n")} SELECT 1`;
}
