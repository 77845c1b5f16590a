import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { hashRequest } from "../store/idempotency.js";
import type { KeyedCall } from "../store/warden-store.js";

/**
 * SHA-256 of a request, to tell an idempotent retry (same key, same request)
 * from a reuse of the key for another request. Binary encoding is stable for
 * one message, but map entries follow insertion order, so two clients that
 * send the same labels in another order must still match: the request's
 * own `idempotency_key` is left out and maps are hashed with sorted keys.
 * (Only the request's own: the keys an ImportSession snapshot carries are
 * part of what it asks.)
 */
export function requestHash<D extends DescMessage>(schema: D, req: MessageShape<D>): Uint8Array {
  return hashRequest(toBinary(schema, canonical(req, true) as MessageShape<D>));
}

/** A request's idempotency key and hash, as the store's keyed calls take them. */
export function keyedCall<D extends DescMessage>(schema: D, req: MessageShape<D> & { idempotencyKey: string }): KeyedCall {
  return { idempotencyKey: req.idempotencyKey, requestHash: requestHash(schema, req) };
}

function canonical(value: unknown, top = false): unknown {
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map((v) => canonical(v));
  const isMessage = "$typeName" in value;
  // A map's keys are data: one named "__proto__" must be a key, not the prototype.
  const out: Record<string, unknown> = isMessage ? {} : Object.create(null);
  const keys = Object.keys(value);
  for (const k of isMessage ? keys : keys.sort()) {
    if (top && k === "idempotencyKey") continue;
    out[k] = canonical((value as Record<string, unknown>)[k]);
  }
  return out;
}
