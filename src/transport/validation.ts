import type { DescMessage, DescService, Message } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { createValidator, type Validator, type Violation, violationsToProto } from "@bufbuild/protovalidate";
import { withFastPath } from "./fast-path-validator.js";
import { firstMalformed } from "./well-formed.js";

/** Options of {@link withValidation}. */
export interface ValidationOptions {
  /** The validator to use; one shared validator by default. */
  readonly validator?: Validator;
}

/**
 * Wraps every method of a service implementation so that each request
 * message is checked against its `buf.validate` rules before the handler
 * runs. The rules live in the protos; this is where they are enforced.
 *
 * Because the wrapper is itself a `ServiceImpl`, mounting it on the grpc-js
 * stack and on a ConnectRouter gives both the same validation, with the
 * same error: INVALID_ARGUMENT, a message naming each field path and rule
 * (e.g. `invalid request: action.amount: amount_micros must be greater
 * than zero`), and the violations as a `buf.validate.Violations` detail.
 *
 * Then every string must be free of NUL characters and every time within
 * protobuf's range (see well-formed.ts), with the same error.
 *
 * Streaming requests are validated message by message as the handler reads
 * them. Methods missing from `impl` stay missing (UNIMPLEMENTED).
 */
export function withValidation<S extends DescService>(
  service: S,
  impl: Partial<ServiceImpl<S>>,
  options: ValidationOptions = {},
): Partial<ServiceImpl<S>> {
  const validator = options.validator ?? sharedValidator();
  const source = impl as Record<string, AnyImpl | undefined>;
  const wrapped: Record<string, AnyImpl> = {};
  for (const method of service.methods) {
    const fn = source[method.localName];
    if (typeof fn !== "function") continue;
    const input = method.input;
    switch (method.methodKind) {
      case "unary":
        wrapped[method.localName] = async (req, ctx) => {
          assertValid(validator, input, req as Message);
          return fn.call(impl, req, ctx);
        };
        break;
      case "server_streaming":
        wrapped[method.localName] = async function* (req, ctx) {
          assertValid(validator, input, req as Message);
          yield* fn.call(impl, req, ctx) as AsyncIterable<unknown>;
        };
        break;
      case "client_streaming":
      case "bidi_streaming":
        wrapped[method.localName] = (reqs, ctx) => fn.call(impl, validateEach(validator, input, reqs as AsyncIterable<Message>), ctx);
        break;
    }
  }
  return wrapped as Partial<ServiceImpl<S>>;
}

/**
 * Formats violations as one line that says what to fix:
 * `field.path: rule message` for each, joined by "; ".
 */
export function formatViolations(violations: readonly Violation[]): string {
  return violations
    .map((v) => {
      const path = pathToString(v.field);
      return path === "" ? v.message : `${path}: ${v.message}`;
    })
    .join("; ");
}

type AnyImpl = (input: unknown, ctx: HandlerContext) => unknown;

let validator: Validator | undefined;

/**
 * Created on first use and shared: the validator caches compiled rules per
 * message type. Valid requests are told so by the fast path (see
 * fast-path-validator.ts); the rest get protovalidate's full answer.
 */
function sharedValidator(): Validator {
  return (validator ??= withFastPath(createValidator({ regexMatch: nativeRegexMatch }), nativeRegexMatch));
}

const compiled = new Map<string, RegExp>();

/**
 * `string.pattern` rules matched with the platform's RegExp, compiled once
 * per pattern, instead of protovalidate's portable RE2 engine, which was
 * a tenth of a sidecar decision. Sound for Warden's own patterns: they are
 * plain anchored character classes that mean the same in both dialects and
 * cannot backtrack badly. A pattern JavaScript cannot compile fails loudly
 * here (and in the tests) instead of being matched differently.
 */
export function nativeRegexMatch(pattern: string, against: string): boolean {
  let re = compiled.get(pattern);
  if (re === undefined) {
    re = new RegExp(pattern, "u");
    compiled.set(pattern, re);
  }
  return re.test(against);
}

function assertValid(validator: Validator, schema: DescMessage, message: Message): void {
  const result = validator.validate(schema, message);
  switch (result.kind) {
    case "valid": {
      const malformed = firstMalformed(schema, message);
      if (malformed !== undefined) throw new ConnectError(`invalid request: ${malformed}`, Code.InvalidArgument);
      return;
    }
    case "invalid": {
      const [proto, desc] = violationsToProto(result.violations);
      throw new ConnectError(`invalid request: ${formatViolations(result.violations)}`, Code.InvalidArgument, undefined, [{ desc, value: proto }]);
    }
    case "error":
      // A rule that does not compile or evaluate is our bug, not the
      // client's: INTERNAL, with the cause kept for the log.
      throw new ConnectError("request validation failed", Code.Internal, undefined, undefined, result.error);
  }
}

async function* validateEach(validator: Validator, schema: DescMessage, requests: AsyncIterable<Message>): AsyncIterable<Message> {
  for await (const req of requests) {
    assertValid(validator, schema, req);
    yield req;
  }
}
