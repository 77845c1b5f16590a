/**
 * Query parameters whose value is a credential: libpq's and node-postgres's
 * `password`, `sslpassword` and `sslkey`, and, in any URL (a webhook
 * receiver's, say), anything named like a password, token, secret or key.
 */
const SECRET_PARAM = /pass|pwd|token|secret|key|auth|credential|signature|^sig$/i;

/**
 * A URL with its password, and every query parameter that may hold a
 * credential, replaced, for logs and for showing back; one with nothing to
 * hide exactly as written (re-serializing would change its spelling).
 */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    let hidden = false;
    if (u.password !== "") {
      u.password = "***";
      hidden = true;
    } else if (u.username !== "" && (u.protocol === "https:" || u.protocol === "http:")) {
      // An http(s) user name alone is a credential too: a token sent as
      // Basic auth with no password, as many receivers take API keys.
      u.username = "***";
      hidden = true;
    }
    const params = [...u.searchParams];
    if (params.some(([name]) => SECRET_PARAM.test(name))) {
      u.search = new URLSearchParams(params.map(([name, value]): [string, string] => [name, SECRET_PARAM.test(name) ? "***" : value])).toString();
      hidden = true;
    }
    return hidden ? u.toString() : url;
  } catch {
    return "[unparseable url]";
  }
}
