import { pino, type Logger } from "pino";

/** The structured JSON logger every part of the server writes to. */
export type { Logger };

/**
 * A pino logger writing JSON lines to stdout. Credentials never reach a log
 * line: any field that could carry one is redacted by path, so a careless
 * `log.info({ req })` cannot leak a token or a database password.
 */
export function createLogger(level: string = process.env.WARDEN_LOG_LEVEL ?? "info"): Logger {
  return pino({
    level,
    base: { service: "warden" },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: ["databaseUrl", "*.databaseUrl", "authorization", "*.authorization", "token", "*.token", "headers.authorization", "password", "*.password"],
      censor: "[redacted]",
    },
  });
}

/** A URL with its password replaced, for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    return "[unparseable url]";
  }
}
