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
