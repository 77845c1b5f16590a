import assert from "node:assert/strict";
import { test } from "node:test";
import { idTimeMs, newId } from "../../src/store/ids.js";

test("an id from newId carries its creation time, to the millisecond", () => {
  for (const ms of [0, 1, 1_733_000_000_123, Date.now(), 2 ** 40 - 1]) {
    assert.equal(idTimeMs(newId("act", ms)), ms);
  }
});

test("ids not made by newId have no time", () => {
  for (const id of ["", "act", "act_", "my-session", `act_${"z".repeat(25)}`, `act_${"u".repeat(26)}`, `act_${"0".repeat(27)}`]) {
    assert.equal(idTimeMs(id), undefined, id);
  }
});
