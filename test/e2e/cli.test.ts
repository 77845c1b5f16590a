import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { runWardenCli, type ServerProcess, startWardenCli, startServerProcess, tempDataDir } from "../helpers/server-process.js";

/** Runs the real CLI against the real server, as a user would. */
const warden = (server: ServerProcess, ...args: string[]) => runWardenCli(server.httpUrl, ...args);

describe("warden CLI against warden serve", () => {
  let server: ServerProcess;
  let dir: string;
  before(async () => {
    dir = tempDataDir();
    server = await startServerProcess({ dataDir: dir });
  });
  after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("create a session with limits, spend, and watch every limit hold", async () => {
    const created = await warden(server, "sessions", "create", "--agent", "cli-agent", "--currency", "USD", "--ttl", "1h", "--max-per-transaction", "50", "--max-per-day", "60", "--allow-merchant", "acme", "--json");
    assert.equal(created.code, 0, created.stderr);
    const id = (JSON.parse(created.stdout) as { session: { sessionId: string } }).session.sessionId;

    const ok = await warden(server, "check", id, "--amount", "12.50", "--merchant", "acme");
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /ALLOW/);

    // Over the per-transaction limit, at a merchant not allowed: both reasons, exit 2.
    const denied = await warden(server, "check", id, "--amount", "55", "--merchant", "evil");
    assert.equal(denied.code, 2, denied.stderr);
    assert.match(denied.stdout, /DENY/);
    assert.match(denied.stdout, /LIMIT_PER_TRANSACTION/);
    assert.match(denied.stdout, /MERCHANT_NOT_ALLOWED/);

    const auth = await warden(server, "authorize", id, "--amount", "40", "--merchant", "acme", "--json");
    assert.equal(auth.code, 0, auth.stderr);
    const authId = (JSON.parse(auth.stdout) as { authorizationId: string }).authorizationId;
    // 12.50 committed + 40 held: 10 more would pass the 60 daily limit.
    assert.equal((await warden(server, "check", id, "--amount", "10", "--merchant", "acme")).code, 2);
    const cap = await warden(server, "capture", id, authId, "--amount", "30");
    assert.equal(cap.code, 0, cap.stderr);
    const again = await warden(server, "capture", id, authId);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^warden: .*already captured/m);

    const got = await warden(server, "sessions", "get", id);
    assert.equal(got.code, 0, got.stderr);
    assert.match(got.stdout, /42\.50 USD/);

    const out = join(mkdtempSync(join(tmpdir(), "warden-cli-")), "snap.json");
    assert.equal((await warden(server, "sessions", "export", id, "--out", out)).code, 0);
    const snap = JSON.parse(readFileSync(out, "utf8")) as { formatVersion: number; actions: unknown[] };
    assert.equal(snap.formatVersion, 1);
    // check (allowed), check (denied), authorize, check (denied); a capture is not a new action
    assert.equal(snap.actions.length, 4);

    const revoked = await warden(server, "sessions", "revoke", id, "--reason", "done");
    assert.equal(revoked.code, 0, revoked.stderr);
    const after = await warden(server, "check", id, "--amount", "1", "--currency", "USD", "--merchant", "acme");
    assert.equal(after.code, 1);
    assert.match(after.stderr, /^warden: failed_precondition: .*REVOKED/m);
  });

  test("approvals: authorize needs approval, watch waits, approve a lower amount, capture; deny and cancel", async () => {
    const created = await warden(server, "sessions", "create", "--agent", "cli-approver", "--currency", "USD", "--ttl", "1h", "--approval-above", "100", "--approval-ttl", "10m", "--approval-timeout", "deny", "--max-per-day", "1000", "--json");
    assert.equal(created.code, 0, created.stderr);
    const id = (JSON.parse(created.stdout) as { session: { sessionId: string } }).session.sessionId;

    const asked = await warden(server, "authorize", id, "--amount", "250", "--merchant", "acme");
    assert.equal(asked.code, 2, "NEEDS_APPROVAL is not an ALLOW");
    assert.match(asked.stdout, /NEEDS_APPROVAL/);
    const approvalId = /approval\s+(apr_[a-z0-9]{26})/.exec(asked.stdout)?.[1];
    assert.ok(approvalId, asked.stdout);

    const listed = await warden(server, "approvals", "list", "--agent", "cli-approver", "--status", "pending");
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`${approvalId}\\s+pending\\s+250\\.00 USD`));

    // Approve only once the watch has shown the pending state, however slow its start.
    const watch = startWardenCli(server.httpUrl, "approvals", "watch", approvalId);
    await watch.printed(/status\s+pending/);
    const approved = await warden(server, "approvals", "approve", approvalId, "--amount", "200", "--comment", "cap it", "--json");
    assert.equal(approved.code, 0, approved.stderr);
    const approval = (JSON.parse(approved.stdout) as { approval: { status: string; actionId: string; approvedAmount: { amountMicros: string } } }).approval;
    assert.equal(approval.status, "APPROVAL_STATUS_APPROVED");
    assert.equal(approval.approvedAmount.amountMicros, "200000000");
    const watched = await watch.done;
    assert.equal(watched.code, 0, watched.stderr);
    assert.match(watched.stdout, /status\s+pending[\s\S]*status\s+approved/);

    const cap = await warden(server, "capture", id, approval.actionId);
    assert.equal(cap.code, 0, cap.stderr);
    assert.match(cap.stdout, /200\.00 USD/);

    const second = await warden(server, "check", id, "--amount", "300", "--json");
    const secondId = (JSON.parse(second.stdout) as { approvalId: string }).approvalId;
    const denied = await warden(server, "approvals", "deny", secondId, "--reason", "too much");
    assert.equal(denied.code, 0, denied.stderr);
    assert.match(denied.stdout, /status\s+denied/);
    assert.match(denied.stdout, /comment\s+too much/);
    const watchDenied = await warden(server, "approvals", "watch", secondId);
    assert.equal(watchDenied.code, 2, "a watch that ends denied exits 2");

    const third = await warden(server, "check", id, "--amount", "150", "--json");
    const thirdId = (JSON.parse(third.stdout) as { approvalId: string }).approvalId;
    const canceled = await warden(server, "approvals", "cancel", thirdId, "--session", id, "--reason", "not needed");
    assert.match(canceled.stdout, /status\s+canceled/);
    const again = await warden(server, "approvals", "approve", thirdId);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already CANCELED/);
    const bad = await warden(server, "approvals", "list", "--status", "maybe");
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--status: "maybe" is not one of pending, approved, denied, expired, canceled/);
  });

  test("bad input fails with one clear line and a non-zero exit", async () => {
    const r = await warden(server, "sessions", "create", "--agent", "a", "--max-per-day", "abc");
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.match(r.stderr, /--max-per-day/);
    const missing = await warden(server, "sessions", "get", "no-such-session");
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not_found/);
  });

  test("the server address is used as parsed (a trailing space is dropped); one with a query string is refused naming its source", async () => {
    const spaced = await runWardenCli(`${server.httpUrl} `, "sessions", "get", "no-such-session");
    assert.equal(spaced.code, 1, spaced.stderr);
    assert.equal(spaced.stderr.trim().split("\n").length, 1, spaced.stderr);
    assert.match(spaced.stderr, /^warden: not_found: /, "the call reached the server");
    const query = await warden(server, "sessions", "get", "no-such-session", "--server", `${server.httpUrl}?region=eu`);
    assert.equal(query.code, 1, query.stderr);
    assert.equal(query.stderr.trim().split("\n").length, 1, query.stderr);
    assert.match(query.stderr, /^warden: --server: ".*\?…" must not have a query string or fragment/);
    const fragment = await runWardenCli(`${server.httpUrl}/#eu`, "sessions", "get", "no-such-session");
    assert.match(fragment.stderr, /^warden: WARDEN_SERVER: .* must not have a query string or fragment/);
  });
});
