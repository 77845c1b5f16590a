import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Called with what a handler threw when the failure is the server's fault
 * (see {@link isServerFault}), so the caller can log it. The client only ever
 * sees a generic message for those; the cause lives in the log.
 *
 * `procedure` is the gRPC path, e.g. "/warden.v1.PolicyService/Check".
 */
export type HandlerErrorHook = (reason: unknown, procedure: string) => void;

/**
 * The message sent for an error that is not a ConnectError. It is the
 * string @connectrpc/connect-node sends in the same case, so a client sees
 * the same status and message on both stacks.
 */
export const internalErrorMessage = "internal error";

/**
 * Turns whatever a handler threw into the ConnectError the client will see.
 *
 * - A ConnectError is sent as it is: its code and message are deliberate.
 * - If the call's signal has aborted (deadline, client cancel, shutdown),
 *   the handler most likely failed *because* of it (an AbortError from a
 *   downstream call), so the abort reason is reported, via
 *   `ConnectError.from`, rather than an internal error.
 * - Anything else is a bug: INTERNAL with a generic message, so that no
 *   exception text or stack trace leaks to clients. The original value is
 *   kept as `cause` for logging.
 */
export function normalizeError(reason: unknown, signal?: AbortSignal): ConnectError {
  if (reason instanceof ConnectError) return reason;
  if (signal?.aborted === true) return ConnectError.from(signal.reason, Code.Canceled);
  return new ConnectError(internalErrorMessage, Code.Internal, undefined, undefined, reason);
}

/**
 * Whether an error code means the server failed (worth logging and
 * alerting on) rather than the client asked for something it cannot have.
 */
export function isServerFault(code: Code): boolean {
  return code === Code.Internal || code === Code.Unknown || code === Code.DataLoss;
}
