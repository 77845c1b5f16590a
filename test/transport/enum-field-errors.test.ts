import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fromJson } from "@bufbuild/protobuf";
import { SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { CreateSessionRequestSchema, ImportSessionRequestSchema, ListSessionsRequestSchema } from "../../src/gen/warden/v1/session_service_pb.js";
import { enumFieldPaths, nameEnumField } from "../../src/transport/enum-field-errors.js";
import { parseSnapshot } from "../../src/cli/commands/sessions.js";

/** protobuf-es's own error for `json`, as a Connect JSON request would get it. */
function decodeError(schema: Parameters<typeof fromJson>[0], json: unknown): string {
  try {
    fromJson(schema, json as never);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error("decoded");
}

describe("naming the field of an enum value protobuf-es cannot decode from JSON", () => {
  test("finds the enum's fields at any depth, repeated and nested alike", () => {
    assert.deepEqual(enumFieldPaths(ListSessionsRequestSchema, "warden.v1.SessionStatus"), ["status"]);
    assert.deepEqual(enumFieldPaths(CreateSessionRequestSchema, "warden.v1.Weekday"), ["policy.week_start"]);
    assert.deepEqual(enumFieldPaths(ImportSessionRequestSchema, "warden.v1.Reason"), [
      "snapshot.actions.decision.reasons",
      "snapshot.actions.decision.violations.reason",
    ]);
    const report = SyncService.method.reportLeases.input;
    assert.deepEqual(enumFieldPaths(report, "warden.v1.HoldRelease"), ["reports.settlements.release"]);
    assert.deepEqual(enumFieldPaths(ListSessionsRequestSchema, "warden.v1.Weekday"), []);
  });

  test("puts the field in front of protobuf-es's message, and leaves every other message as it is", () => {
    const msg = decodeError(CreateSessionRequestSchema, { policy: { weekStart: "FUNDAY" } });
    assert.match(msg, /^cannot decode enum warden\.v1\.Weekday from JSON: "FUNDAY"$/, "protobuf-es names the enum, not the field");
    assert.equal(nameEnumField(msg, CreateSessionRequestSchema), `policy.week_start: ${msg}`);
    const ambiguous = decodeError(ImportSessionRequestSchema, { snapshot: { actions: [{ decision: { reasons: ["NOPE"] } }] } });
    assert.match(nameEnumField(ambiguous, ImportSessionRequestSchema), /^snapshot\.actions\.decision\.reasons or snapshot\.actions\.decision\.violations\.reason: cannot decode enum/);
    const other = decodeError(ListSessionsRequestSchema, { pageSize: "x" });
    assert.equal(nameEnumField(other, ListSessionsRequestSchema), other);
    assert.equal(nameEnumField("cannot decode enum warden.v1.Weekday from JSON: 1.5", ListSessionsRequestSchema), "cannot decode enum warden.v1.Weekday from JSON: 1.5");
  });

  test("warden sessions import names the field of a bad enum name in the snapshot file", () => {
    assert.throws(() => parseSnapshot("s.json", JSON.stringify({ session: { status: "SESSION_STATUS_GONE" } })), {
      message: /^s\.json: not a session snapshot: session\.status: cannot decode enum/,
    });
  });
});
