import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Code } from "@connectrpc/connect";
import { parse } from "yaml";
import { createMetrics, grpcCodeName } from "../../src/observability/metrics.js";
import { decisionPathKey } from "../../src/observability/with-decision-metrics.js";
import { DECISION_PATHS } from "../../src/sidecar/sidecar-engine.js";
import { parseSamples } from "../observability/scrape.js";
import { DEPLOY_DIR } from "./load-manifests.js";

/**
 * deploy/monitoring/warden-alerts.yaml may only name what the code exports:
 * a renamed metric, label or label value would leave an alert that never
 * fires, silently. So every `warden_*` name in an expression must be a
 * family (or a histogram's series) of a sidecar's or a control plane's
 * registry, every label matcher must name one of its labels, and every
 * value an equality or regex alternative names must be one it takes.
 */
interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const doc = parse(readFileSync(join(DEPLOY_DIR, "monitoring/warden-alerts.yaml"), "utf8")) as {
  apiVersion: string;
  kind: string;
  spec: { groups: { name: string; rules: Rule[] }[] };
};
const rules = doc.spec.groups.flatMap((g) => g.rules);

/** Label values the code can emit, where they are a closed set. */
const KNOWN_VALUES: Record<string, Set<string>> = {
  code: new Set(Object.values(Code).filter((c): c is Code => typeof c === "number").map(grpcCodeName)),
  path: new Set([...DECISION_PATHS, decisionPathKey.defaultValue]),
};

/**
 * Every series name a sidecar exports (a control plane's are a subset),
 * with its label names; a histogram's `_bucket`, `_sum` and `_count` too.
 */
async function families(): Promise<Map<string, Set<string>>> {
  const out = new Map<string, Set<string>>();
  const sidecar = createMetrics({ processMetrics: false, sync: true });
  for (const { name, type } of await sidecar.registry.getMetricsAsJSON()) {
    const labelNames = (sidecar.registry.getSingleMetric(name) as unknown as { labelNames?: readonly string[] }).labelNames ?? [];
    if (String(type) === "histogram") {
      out.set(`${name}_bucket`, new Set([...labelNames, "le"]));
      out.set(`${name}_sum`, new Set(labelNames));
      out.set(`${name}_count`, new Set(labelNames));
    } else out.set(name, new Set(labelNames));
  }
  // Counters of a closed set of values start every series at 0: a scrape
  // lists the values they take.
  for (const sample of parseSamples(await sidecar.registry.metrics())) {
    for (const [k, v] of Object.entries(sample.labels)) if (k === "result" || k === "op") (KNOWN_VALUES[`${sample.name}:${k}`] ??= new Set()).add(v);
  }
  return out;
}

test("the alert rules are a PrometheusRule whose every rule has a severity, a summary and a description", () => {
  assert.equal(doc.apiVersion, "monitoring.coreos.com/v1");
  assert.equal(doc.kind, "PrometheusRule");
  assert.ok(rules.length >= 5);
  const names = new Set<string>();
  for (const r of rules) {
    assert.match(r.alert, /^Warden[A-Za-z]+$/);
    assert.ok(!names.has(r.alert), `${r.alert} twice`);
    names.add(r.alert);
    assert.ok(["info", "warning", "critical"].includes(r.labels?.severity ?? ""), `${r.alert}: severity`);
    assert.ok(r.annotations?.summary && r.annotations.description, `${r.alert}: summary and description`);
    if (r.for !== undefined) assert.match(r.for, /^\d+[smh]$/, `${r.alert}: for`);
  }
});

test("every metric, label and label value the alerts name is one the code exports", async () => {
  const known = await families();
  const problems: string[] = [];
  for (const r of rules) {
    for (const m of r.expr.matchAll(/\b(warden_[a-z0-9_]+)(\{([^}]*)\})?/g)) {
      const name = m[1]!;
      const labels = known.get(name);
      if (labels === undefined) {
        problems.push(`${r.alert}: ${name} is not exported`);
        continue;
      }
      for (const [, label, op, value] of (m[3] ?? "").matchAll(/([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
        if (!labels.has(label!)) problems.push(`${r.alert}: ${name} has no label ${label}`);
        const values = KNOWN_VALUES[`${name}:${label}`] ?? KNOWN_VALUES[label!];
        if (values === undefined) continue;
        for (const v of op!.includes("~") ? value!.split("|") : [value!]) if (!values.has(v)) problems.push(`${r.alert}: ${name}{${label}} never is "${v}"`);
      }
    }
  }
  assert.deepEqual(problems, []);
});

test("the check itself catches a misspelled metric, label or value", async () => {
  const known = await families();
  assert.equal(known.has("warden_report_backlog_age_seconds"), true);
  assert.equal(known.has("warden_report_backlog_age"), false);
  assert.equal(known.get("warden_reports_total")?.has("result"), true);
  assert.equal(KNOWN_VALUES["warden_reports_total:result"]?.has("refused"), true);
  assert.equal(KNOWN_VALUES["warden_reports_total:result"]?.has("rejected"), false);
  assert.equal(KNOWN_VALUES["warden_lease_operations_total:op"]?.has("reconcile"), true);
  assert.equal(KNOWN_VALUES.code?.has("UNAVAILABLE"), true);
});
