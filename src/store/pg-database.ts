import pg from "pg";
import { type Database, PLANNER_SETTINGS, type Queryable, type TransactionOptions } from "./database.js";
import { arrayParamTypes, withBinaryArrays } from "./binary-array-params.js";
import { HotStatements } from "./hot-statements.js";
import { trackStatements } from "./tracked-statements.js";

/** Options of {@link createPgDatabase}. */
export interface PgDatabaseOptions {
  /** A `postgres://` URL. */
  readonly connectionString: string;
  /** Pool size; default 8. */
  readonly maxConnections?: number;
}

/**
 * A {@link Database} on a PostgreSQL server through a `pg` pool. Int8 and
 * numeric values come back as strings (pg's default), which the store turns
 * into bigints: money never passes through a float.
 */
export function createPgDatabase(options: PgDatabaseOptions): Database {
  const max = options.maxConnections ?? 8;
  // The settings travel in the startup message (an `options` parameter in
  // the URL replaces them all): see PLANNER_SETTINGS.
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max,
    // Statements sent one after another go out at once, without waiting
    // for the one before to answer: a decision batch's reads are then one
    // round trip, and its writes and COMMIT another (decision-batcher.ts).
    pipeline: true,
    options: Object.entries(PLANNER_SETTINGS)
      .map(([k, v]) => `-c ${k}=${v}`)
      .join(" "),
  });
  // An idle client's error (e.g. the server restarting) must not crash the
  // process; the next query gets a fresh connection.
  pool.on("error", () => {});
  const hot = new HotStatements();
  // Each statement text's array parameter types, worked out once (the
  // store's texts are a bounded set; see HotStatements).
  const arrayTypes = new Map<string, ReturnType<typeof arrayParamTypes>>();
  const config = (sql: string, params: readonly unknown[] | undefined) => {
    if (params === undefined || params.length === 0) return hot.config(sql, params);
    let types = arrayTypes.get(sql);
    if (types === undefined) {
      if (arrayTypes.size >= 1024) arrayTypes.clear();
      types = arrayParamTypes(sql);
      arrayTypes.set(sql, types);
    }
    return hot.config(sql, withBinaryArrays(types, params));
  };
  return {
    kind: "postgres",
    parallelism: max,
    query: (sql, params) => pool.query(config(sql, params)) as never,
    async transaction<T>(fn: (tx: Queryable) => Promise<T>, txOptions: TransactionOptions = {}): Promise<T> {
      const client = await pool.connect();
      const statements = trackStatements({ query: (sql, params) => client.query(config(sql, params)) as never });
      try {
        // SET LOCAL: until the commit or rollback, whichever ends it.
        // Awaited before the body sends anything: were BEGIN to fail, what
        // was pipelined behind it would run and commit statement by statement.
        await client.query(txOptions.genericPlans === true ? "BEGIN; SET LOCAL plan_cache_mode = auto" : "BEGIN");
        const result = await statements.run(fn);
        // Behind whatever the body left running (its last writes, say): one
        // round trip for both. Should one of them fail, PostgreSQL ends the
        // transaction with a ROLLBACK in place of the COMMIT.
        const commit = client.query("COMMIT");
        commit.catch(() => {});
        await statements.settled();
        const { command } = await commit;
        if (command !== "COMMIT") throw new Error(`transaction ended with ${command}, not COMMIT`);
        client.release();
        return result;
      } catch (err) {
        // A failed ROLLBACK means the connection is broken: drop it.
        await client.query("ROLLBACK").then(
          () => client.release(),
          (e: Error) => client.release(e),
        );
        throw err;
      }
    },
    listen: (channel, onNotify) => listenPg(options.connectionString, channel, onNotify),
    close: () => pool.end(),
  };
}

/**
 * LISTEN on a connection outside the pool (a pooled one would be handed to
 * queries). A broken connection is replaced after a pause, with `onNotify`
 * called once the new one listens, since notifications sent in between are
 * gone.
 */
async function listenPg(connectionString: string, channel: string, onNotify: () => void): Promise<() => Promise<void>> {
  let client: pg.Client | undefined;
  let stopped = false;
  let retry: NodeJS.Timeout | undefined;
  const reconnect = (): void => {
    if (stopped) return;
    retry = setTimeout(() => void connect().then(onNotify, reconnect), 500);
  };
  const connect = async (): Promise<void> => {
    const c = Object.assign(new pg.Client({ connectionString }), { listening: false });
    c.on("notification", (m) => {
      if (m.channel === channel) onNotify();
    });
    c.on("error", () => {
      // "end" follows and schedules the reconnect.
    });
    c.on("end", () => {
      if (client === c) client = undefined;
      if (client === undefined && c.listening) reconnect();
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    if (stopped) {
      await c.end();
      return;
    }
    c.listening = true;
    client = c;
  };
  await connect();
  return async () => {
    stopped = true;
    clearTimeout(retry);
    await client?.end().catch(() => undefined);
  };
}
