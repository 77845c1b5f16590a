import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Database } from "./database.js";

const MIGRATIONS_DIR = join(dirname(fileURLToPath(import.meta.url)), "migrations");

// Any fixed number: all replicas agree on it, so only one migrates at a time.
const MIGRATION_LOCK = 0x77617264; // "ward"

/**
 * Applies the SQL files of `migrations/` that have not run yet, in name
 * order, all in one transaction together with their bookkeeping rows, so a
 * crash leaves no migration half-applied. Replicas starting together
 * serialize on an advisory lock.
 */
export async function migrate(db: Database): Promise<string[]> {
  const files = readdirSync(MIGRATIONS_DIR)
    .filter((f) => f.endsWith(".sql"))
    .sort();
  return db.transaction(async (tx) => {
    await tx.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK]);
    await tx.query(
      "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_time timestamptz NOT NULL DEFAULT now())",
    );
    const { rows } = await tx.query<{ name: string }>("SELECT name FROM schema_migrations");
    const done = new Set(rows.map((r) => r.name));
    const applied: string[] = [];
    for (const file of files) {
      if (done.has(file)) continue;
      // Statements are separated by ";\n" at line ends; the files hold no
      // procedural code, so that split is exact.
      const sql = readFileSync(join(MIGRATIONS_DIR, file), "utf8");
      for (const stmt of sql.split(/;\s*$/m).map((s) => s.trim()).filter((s) => s.replace(/--.*$/gm, "").trim() !== "")) {
        await tx.query(stmt);
      }
      await tx.query("INSERT INTO schema_migrations (name) VALUES ($1)", [file]);
      applied.push(file);
    }
    return applied;
  });
}
