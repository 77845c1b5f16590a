import type { ServiceImpl } from "@connectrpc/connect";
import {
  CreateSessionRequestSchema,
  ForkSessionRequestSchema,
  type SessionService,
} from "../gen/warden/v1/session_service_pb.js";
import { SessionStatus } from "../gen/warden/v1/session_pb.js";
import type { WardenStore } from "../store/warden-store.js";
import { requestHash } from "./request-hash.js";

/** SessionService over the store: sessions and their life. */
export function createSessionService(store: WardenStore): ServiceImpl<typeof SessionService> {
  return {
    async createSession(req) {
      return { session: await store.createSession(req, requestHash(CreateSessionRequestSchema, req)) };
    },
    async getSession(req) {
      return { session: await store.getSession(req.sessionId) };
    },
    async listSessions(req) {
      return store.listSessions(req);
    },
    async extendSession(req) {
      return { session: await store.extendSession(req) };
    },
    async endSession(req) {
      return { session: await store.terminate(req.sessionId, SessionStatus.COMPLETED, req.reason || "ended") };
    },
    async revokeSession(req) {
      return { session: await store.terminate(req.sessionId, SessionStatus.REVOKED, req.reason) };
    },
    async pauseSession(req) {
      return { session: await store.setPaused(req.sessionId, true, req.reason || "paused") };
    },
    async resumeSession(req) {
      return { session: await store.setPaused(req.sessionId, false, "") };
    },
    async forkSession(req) {
      return { session: await store.forkSession(req, requestHash(ForkSessionRequestSchema, req)) };
    },
    async exportSession(req) {
      return { snapshot: await store.exportSession(req.sessionId) };
    },
    async importSession(req) {
      return { session: await store.importSession(req.snapshot!) };
    },
  };
}
