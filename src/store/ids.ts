import { randomFillSync } from "node:crypto";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32, lower case

// Random bytes are drawn 4 KiB at a time: one system call per ~400 ids
// instead of one per id, which showed up as 6% of a sidecar decision.
const pool = Buffer.allocUnsafe(4096);
let poolAt = pool.length;

/** The next 5 random bytes as a number below 2^40 (exact in a double). */
function random40(): number {
  if (poolAt + 5 > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const n = pool.readUIntBE(poolAt, 5);
  poolAt += 5;
  return n;
}

/** Appends `count` base32 digits of `n` (least significant last). */
function base32(n: number, count: number): string {
  let out = "";
  for (let i = 0; i < count; i++) {
    out = ALPHABET[n % 32]! + out;
    n = Math.floor(n / 32);
  }
  return out;
}

/**
 * A new id: `prefix_` and 26 base32 characters, the first ten of which
 * encode the time in ms, so ids sort roughly by creation (like a ULID) and
 * index well, and the remaining 80 bits are random.
 */
export function newId(prefix: string, nowMs: number): string {
  return `${prefix}_${base32(nowMs, 10)}${base32(random40(), 8)}${base32(random40(), 8)}`;
}

/**
 * The creation time (ms) encoded in an id from {@link newId}, or undefined
 * when `id` is not one (a client-chosen session id, say).
 */
export function idTimeMs(id: string): number | undefined {
  const at = id.indexOf("_");
  if (at < 0 || id.length !== at + 27) return undefined;
  let ms = 0;
  for (let i = at + 1; i < at + 11; i++) {
    const digit = ALPHABET.indexOf(id[i]!);
    if (digit < 0) return undefined;
    ms = ms * 32 + digit;
  }
  return ms;
}
