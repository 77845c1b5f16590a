import { closeSync, existsSync, openSync, readFileSync, writeSync } from "node:fs";
import { toJson, toJsonString } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { loadOrCreateAuditKey } from "../../audit/audit-key.js";
import { type AuditPublicKey, type AuditVerification, type StoredAuditCheckpoint, type StoredAuditRecord, verifyAuditLog } from "../../audit/verify-audit-log.js";
import {
  type AuditCheckpoint,
  type AuditRecord,
  AuditRecordSchema,
  type AuditService,
  GetAuditPublicKeysResponseSchema,
  ListAuditRecordsResponseSchema,
} from "../../gen/warden/v1/audit_service_pb.js";
import { CliError } from "../cli-error.js";
import { CLIENT_FLAGS, EXIT_OK, SERVER_FLAG, API_KEY_FLAG, type CommandSpec } from "../command.js";
import { pageFlags, pageOf, withNextPage } from "../page-flags.js";
import { parseTimestamp } from "../flags.js";
import { formatTable, formatTime } from "../format.js";
import type { ParsedFlags } from "../parse-command-line.js";

/** The filter fields of a ListAuditRecordsRequest. */
interface Filters {
  readonly sessionId: string;
  readonly agentId: string;
  readonly startTime?: Timestamp | undefined;
  readonly endTime?: Timestamp | undefined;
}

/** Filters shared by `audit list` and `audit export`. */
const FILTER_FLAGS = [
  { name: "session", type: "string", value: "ID", description: "only this session's records" },
  { name: "agent", type: "string", value: "ID", description: "only this agent's records (its sessions' and its policy changes)" },
  { name: "since", type: "string", value: "TIME", description: "only records at or after this RFC 3339 time" },
  { name: "until", type: "string", value: "TIME", description: "only records before this RFC 3339 time" },
] as const;

/** The ListAuditRecordsRequest of the filter flags. */
export function buildListAuditRecordsRequest(flags: ParsedFlags): Filters {
  const since = flags.string("since");
  const until = flags.string("until");
  return {
    sessionId: flags.string("session") ?? "",
    agentId: flags.string("agent") ?? "",
    startTime: since === undefined ? undefined : parseTimestamp("--since", since),
    endTime: until === undefined ? undefined : parseTimestamp("--until", until),
  };
}

/** Every page of records, in log order (1000 a call). */
async function* allRecords(client: Client<typeof AuditService>, req: Filters): AsyncGenerator<AuditRecord> {
  let pageToken = "";
  do {
    const res = await client.listAuditRecords({ ...req, pageSize: 1000, pageToken });
    yield* res.records;
    pageToken = res.nextPageToken;
  } while (pageToken !== "");
}

async function allCheckpoints(client: Client<typeof AuditService>): Promise<AuditCheckpoint[]> {
  const out: AuditCheckpoint[] = [];
  let pageToken = "";
  do {
    const res = await client.listAuditCheckpoints({ pageSize: 1000, pageToken });
    out.push(...res.checkpoints);
    pageToken = res.nextPageToken;
  } while (pageToken !== "");
  return out;
}

/** A record as the verifier reads it. */
function stored(r: AuditRecord): StoredAuditRecord {
  return {
    seq: r.seq,
    chainId: r.chainId,
    chainSeq: r.chainSeq,
    type: r.type,
    time: r.createTime === undefined ? "" : timestampDate(r.createTime).toISOString(),
    sessionId: r.sessionId,
    agentId: r.agentId,
    body: r.body,
    prevHash: r.prevHash,
    hash: r.hash,
  };
}

/** The keys of a pinned file: one public JWK, or a JWK Set (`warden audit public-key` prints one). */
export function readPinnedKeys(file: string): AuditPublicKey[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new CliError(`--public-key: cannot read ${file}: ${(err as Error).message}`);
  }
  const keys = (Array.isArray((parsed as { keys?: unknown }).keys) ? (parsed as { keys: unknown[] }).keys : [parsed]) as AuditPublicKey[];
  for (const k of keys) {
    if (k.kty !== "OKP" || k.crv !== "Ed25519" || typeof k.x !== "string" || typeof k.kid !== "string") {
      throw new CliError(`--public-key: ${file} holds something other than Ed25519 public JWKs with a kid`);
    }
    if ("d" in k) throw new CliError(`--public-key: ${file} holds a private key; pin the public one (warden audit public-key)`);
  }
  return keys;
}

/** The one-line summary of an intact log. */
export function formatVerification(v: AuditVerification): string {
  const unsigned = v.unsigned === 0 ? "every record is signed" : `${v.unsigned} newest record${v.unsigned === 1 ? "" : "s"} not yet covered by a checkpoint`;
  return `audit log intact: ${v.records} records in ${v.chains} chains, ${v.checkpoints} signed checkpoints, ${v.prunedChains} chains removed by retention; ${unsigned}`;
}

/** The `warden audit …` commands. */
export const AUDIT_COMMANDS: readonly CommandSpec[] = [
  {
    name: "audit verify",
    args: [],
    summary: "recompute every chain and checkpoint; name the first record modified, deleted, inserted or reordered (auditor key)",
    notes:
      "Exits 0 and prints a summary when the log is intact; exits 1 with one line naming the first problem otherwise.\nPin the checkpoint key with --public-key (from warden audit public-key, kept where the server's database cannot reach): without it the server's own key list is trusted, and whoever can rewrite the log can change that too.",
    flags: [{ name: "public-key", type: "string", value: "FILE", description: "trust only these public keys (a JWK or JWK Set); default: the server's list, with a warning" }, ...CLIENT_FLAGS],
    async run(ctx) {
      const client = ctx.clients().audit;
      const pinned = ctx.flags.string("public-key");
      const keys = pinned !== undefined ? readPinnedKeys(pinned) : ((toJson(GetAuditPublicKeysResponseSchema, await client.getAuditPublicKeys({})) as { keys?: AuditPublicKey[] }).keys ?? []);
      if (pinned === undefined) ctx.warn("the checkpoint key is not pinned (--public-key): trusting the server's key list");
      let v: AuditVerification;
      for (let attempt = 1; ; attempt++) {
        // Checkpoints first: records written meanwhile are then only newer
        // than the last checkpoint read, never missing from it.
        const checkpoints: StoredAuditCheckpoint[] = await allCheckpoints(client);
        const records: StoredAuditRecord[] = [];
        for await (const r of allRecords(client, { sessionId: "", agentId: "" })) records.push(stored(r));
        // A record whose transaction committed late comes on a later page
        // than its seq (ListAuditRecords): back into log order.
        records.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
        v = verifyAuditLog(records, checkpoints, keys);
        // Read it all again before saying so (a real problem stays): a
        // checkpoint that pruned while the records were read makes them
        // look deleted, and so does a record whose transaction committed
        // after the last page was read, while a later one had been listed.
        if (v.ok || attempt === 3) break;
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
      if (ctx.flags.boolean("json")) {
        ctx.print(JSON.stringify(v, (_, x: unknown) => (typeof x === "bigint" ? x.toString() : x), 2));
      }
      if (!v.ok) throw new CliError(`audit log not intact: ${v.problem!.kind}: ${v.problem!.reason}`);
      if (!ctx.flags.boolean("json")) ctx.print(formatVerification(v));
      return EXIT_OK;
    },
  },
  {
    name: "audit export",
    args: [],
    summary: "write audit records as JSON Lines (one proto3 JSON record a line, in log order)",
    flags: [
      ...FILTER_FLAGS,
      { name: "out", type: "string", value: "FILE", description: "write to FILE (created, not overwritten) instead of stdout" },
      SERVER_FLAG,
      API_KEY_FLAG,
    ],
    async run(ctx) {
      const req = buildListAuditRecordsRequest(ctx.flags);
      const out = ctx.flags.string("out");
      if (out !== undefined && existsSync(out)) throw new CliError(`--out: ${out} exists; choose a new file`);
      const fd = out === undefined ? undefined : openSync(out, "wx");
      let n = 0;
      try {
        // Page by page: an export of any size runs in constant memory.
        for await (const r of allRecords(ctx.clients().audit, req)) {
          const line = toJsonString(AuditRecordSchema, r);
          if (fd === undefined) ctx.print(line);
          else writeSync(fd, `${line}\n`);
          n++;
        }
      } finally {
        if (fd !== undefined) closeSync(fd);
      }
      if (out !== undefined) ctx.print(`wrote ${n} records to ${out}`);
      return EXIT_OK;
    },
  },
  {
    name: "audit list",
    args: [],
    summary: "list audit records in log order",
    flags: [
      ...FILTER_FLAGS,
      ...pageFlags("records", 100),
      ...CLIENT_FLAGS,
    ],
    async run(ctx) {
      const res = await ctx.clients().audit.listAuditRecords({
        ...buildListAuditRecordsRequest(ctx.flags),
        ...pageOf(ctx.flags),
      });
      ctx.output(ListAuditRecordsResponseSchema, res, () => {
        const table =
          res.records.length === 0
            ? "no audit records"
            : formatTable(
                [{ title: "seq", align: "right" }, { title: "time" }, { title: "chain" }, { title: "#", align: "right" }, { title: "type" }, { title: "agent" }],
                res.records.map((r) => [String(r.seq), formatTime(r.createTime) ?? "", r.chainId, String(r.chainSeq), r.type, r.agentId]),
              );
        return withNextPage(table, res.nextPageToken);
      });
      return EXIT_OK;
    },
  },
  {
    name: "audit public-key",
    args: [],
    summary: "print the checkpoint keys as a JWK Set, to pin for audit verify --public-key",
    flags: [SERVER_FLAG, API_KEY_FLAG],
    async run(ctx) {
      const res = await ctx.clients().audit.getAuditPublicKeys({});
      ctx.print(toJsonString(GetAuditPublicKeysResponseSchema, res, { prettySpaces: 2 }));
      return EXIT_OK;
    },
  },
  {
    name: "audit keygen",
    args: ["FILE"],
    summary: "create a checkpoint signing key (Ed25519 private JWK, mode 0600) for --audit-key; prints its public JWK Set",
    notes: "Runs locally, without a server. Give every control-plane replica the same file (e.g. a mounted secret).",
    flags: [],
    async run(ctx) {
      const file = ctx.args[0]!;
      if (existsSync(file)) throw new CliError(`${file} exists; keygen never overwrites a key`);
      const key = await loadOrCreateAuditKey(file);
      ctx.print(JSON.stringify({ keys: [key.publicJwk] }, null, 2));
      return EXIT_OK;
    },
  },
];
