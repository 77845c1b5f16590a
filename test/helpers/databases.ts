import { randomBytes } from "node:crypto";
import pg from "pg";
import type { Database } from "../../src/store/database.js";
import { migrate } from "../../src/store/migrate.js";
import { createPgDatabase } from "../../src/store/pg-database.js";
import { createPgliteDatabase } from "../../src/store/pglite-database.js";

/** The server the suite runs against; the machine's PostgreSQL by default. */
export const ADMIN_URL = process.env.WARDEN_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** A fresh, migrated database and a way to drop it. */
export interface TestDatabase {
  readonly db: Database;
  /** For child processes: a URL, or undefined for PGlite (use a data dir). */
  readonly url: string | undefined;
  drop(): Promise<void>;
}

/** Creates an empty PostgreSQL database on the test server, for one test file. */
export async function createPostgresDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `warden_test_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: ADMIN_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** Both drivers the suite must pass on. */
export const DRIVERS = ["pglite", "postgres"] as const;
/** One of {@link DRIVERS}. */
export type Driver = (typeof DRIVERS)[number];

/** A fresh migrated database of `driver`. */
export async function openTestDatabase(driver: Driver): Promise<TestDatabase> {
  if (driver === "pglite") {
    const db = await createPgliteDatabase(undefined);
    await migrate(db);
    return { db, url: undefined, drop: () => db.close() };
  }
  const pgdb = await createPostgresDatabase();
  const db = createPgDatabase({ connectionString: pgdb.url });
  await migrate(db);
  return {
    db,
    url: pgdb.url,
    async drop() {
      await db.close();
      await pgdb.drop();
    },
  };
}
