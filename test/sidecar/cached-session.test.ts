/**
 * The sidecar's compact session record: what the cache holds must decide
 * exactly as the session state it was made from, and sessions that share
 * their terms (agent, parents, policy, status, idle timeout) share one
 * object for them.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { compilePolicy, EMPTY_POLICY } from "../../src/core/compiled-policy.js";
import { counterKey, evaluate, type ScopeState, type Totals } from "../../src/core/evaluate.js";
import { CalendarSpanCache } from "../../src/core/windows.js";
import { Outcome, Scope } from "../../src/gen/warden/v1/decision_pb.js";
import { SessionStatus } from "../../src/gen/warden/v1/session_pb.js";
import { AgentStateSchema, GetSessionStateResponseSchema, type SessionState, SessionStateSchema } from "../../src/gen/warden/v1/sync_service_pb.js";
import { SessionCache } from "../../src/sidecar/session-cache.js";
import { DAY, HOUR, MINUTE, NOW, UTC_STARTS, units } from "../core/fixtures.js";

const AGENT = "agent-compact";

function cacheOf(): SessionCache {
  return new SessionCache({
    maxSessions: 1000,
    maxBytes: 1 << 20,
    fetch: () => Promise.reject(new Error("no fetches here")),
  });
}

function state(init: MessageInitShape<typeof SessionStateSchema>): SessionState {
  return create(SessionStateSchema, { agentId: AGENT, status: SessionStatus.ACTIVE, expireTime: timestampFromMs(NOW + DAY), lastActivityTime: timestampFromMs(NOW - MINUTE), revision: 1n, ...init });
}

/** A session's scope straight from its protobuf state: what the cache must be equivalent to. */
function scopeOfState(st: SessionState, scope: Scope): ScopeState {
  return {
    scope,
    id: st.sessionId,
    key: `s:${st.sessionId}`,
    policy: compilePolicy(st.policy!),
    status: st.status,
    expireMs: timestampMs(st.expireTime!),
    idleTimeoutMs: st.idleTimeout === undefined ? undefined : durationMs(st.idleTimeout),
    lastActivityMs: timestampMs(st.lastActivityTime!),
    awaitingApprovalUntilMs: st.awaitingApprovalUntil === undefined ? 0 : timestampMs(st.awaitingApprovalUntil),
  };
}

const POLICIES: MessageInitShape<typeof SessionStateSchema>["policy"][] = [
  { currencyCode: "USD" },
  { currencyCode: "USD", blockedMerchants: ["blocked"], daily: { maxValueMicros: units(10), maxActions: 3n } },
  { currencyCode: "USD", allowedMerchants: ["shop"], allowedActionTypes: ["payment"], maxPerTransactionMicros: units(5), requireApprovalAboveMicros: units(3) },
  { currencyCode: "EUR", timeZone: "Europe/Berlin", weekStart: 7, weekly: { maxValueMicros: units(20) }, monthly: { maxValueMicros: units(50) }, lifetime: { maxValueMicros: units(100) } },
];

describe("CachedSession", () => {
  test("decides exactly as the session state it was made from", () => {
    const cache = cacheOf();
    const agentPolicy = { currencyCode: "USD", daily: { maxValueMicros: units(8) } };
    const parent = state({ sessionId: "ses_parent", policy: { currencyCode: "USD", daily: { maxValueMicros: units(6) } }, revision: 2n });
    const states: SessionState[] = [];
    let n = 0;
    for (const policy of POLICIES) {
      for (const status of [SessionStatus.ACTIVE, SessionStatus.PAUSED, SessionStatus.REVOKED]) {
        for (const idleTimeout of [undefined, durationFromMs(30 * MINUTE)]) {
          // Waiting on an approval until an hour from now, or not.
          for (const [ancestorIds, awaitingApprovalUntil] of [[], ["ses_parent"]].flatMap((a) => [[a, undefined], [a, timestampFromMs(NOW + HOUR)]] as const)) {
            states.push(state({ sessionId: `ses_${n++}`, policy, status, idleTimeout, ancestorIds, lastActivityTime: timestampFromMs(NOW - (n % 3) * 20 * MINUTE), expireTime: timestampFromMs(NOW + (awaitingApprovalUntil === undefined ? (n % 4) * HOUR : 3 * DAY)), awaitingApprovalUntil }));
          }
        }
      }
    }
    cache.applyState(
      create(GetSessionStateResponseSchema, {
        agent: create(AgentStateSchema, { agentId: AGENT, policy: agentPolicy, revision: 1n }),
        sessions: [parent, ...states],
      }),
    );
    const agentScope: ScopeState = { scope: Scope.AGENT, id: AGENT, key: `a:${AGENT}`, policy: compilePolicy(create(AgentStateSchema, { policy: agentPolicy }).policy!) };
    const usage = new Map<string, Totals>([
      [counterKey("s:ses_parent", "day", UTC_STARTS.day), { value: units(4), actions: 1n }],
      [counterKey(`a:${AGENT}`, "day", UTC_STARTS.day), { value: units(2), actions: 2n }],
      [counterKey("s:ses_1", "day", UTC_STARTS.day), { value: units(7), actions: 3n }],
    ]);
    const actions = [
      { type: "payment", amountMicros: units(1), merchant: "shop" },
      { type: "payment", amountMicros: units(4), merchant: "shop" },
      { type: "payment", amountMicros: units(6), merchant: "blocked" },
      { type: "tool_call", amountMicros: 0n, merchant: "" },
    ];
    let compared = 0;
    const outcomes = new Set<Outcome>();
    for (const st of states) {
      const cached = cache.peek(st.sessionId)!;
      assert.ok(cached !== undefined, st.sessionId);
      const fromCache = cache.scopesOf(cached)!;
      const direct = [scopeOfState(st, Scope.SESSION), ...st.ancestorIds.map(() => scopeOfState(parent, Scope.PARENT_SESSION)), agentScope];
      // Field by field, as the engine reads them.
      assert.equal(cached.sessionId, st.sessionId);
      assert.equal(cached.agentId, st.agentId);
      assert.deepEqual([...cached.ancestorIds], st.ancestorIds);
      assert.equal(cached.revision, Number(st.revision));
      for (const nowMs of [NOW, NOW + 25 * MINUTE, NOW + 2 * HOUR, NOW + 2 * DAY]) {
        for (const action of actions) {
          const spans = new CalendarSpanCache();
          const read = (key: string) => usage.get(key);
          const a = evaluate({ scopes: fromCache, action, nowMs, usage: read, spans });
          const b = evaluate({ scopes: direct, action, nowMs, usage: read, spans });
          assert.deepEqual(a, b, `${st.sessionId} at +${nowMs - NOW} ms, ${action.type} ${action.amountMicros} to "${action.merchant}"`);
          outcomes.add(a.outcome);
          compared++;
        }
      }
    }
    assert.equal(compared, states.length * 16);
    assert.deepEqual([...outcomes].sort(), [Outcome.ALLOW, Outcome.DENY, Outcome.NEEDS_APPROVAL].sort(), "every outcome is exercised");
  });

  test("sessions with the same terms share one terms object; a change gives the changed one its own", () => {
    const cache = cacheOf();
    const policy = { currencyCode: "USD", blockedMerchants: ["blocked"] };
    for (let i = 0; i < 100; i++) cache.applySession(state({ sessionId: `ses_same_${i}`, policy, expireTime: timestampFromMs(NOW + i * MINUTE) }), true);
    const first = cache.peek("ses_same_0")!;
    for (let i = 1; i < 100; i++) {
      const s = cache.peek(`ses_same_${i}`)!;
      assert.equal(s.terms, first.terms, "one terms object for all");
      assert.equal(s.expireMs, NOW + i * MINUTE, "times stay the session's own");
    }
    assert.ok(Object.isFrozen(first.terms), "shared, so immutable");

    cache.applySession(state({ sessionId: "ses_same_7", policy, status: SessionStatus.PAUSED, revision: 2n }));
    assert.equal(cache.peek("ses_same_7")!.status, SessionStatus.PAUSED);
    assert.notEqual(cache.peek("ses_same_7")!.terms, first.terms);
    assert.equal(cache.peek("ses_same_8")!.status, SessionStatus.ACTIVE, "its siblings unchanged");
    assert.equal(first.status, SessionStatus.ACTIVE);

    // Anything that differs makes different terms.
    const variants = [
      state({ sessionId: "ses_v1", policy: { currencyCode: "USD", blockedMerchants: ["other"] } }),
      state({ sessionId: "ses_v2", policy, idleTimeout: durationFromMs(MINUTE) }),
      state({ sessionId: "ses_v3", policy, ancestorIds: ["ses_same_0"] }),
      state({ sessionId: "ses_v4", policy, agentId: "another-agent" }),
    ];
    const seen = new Set([first.terms]);
    for (const v of variants) {
      cache.applySession(v, true);
      const t = cache.peek(v.sessionId)!.terms;
      assert.ok(!seen.has(t), v.sessionId);
      seen.add(t);
    }
    assert.equal(cache.peek("ses_v4")!.agentId, "another-agent");
    assert.equal(cache.peek("ses_v3")!.ancestorIds[0], "ses_same_0");
    assert.equal(cache.peek("ses_v2")!.idleTimeoutMs, MINUTE);
  });

  test("the wait on an approval is the store's: a newer state that ends it ends it in the cache", () => {
    const cache = cacheOf();
    cache.applySession(state({ sessionId: "ses_wait", policy: { currencyCode: "USD" }, awaitingApprovalUntil: timestampFromMs(NOW + HOUR) }), true);
    assert.equal(cache.peek("ses_wait")!.awaitingApprovalUntilMs, NOW + HOUR);
    cache.applySession(state({ sessionId: "ses_wait", policy: { currencyCode: "USD" }, revision: 2n }));
    assert.equal(cache.peek("ses_wait")!.awaitingApprovalUntilMs, 0);
  });

  test("an agent without a policy still decides from the empty one", () => {
    const cache = cacheOf();
    cache.applyAgent(create(AgentStateSchema, { agentId: AGENT, revision: 1n }));
    cache.applySession(state({ sessionId: "ses_np", policy: { currencyCode: "USD" } }), true);
    const scopes = cache.scopesOf(cache.peek("ses_np")!)!;
    assert.equal(scopes.at(-1)!.policy, EMPTY_POLICY);
  });
});
