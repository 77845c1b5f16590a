import { type DestinationStream, pino, type Logger } from "pino";

/** The structured JSON logger every part of the server writes to. */
export type { Logger };

/** Fields that may carry a credential, at the top level and one level down. */
const SECRET_FIELDS = ["databaseUrl", "authorization", "token", "sessionToken", "secret", "apiKey", "password", "privateJwk", "privateKey"];

const REDACTED_PATHS = [...SECRET_FIELDS, ...SECRET_FIELDS.map((f) => `*.${f}`), "headers.authorization", "*.headers.authorization"];

/**
 * A pino logger writing JSON lines to stdout. Credentials never reach a log
 * line: any field that could carry one is redacted by path, so a careless
 * `log.info({ req })` cannot leak a token or a database password.
 * `destination` is stdout by default (tests capture lines with their own).
 */
export function createLogger(level: string = process.env.WARDEN_LOG_LEVEL ?? "info", destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "warden" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
    },
    destination,
  );
}
