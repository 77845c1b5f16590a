import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Database } from "../store/database.js";
import { newId } from "../store/ids.js";
import { pageToken, readPageToken } from "../store/page-token.js";
import { isRole, type Principal, type Role } from "./principal.js";

/** Every API key starts with this, so secret scanners and people can tell one. */
export const API_KEY_PREFIX = "wdn_";

// "wdn_" + "key_" and 26 base32 characters + "_" + 43 base64url characters
// (256 bits). Fixed lengths make the split exact although base64url may
// contain "_".
const KEY_PATTERN = /^wdn_(key_[0-9a-z]{26})_([A-Za-z0-9_-]{43})$/;

/** How often a key's last_used_time is written, at most, per process. */
const LAST_USED_RESOLUTION_MS = 60_000;

const DEFAULT_PAGE = 50;

/**
 * How long a key that authenticated is believed without reading it again.
 * Sidecars call the control plane with their key on every report, lease
 * and claim, and in exact mode on every decision: without this, each call
 * cost a read. A key revoked elsewhere (another replica, `warden keys
 * revoke`) stops working within this long; revoked through this process,
 * at once.
 */
export const AUTHENTICATED_KEY_TTL_MS = 1000;
/** Keys remembered at once; there are few, so this only bounds a flood of valid keys. */
const AUTHENTICATED_KEYS_MAX = 10_000;

/** An API key's metadata, as stored (never its secret). */
export interface ApiKeyRecord {
  readonly keyId: string;
  readonly role: Role;
  /** The agent an `agent` key is bound to. */
  readonly agentId: string | undefined;
  readonly description: string;
  /** Epoch ms. */
  readonly createTime: number;
  readonly revokeTime: number | undefined;
  readonly lastUsedTime: number | undefined;
}

/** What {@link ApiKeys.create} needs. */
export interface NewApiKey {
  readonly role: Role;
  /** Required for `agent`, refused for every other role. */
  readonly agentId?: string | undefined;
  readonly description?: string | undefined;
}

/** A created key: its metadata, and the whole key, which is never shown again. */
export interface CreatedApiKey {
  readonly key: ApiKeyRecord;
  /** `wdn_<key_id>_<secret>`, for `authorization: Bearer …`. */
  readonly secret: string;
}

/** API keys on the store. */
export interface ApiKeys {
  /** Issues a key. Only a SHA-256 of its secret is stored. */
  create(input: NewApiKey): Promise<CreatedApiKey>;
  /**
   * The principal of a whole key (`wdn_…`), or UNAUTHENTICATED when it is
   * malformed, unknown or revoked. The error never repeats the key.
   */
  authenticate(key: string): Promise<Principal>;
  /** One page of keys, newest first. */
  list(options?: { pageSize?: number; pageToken?: string; showRevoked?: boolean }): Promise<{ keys: ApiKeyRecord[]; nextPageToken: string }>;
  /** Revokes a key (NOT_FOUND if unknown). Revoking twice keeps the first revoke time. */
  revoke(keyId: string): Promise<ApiKeyRecord>;
}

/** Options of {@link createApiKeys}. */
export interface ApiKeysOptions {
  readonly db: Database;
  /** Epoch ms; the wall clock by default. */
  readonly now?: () => number;
}

/** Splits a whole key into its id and secret; undefined if it is not shaped like one. */
export function parseApiKey(key: string): { keyId: string; secret: string } | undefined {
  const m = KEY_PATTERN.exec(key);
  return m === null ? undefined : { keyId: m[1]!, secret: m[2]! };
}

interface ApiKeyRow {
  key_id: string;
  secret_sha256: Uint8Array;
  role: string;
  agent_id: string | null;
  description: string;
  create_time: Date;
  revoke_time: Date | null;
  last_used_time: Date | null;
}

const COLUMNS = "key_id, role, agent_id, description, create_time, revoke_time, last_used_time";

function recordOf(r: Omit<ApiKeyRow, "secret_sha256">): ApiKeyRecord {
  if (!isRole(r.role)) throw new ConnectError(`api key ${r.key_id} has an unknown role`, Code.Internal);
  return {
    keyId: r.key_id,
    role: r.role,
    agentId: r.agent_id ?? undefined,
    description: r.description,
    createTime: r.create_time.getTime(),
    revokeTime: r.revoke_time?.getTime(),
    lastUsedTime: r.last_used_time?.getTime(),
  };
}

const sha256 = (text: string) => createHash("sha256").update(text).digest();
const iso = (ms: number) => new Date(ms).toISOString();

/** The one answer to every bad key, so the answer says nothing about which check failed. */
const invalidKey = () => new ConnectError("invalid API key", Code.Unauthenticated);

/**
 * API keys stored hashed in `api_keys`. Secrets are 256 random bits, so
 * SHA-256 is the right hash (a slow password hash protects guessable
 * secrets; these are not guessable) and authentication costs one indexed
 * read. Hashes are compared in constant time.
 */
export function createApiKeys(options: ApiKeysOptions): ApiKeys {
  const { db } = options;
  const now = options.now ?? Date.now;
  // keyId → when this process last wrote last_used_time. Bounded by the
  // number of keys, which is small.
  const lastWritten = new Map<string, number>();

  // `keyId:sha256(secret)` → the principal and until when it is believed.
  // Only what a read just confirmed goes in; failures are always read.
  const authenticated = new Map<string, { principal: Principal; untilMs: number }>();
  /** Revocations made through this instance so far (see authenticate). */
  let revocations = 0;

  function touch(keyId: string, t: number): void {
    const last = lastWritten.get(keyId);
    if (last !== undefined && t - last < LAST_USED_RESOLUTION_MS) return;
    lastWritten.set(keyId, t);
    // Bookkeeping, not a decision: never delays or fails the call.
    db.query("UPDATE api_keys SET last_used_time = $2 WHERE key_id = $1", [keyId, iso(t)]).catch(() => lastWritten.delete(keyId));
  }

  return {
    async create(input) {
      if ((input.role === "agent") !== (input.agentId !== undefined && input.agentId !== "")) {
        throw new ConnectError("agent_id is required for an agent key and only allowed for it", Code.InvalidArgument);
      }
      const t = now();
      const keyId = newId("key", t);
      const secretPart = randomBytes(32).toString("base64url");
      const { rows } = await db.query<ApiKeyRow>(
        `INSERT INTO api_keys (key_id, secret_sha256, role, agent_id, description, create_time)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${COLUMNS}`,
        [keyId, sha256(secretPart), input.role, input.agentId || null, input.description ?? "", iso(t)],
      );
      return { key: recordOf(rows[0]!), secret: `${API_KEY_PREFIX}${keyId}_${secretPart}` };
    },

    async authenticate(key) {
      const parsed = parseApiKey(key);
      if (parsed === undefined) throw invalidKey();
      const presented = sha256(parsed.secret);
      const memoKey = `${parsed.keyId}:${presented.toString("base64")}`;
      const t = now();
      const memo = authenticated.get(memoKey);
      if (memo !== undefined && t < memo.untilMs) {
        touch(parsed.keyId, t);
        return memo.principal;
      }
      authenticated.delete(memoKey);
      const seen = revocations;
      const { rows } = await db.query<ApiKeyRow>(
        "SELECT key_id, secret_sha256, role, agent_id, revoke_time FROM api_keys WHERE key_id = $1",
        [parsed.keyId],
      );
      const row = rows[0];
      // Hash the presented secret even when the id is unknown, so timing
      // does not tell which ids exist.
      const stored = row === undefined ? Buffer.alloc(32) : Buffer.from(row.secret_sha256);
      const matches = stored.length === presented.length && timingSafeEqual(stored, presented);
      if (row === undefined || !matches || row.revoke_time !== null || !isRole(row.role)) throw invalidKey();
      touch(row.key_id, t);
      const principal: Principal = { keyId: row.key_id, role: row.role, agentId: row.agent_id ?? undefined, via: "api-key" };
      if (authenticated.size >= AUTHENTICATED_KEYS_MAX) authenticated.clear();
      // A revocation here while the row was being read may have read
      // before it: believe this answer once, not for the memo's second.
      if (revocations === seen) authenticated.set(memoKey, { principal, untilMs: t + AUTHENTICATED_KEY_TTL_MS });
      return principal;
    },

    async list(o = {}) {
      const size = o.pageSize === undefined || o.pageSize === 0 ? DEFAULT_PAGE : o.pageSize;
      const query = { show_revoked: o.showRevoked === true };
      const after = readPageToken(o.pageToken ?? "", { t: "number", id: "string" }, query);
      const where: string[] = [];
      const params: unknown[] = [];
      if (o.showRevoked !== true) where.push("revoke_time IS NULL");
      if (after !== undefined) {
        params.push(iso(after.t), after.id);
        where.push("(create_time, key_id) < ($1::timestamptz, $2)");
      }
      const { rows } = await db.query<ApiKeyRow>(
        `SELECT ${COLUMNS} FROM api_keys ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
          ORDER BY create_time DESC, key_id DESC LIMIT ${size + 1}`,
        params,
      );
      const page = rows.slice(0, size).map(recordOf);
      const last = page.at(-1);
      const more = rows.length > size && last !== undefined;
      return { keys: page, nextPageToken: more ? pageToken({ t: last.createTime, id: last.keyId }, query) : "" };
    },

    async revoke(keyId) {
      const { rows } = await db.query<ApiKeyRow>(
        `UPDATE api_keys SET revoke_time = COALESCE(revoke_time, $2) WHERE key_id = $1 RETURNING ${COLUMNS}`,
        [keyId, iso(now())],
      );
      if (rows[0] === undefined) throw new ConnectError(`key_id: API key "${keyId}" not found`, Code.NotFound);
      revocations++;
      for (const k of authenticated.keys()) if (k.startsWith(`${keyId}:`)) authenticated.delete(k);
      return recordOf(rows[0]);
    },
  };
}
