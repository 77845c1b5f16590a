import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Queryable } from "./database.js";

/** A stored first answer. */
export interface IdempotencyHit {
  readonly method: string;
  readonly hash: Uint8Array;
  /** The first answer in protobuf binary. */
  readonly response?: Uint8Array;
}

/** A first answer to store with the change it answers. */
export interface PendingIdempotency {
  readonly scope: string;
  readonly key: string;
  readonly method: string;
  readonly requestHash: Uint8Array;
  readonly response: Uint8Array;
}

/**
 * The first answer to a retried call, decoded; or INVALID_ARGUMENT when the
 * key was first used for another method or another request.
 */
export function replayFirstAnswer<T>(
  prior: IdempotencyHit,
  method: string,
  requestHash: Uint8Array,
  key: string,
  decode: (response: Uint8Array) => T,
): T {
  const same =
    prior.method === method && prior.hash.length === requestHash.length && timingSafeEqual(prior.hash, requestHash);
  if (!same || prior.response === undefined) {
    throw new ConnectError(`idempotency_key: "${key}" was already used for a different request`, Code.InvalidArgument);
  }
  return decode(prior.response);
}

/** SHA-256 of a request's canonical bytes. */
export function hashRequest(bytes: Uint8Array): Uint8Array {
  return createHash("sha256").update(bytes).digest();
}

/** Reads stored answers for (scope, key) pairs, keyed "scope|key". */
export async function loadIdempotency(
  tx: Queryable,
  keys: readonly { scope: string; key: string }[],
): Promise<Map<string, IdempotencyHit>> {
  const out = new Map<string, IdempotencyHit>();
  if (keys.length === 0) return out;
  const { rows } = await tx.query<{ scope: string; key: string; method: string; request_hash: Uint8Array; response: Uint8Array }>(
    `SELECT i.scope, i.key, i.method, i.request_hash, i.response
       FROM idempotency_keys i
       JOIN unnest($1::text[], $2::text[]) AS k(scope, key) ON i.scope = k.scope AND i.key = k.key`,
    [keys.map((k) => k.scope), keys.map((k) => k.key)],
  );
  for (const r of rows) out.set(`${r.scope}|${r.key}`, { method: r.method, hash: r.request_hash, response: r.response });
  return out;
}

/** Stores first answers in the same transaction as the change they answer. */
export async function saveIdempotency(tx: Queryable, entries: readonly PendingIdempotency[], nowMs: number): Promise<void> {
  const params: unknown[] = [];
  const sql = saveIdempotencySql(entries, nowMs, params);
  if (sql !== undefined) await tx.query(sql, params);
}

/** The statement of {@link saveIdempotency}, its parameters appended to `params`; undefined when empty. */
export function saveIdempotencySql(entries: readonly PendingIdempotency[], nowMs: number, params: unknown[]): string | undefined {
  if (entries.length === 0) return undefined;
  const n = params.length;
  params.push(
    entries.map((e) => e.scope),
    entries.map((e) => e.key),
    entries.map((e) => e.method),
    entries.map((e) => Buffer.from(e.requestHash).toString("base64")),
    entries.map((e) => Buffer.from(e.response).toString("base64")),
    new Date(nowMs).toISOString(),
  );
  return `INSERT INTO idempotency_keys (scope, key, method, request_hash, response, create_time)
     SELECT u.scope, u.key, u.method, decode(u.h, 'base64'), decode(u.r, 'base64'), $${n + 6}::timestamptz
       FROM unnest($${n + 1}::text[], $${n + 2}::text[], $${n + 3}::text[], $${n + 4}::text[], $${n + 5}::text[]) AS u(scope, key, method, h, r)`;
}
