import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Queryable } from "./database.js";

/** A stored first answer, or a live claim of a sidecar deciding the key. */
export interface IdempotencyHit {
  readonly method: string;
  readonly hash: Uint8Array;
  /** The first answer in protobuf binary; absent while the key is claimed. */
  readonly response?: Uint8Array;
  /** While claimed: when the claim lapses if its action is never reported. */
  readonly claimExpireMs?: number;
}

/** A first answer to store with the change it answers. */
export interface PendingIdempotency {
  readonly scope: string;
  readonly key: string;
  readonly method: string;
  readonly requestHash: Uint8Array;
  readonly response: Uint8Array;
  /** The action the answer is of, when it is one (a claim by it is filled). */
  readonly actionId?: string;
}

/**
 * The first answer to a retried call, decoded; INVALID_ARGUMENT when the
 * key was first used for another method or another request; ABORTED while
 * a sidecar that claimed the key is still deciding it (the caller retries).
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
  if (!same) throw new ConnectError(`idempotency_key: "${key}" was already used for a different request`, Code.InvalidArgument);
  if (prior.response === undefined) {
    throw new ConnectError(`idempotency_key: a call with "${key}" is still being decided; retry it`, Code.Aborted);
  }
  return decode(prior.response);
}

/** SHA-256 of a request's canonical bytes. */
export function hashRequest(bytes: Uint8Array): Uint8Array {
  return createHash("sha256").update(bytes).digest();
}

interface KeyRow {
  scope: string;
  key: string;
  method: string;
  request_hash: Uint8Array;
  response: Uint8Array | null;
  claim_expire_time: Date | null;
}

function hitOf(r: KeyRow): IdempotencyHit {
  return r.response !== null
    ? { method: r.method, hash: r.request_hash, response: r.response }
    : { method: r.method, hash: r.request_hash, claimExpireMs: r.claim_expire_time!.getTime() };
}

/**
 * Reads stored answers and live claims for (scope, key) pairs, keyed
 * "scope|key". A lapsed claim reads as no row: the key is free again (see
 * {@link IDEMPOTENCY_UPSERT}).
 */
export async function loadIdempotency(
  tx: Queryable,
  keys: readonly { scope: string; key: string }[],
  nowMs: number,
): Promise<Map<string, IdempotencyHit>> {
  const out = new Map<string, IdempotencyHit>();
  if (keys.length === 0) return out;
  const { rows } = await tx.query<KeyRow>(
    `SELECT i.scope, i.key, i.method, i.request_hash, i.response, i.claim_expire_time
       FROM idempotency_keys i
       JOIN unnest($1::text[], $2::text[]) AS k(scope, key) ON i.scope = k.scope AND i.key = k.key
      WHERE i.response IS NOT NULL OR i.claim_expire_time > $3::timestamptz`,
    [keys.map((k) => k.scope), keys.map((k) => k.key), new Date(nowMs).toISOString()],
  );
  for (const r of rows) out.set(`${r.scope}|${r.key}`, hitOf(r));
  return out;
}

/** One key a sidecar asks to claim (see {@link claimIdempotencyKeys}). */
export interface KeyClaim {
  readonly sessionId: string;
  readonly key: string;
  readonly method: string;
  readonly requestHash: Uint8Array;
  readonly actionId: string;
  readonly expireMs: number;
}

/**
 * How a key row is written over what may be there, by a claim (response
 * NULL, an expiry) or a first answer (a response, no expiry): a claim by
 * the same action is renewed or filled, and a lapsed claim (its sidecar
 * never reported) is replaced. Any other row stays: a first answer is never
 * overwritten, and another action's live claim is that action's to fill.
 * The store's own decisions read their keys under their sessions' lock
 * first, so for them this never meets a row it should not have.
 */
const IDEMPOTENCY_UPSERT = `ON CONFLICT (scope, key) DO UPDATE
        SET method = EXCLUDED.method, request_hash = EXCLUDED.request_hash, response = EXCLUDED.response,
            create_time = EXCLUDED.create_time, action_id = EXCLUDED.action_id, claim_expire_time = EXCLUDED.claim_expire_time
      WHERE idempotency_keys.response IS NULL
        AND (idempotency_keys.action_id = EXCLUDED.action_id OR idempotency_keys.claim_expire_time <= EXCLUDED.create_time)`;

/** What {@link claimIdempotencyKeys} found, by "s:<session>|<key>". */
export interface ClaimOutcome {
  /** Now claimed by the asking action (or already were, by it). */
  readonly claimed: Set<string>;
  /** A first answer, or another action's live claim. */
  readonly held: Map<string, IdempotencyHit>;
}

/**
 * Claims session keys for actions about to be decided: a key with no row,
 * or only a lapsed claim, becomes a claim by the action; one already
 * claimed by the same action stays so (a retried claim call). For the
 * others the row as it stands is read: a first answer, or another action's
 * live claim. Keys of sessions the store does not have are in neither.
 *
 * One statement, committed on its own (no transaction: under load this is
 * one round trip per batch of claims instead of four). It locks the keys'
 * sessions FOR SHARE before it writes, so a store decision on the same
 * session, which locks it for update and reads its keys under that lock,
 * either sees the claim or is waited for and then met as a conflict (an
 * insert's conflict check sees rows committed after its snapshot). The
 * rows that were not claimed are read by a second statement, which sees
 * what committed meanwhile; a key that then has no row at all (its claim
 * was given back in between) is tried once more.
 */
export async function claimIdempotencyKeys(db: Queryable, claims: readonly KeyClaim[], nowMs: number): Promise<ClaimOutcome> {
  const claimed = new Set<string>();
  const held = new Map<string, IdempotencyHit>();
  let pending = claims;
  for (let attempt = 0; attempt < 2 && pending.length > 0; attempt++) {
    const { rows } = await db.query<{ scope: string; key: string }>(
      `WITH locked AS (SELECT session_id FROM sessions WHERE session_id = ANY($1::text[]) ORDER BY session_id FOR SHARE)
       INSERT INTO idempotency_keys (scope, key, method, request_hash, response, create_time, action_id, claim_expire_time)
       SELECT 's:' || u.session_id, u.key, u.method, decode(u.h, 'base64'), NULL, $7::timestamptz, u.action_id, u.expire
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS u(session_id, key, method, h, action_id, expire)
         JOIN locked l ON l.session_id = u.session_id
       ${IDEMPOTENCY_UPSERT}
       RETURNING scope, key`,
      [
        pending.map((c) => c.sessionId),
        pending.map((c) => c.key),
        pending.map((c) => c.method),
        pending.map((c) => Buffer.from(c.requestHash).toString("base64")),
        pending.map((c) => c.actionId),
        pending.map((c) => new Date(c.expireMs).toISOString()),
        new Date(nowMs).toISOString(),
      ],
    );
    for (const r of rows) claimed.add(`${r.scope}|${r.key}`);
    const others = pending.filter((c) => !claimed.has(`s:${c.sessionId}|${c.key}`));
    for (const [k, hit] of await loadIdempotency(db, others.map((c) => ({ scope: `s:${c.sessionId}`, key: c.key })), nowMs)) held.set(k, hit);
    pending = others.filter((c) => !held.has(`s:${c.sessionId}|${c.key}`));
  }
  return { claimed, held };
}

/** Gives back claims whose calls ended without a record: only a claim still held by that action goes. */
export async function releaseClaims(tx: Queryable, releases: readonly { scope: string; key: string; actionId: string }[]): Promise<void> {
  if (releases.length === 0) return;
  await tx.query(
    `DELETE FROM idempotency_keys i USING unnest($1::text[], $2::text[], $3::text[]) AS u(scope, key, action_id)
      WHERE i.scope = u.scope AND i.key = u.key AND i.action_id = u.action_id AND i.response IS NULL`,
    [releases.map((r) => r.scope), releases.map((r) => r.key), releases.map((r) => r.actionId)],
  );
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
  // One row per key: an upsert may not touch a row twice in one statement.
  const seen = new Set<string>();
  entries = entries.filter((e) => !seen.has(`${e.scope}|${e.key}`) && seen.add(`${e.scope}|${e.key}`) !== undefined);
  const n = params.length;
  params.push(
    entries.map((e) => e.scope),
    entries.map((e) => e.key),
    entries.map((e) => e.method),
    entries.map((e) => Buffer.from(e.requestHash).toString("base64")),
    entries.map((e) => Buffer.from(e.response).toString("base64")),
    new Date(nowMs).toISOString(),
    entries.map((e) => e.actionId ?? null),
  );
  return `INSERT INTO idempotency_keys (scope, key, method, request_hash, response, create_time, action_id)
     SELECT u.scope, u.key, u.method, decode(u.h, 'base64'), decode(u.r, 'base64'), $${n + 6}::timestamptz, u.action_id
       FROM unnest($${n + 1}::text[], $${n + 2}::text[], $${n + 3}::text[], $${n + 4}::text[], $${n + 5}::text[], $${n + 7}::text[])
            AS u(scope, key, method, h, r, action_id)
     ${IDEMPOTENCY_UPSERT}`;
}
