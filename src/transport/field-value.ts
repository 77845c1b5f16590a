import type { DescField } from "@bufbuild/protobuf";

/**
 * The value a message holds in a field, or undefined: through its oneof
 * when the field is in one (protobuf-es keeps `{ case, value }` under the
 * oneof's name). A plain read, for walkers on the request path where
 * protobuf-es's `reflect()` wrapper per message would cost more than the
 * walk.
 */
export function fieldValue(message: Record<string, unknown>, field: DescField): unknown {
  if (field.oneof === undefined) return message[field.localName];
  const o = message[field.oneof.localName] as { case?: string; value?: unknown } | undefined;
  return o?.case === field.localName ? o.value : undefined;
}
