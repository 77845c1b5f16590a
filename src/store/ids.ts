import { randomBytes } from "node:crypto";

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32, lower case

/**
 * A new id: `prefix_` and 26 base32 characters, the first ten of which
 * encode the time in ms, so ids sort roughly by creation (like a ULID) and
 * index well, and the remaining 80 bits are random.
 */
export function newId(prefix: string, nowMs: number): string {
  let out = "";
  let t = nowMs;
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[t % 32]! + out;
    t = Math.floor(t / 32);
  }
  const rnd = randomBytes(10);
  let acc = 0n;
  for (const b of rnd) acc = (acc << 8n) | BigInt(b);
  for (let i = 0; i < 16; i++) {
    out += ALPHABET[Number(acc & 31n)]!;
    acc >>= 5n;
  }
  return `${prefix}_${out}`;
}
