import type { ServiceImpl } from "@connectrpc/connect";
import type { SessionTokenIssuer } from "../auth/session-tokens.js";
import {
  CreateSessionRequestSchema,
  EndSessionRequestSchema,
  ExtendSessionRequestSchema,
  ForkSessionRequestSchema,
  ImportSessionRequestSchema,
  PauseSessionRequestSchema,
  ResumeSessionRequestSchema,
  RevokeSessionRequestSchema,
  type SessionService,
} from "../gen/warden/v1/session_service_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import type { WardenStore } from "../store/warden-store.js";
import { keyedCall, requestHash } from "./request-hash.js";

/** Options of {@link createSessionService}. */
export interface SessionServiceOptions {
  /**
   * Signs the session token that CreateSession and ForkSession return.
   * Without it the token is left empty (for tests of the store alone).
   */
  readonly tokens?: SessionTokenIssuer;
}

/** SessionService over the store: sessions and their life. */
export function createSessionService(store: WardenStore, options: SessionServiceOptions = {}): ServiceImpl<typeof SessionService> {
  // A token is issued on every answer, retries included (each is valid):
  // the store replays the session, not the token, so no token is stored.
  const tokenFor = async (s: { sessionId: string; agentId: string }) =>
    options.tokens === undefined ? "" : (await options.tokens.issue(s)).token;
  return {
    async createSession(req) {
      const session = await store.createSession(req, requestHash(CreateSessionRequestSchema, req));
      return { session, sessionToken: await tokenFor(session) };
    },
    async getSession(req) {
      return { session: await store.getSession(req.sessionId) };
    },
    async listSessions(req) {
      return store.listSessions(req);
    },
    async extendSession(req) {
      return { session: await store.extendSession(req, requestHash(ExtendSessionRequestSchema, req)) };
    },
    async endSession(req) {
      return { session: await store.terminate(req.sessionId, SessionStatus.COMPLETED, req.reason || "ended", keyedCall(EndSessionRequestSchema, req)) };
    },
    async revokeSession(req) {
      return { session: await store.terminate(req.sessionId, SessionStatus.REVOKED, req.reason, keyedCall(RevokeSessionRequestSchema, req)) };
    },
    async pauseSession(req) {
      return { session: await store.setPaused(req.sessionId, true, req.reason || "paused", keyedCall(PauseSessionRequestSchema, req)) };
    },
    async resumeSession(req) {
      return { session: await store.setPaused(req.sessionId, false, "", keyedCall(ResumeSessionRequestSchema, req)) };
    },
    async forkSession(req) {
      // The child gets its own token: the parent's names the parent only.
      const session = await store.forkSession(req, requestHash(ForkSessionRequestSchema, req));
      return { session, sessionToken: await tokenFor(session) };
    },
    async exportSession(req) {
      return { snapshot: await store.exportSession(req.sessionId) };
    },
    async importSession(req) {
      return { session: await store.importSession(req.snapshot!, keyedCall(ImportSessionRequestSchema, req)) };
    },
  };
}
