import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { hashRequest } from "../store/idempotency.js";
import type { KeyedCall } from "../store/warden-store.js";

/**
 * SHA-256 of a request, to tell an idempotent retry (same key, same request)
 * from a reuse of the key for another request. Binary encoding is stable for
 * one message, but map entries follow insertion order, so two clients that
 * send the same labels in another order must still match: fields named
 * `idempotency_key` are left out and maps are hashed with sorted keys.
 */
export function requestHash<D extends DescMessage>(schema: D, req: MessageShape<D>): Uint8Array {
  return hashRequest(toBinary(schema, canonical(req) as MessageShape<D>));
}

/** A request's idempotency key and hash, as the store's keyed calls take them. */
export function keyedCall<D extends DescMessage>(schema: D, req: MessageShape<D> & { idempotencyKey: string }): KeyedCall {
  return { idempotencyKey: req.idempotencyKey, requestHash: requestHash(schema, req) };
}

function canonical(value: unknown): unknown {
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map(canonical);
  const out: Record<string, unknown> = {};
  const isMessage = "$typeName" in value;
  const keys = Object.keys(value);
  for (const k of isMessage ? keys : keys.sort()) {
    if (k === "idempotencyKey") continue;
    out[k] = canonical((value as Record<string, unknown>)[k]);
  }
  return out;
}
