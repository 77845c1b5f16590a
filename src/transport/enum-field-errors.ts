import type { DescMessage } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";

/**
 * protobuf-es's error for an enum value it cannot decode from JSON, e.g.
 * `cannot decode enum warden.v1.SessionStatus from JSON: "BOGUS"`: unlike
 * its other JSON errors, it names the enum type, not the field (2.17).
 */
const ENUM_ERROR = /^cannot decode enum (\S+) from JSON: /;

/**
 * The paths (proto names, e.g. "policy.week_start") of every field of
 * `message`, at any depth, whose values are of the enum `enumTypeName`,
 * singular, repeated or map values alike. A message type already on the
 * path is not entered again (recursive types).
 */
export function enumFieldPaths(message: DescMessage, enumTypeName: string): string[] {
  const out: string[] = [];
  const walk = (m: DescMessage, prefix: string, onPath: ReadonlySet<string>) => {
    for (const f of m.fields) {
      const path = prefix + f.name;
      const kind = f.fieldKind === "list" ? f.listKind : f.fieldKind === "map" ? f.mapKind : f.fieldKind;
      if (kind === "enum" && f.enum?.typeName === enumTypeName) out.push(path);
      const child = kind === "message" ? f.message : undefined;
      if (child !== undefined && !onPath.has(child.typeName)) walk(child, `${path}.`, new Set([...onPath, child.typeName]));
    }
  };
  walk(message, "", new Set([message.typeName]));
  return out;
}

/**
 * `message` with the field it is about in front ("status: cannot decode
 * enum …"; "a or b: …" when several fields of the request have that
 * enum), as every other invalid-argument message names its field;
 * unchanged when it is not protobuf-es's enum error or no field matches.
 */
export function nameEnumField(message: string, input: DescMessage): string {
  const m = ENUM_ERROR.exec(message);
  if (m === null) return message;
  const paths = enumFieldPaths(input, m[1]!);
  return paths.length === 0 ? message : `${paths.join(" or ")}: ${message}`;
}

/**
 * Makes every handler of `router` name the field of an enum value that a
 * Connect JSON request could not decode. Request bodies are decoded before
 * any interceptor runs, so this rewrites the error response itself: a
 * Connect unary error (HTTP 400, a JSON body `{"code", "message"}`),
 * uncompressed (error bodies are a few hundred bytes, below connect's
 * compression threshold); anything else passes untouched.
 */
export function nameEnumFieldsInErrors(router: ConnectRouter): void {
  const handlers = router.handlers;
  for (let i = 0; i < handlers.length; i++) {
    const h = handlers[i]!;
    const wrapped = async (req: Parameters<UniversalHandler>[0]): Promise<UniversalServerResponse> => {
      const res = await h(req);
      if (res.status !== 400 || res.body === undefined || res.header?.get("content-encoding") || !res.header?.get("content-type")?.startsWith("application/json")) {
        return res;
      }
      const chunks: Uint8Array[] = [];
      for await (const c of res.body) chunks.push(c);
      let body = Buffer.concat(chunks);
      try {
        const error = JSON.parse(body.toString("utf8")) as { code?: unknown; message?: unknown };
        if (error.code === "invalid_argument" && typeof error.message === "string") {
          const named = nameEnumField(error.message, h.method.input);
          if (named !== error.message) {
            body = Buffer.from(JSON.stringify({ ...error, message: named }), "utf8");
            res.header.set("content-length", String(body.byteLength));
          }
        }
      } catch {
        // Not the JSON error body expected: sent as it came.
      }
      return { ...res, body: (async function* () { yield body; })() };
    };
    handlers[i] = Object.assign(wrapped, {
      protocolNames: h.protocolNames,
      service: h.service,
      method: h.method,
      requestPath: h.requestPath,
      allowedMethods: h.allowedMethods,
      supportedContentType: h.supportedContentType,
    });
  }
}
