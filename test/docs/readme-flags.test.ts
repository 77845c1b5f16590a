import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { type Role, ROLE_FLAGS } from "../../src/server/role-flags.js";

/**
 * The README documents every flag a user touches: a table row that names
 * the flag, its environment variable and its default. A flag added, renamed
 * or given a new default in the code without the README fails here.
 */
const README = readFileSync(join(import.meta.dirname, "../../README.md"), "utf8");
const ROWS = README.split("\n").filter((l) => l.startsWith("| `--"));

describe("README", () => {
  for (const role of Object.keys(ROLE_FLAGS) as Role[]) {
    test(`documents every flag of warden ${role} with its environment variable and default`, () => {
      const missing: string[] = [];
      for (const f of ROLE_FLAGS[role]) {
        const row = ROWS.find(
          (r) => r.includes(`\`--${f.name} `) || r.includes(`\`--${f.name}\``)
            ? r.includes(`\`${f.env}\``) && (f.default === undefined || r.includes(`\`${f.default}\``))
            : false,
        );
        if (row === undefined) missing.push(`--${f.name} (${f.env}${f.default === undefined ? "" : `, default ${f.default}`})`);
      }
      assert.deepEqual(missing, [], `README has no table row for these ${role} flags`);
    });
  }

  test("names every environment variable the code reads", () => {
    const read = new Set<string>();
    for (const f of Object.values(ROLE_FLAGS).flat()) read.add(f.env);
    const src = join(import.meta.dirname, "../../src");
    for (const file of readdirSync(src, { recursive: true, encoding: "utf8" })) {
      if (!file.endsWith(".ts") || file.startsWith("gen")) continue;
      for (const m of readFileSync(join(src, file), "utf8").matchAll(/process\.env\.([A-Z0-9_]+)/g)) read.add(m[1]!);
    }
    assert.deepEqual([...read].filter((e) => !README.includes(`\`${e}\``)), []);
  });
});
