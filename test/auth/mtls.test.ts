import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { withBearer } from "../../src/client/create-warden-client.js";
import * as grpc from "@grpc/grpc-js";
import { SESSION_SERVICE_ACCESS, AUTH_SERVICE_ACCESS } from "../../src/auth/access-tables.js";
import { createAuth, type Auth } from "../../src/auth/create-auth.js";
import { createServerCredentials, serverTlsFromFlags } from "../../src/auth/server-tls.js";
import { createSidecarCredentials, sidecarCredentialOptionsFromFlags } from "../../src/auth/sidecar-credentials.js";
import { createApiKeys } from "../../src/auth/api-keys.js";
import { AuthService } from "../../src/gen/warden/v1/auth_service_pb.js";
import { SyncService } from "../../src/gen/warden/v1/sync_service_pb.js";
import { createLogger } from "../../src/server/logger.js";
import { startServer } from "../../src/server/start-server.js";
import { CreateSessionRequestSchema, GetSessionRequestSchema, SessionService, type GetSessionResponse } from "../../src/gen/warden/v1/session_service_pb.js";
import { createSessionService } from "../../src/services/session-service.js";
import { createWardenStore } from "../../src/store/warden-store.js";
import { createGrpcJsService } from "../../src/transport/grpc-js-adapter.js";
import { createGrpcServer, type GrpcServer, mountService } from "../../src/transport/grpc-server.js";
import { withValidation } from "../../src/transport/validation.js";
import { DRIVERS, openTestDatabase, type TestDatabase } from "../helpers/databases.js";
import { createStoreLocation } from "../helpers/server-process.js";
import { grpcJsClient } from "../transport/harness.js";

/** Certificates made with the openssl CLI: a CA, a server cert for 127.0.0.1, client certs. */
interface Pki {
  readonly dir: string;
  readonly file: (name: string) => string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
}

function makeKey(dir: string, name: string): void {
  openssl(dir, ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`]);
}

function makeCa(dir: string, name: string): void {
  makeKey(dir, name);
  openssl(dir, [
    "req", "-x509", "-new", "-key", `${name}.key`, "-subj", `/CN=${name}`, "-days", "2", "-out", `${name}.crt`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

function makeCert(dir: string, name: string, ca: string, subject: string, extensions: string): void {
  makeKey(dir, name);
  openssl(dir, ["req", "-new", "-key", `${name}.key`, "-subj", subject, "-out", `${name}.csr`]);
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, [
    "x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-CAcreateserial",
    "-days", "2", "-out", `${name}.crt`, "-extfile", `${name}.ext`,
  ]);
}

function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), "warden-pki-"));
  makeCa(dir, "ca");
  makeCa(dir, "rogue-ca");
  makeCert(dir, "server", "ca", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  // The agent is named by a URI SAN; the CN says something else, to show which wins.
  makeCert(dir, "shopper", "ca", "/CN=ignored-cn", "subjectAltName=URI:urn:warden:agent:shopper-1\nextendedKeyUsage=clientAuth\n");
  // No URI SAN: the CN names the agent.
  makeCert(dir, "courier", "ca", "/CN=courier-1", "extendedKeyUsage=clientAuth\n");
  makeCert(dir, "rogue", "rogue-ca", "/CN=shopper-1", "subjectAltName=URI:urn:warden:agent:shopper-1\nextendedKeyUsage=clientAuth\n");
  return { dir, file: (name) => join(dir, name) };
}

function sessionRequest(agentId: string, sessionId = "") {
  return create(CreateSessionRequestSchema, {
    sessionId,
    agentId,
    policy: { currencyCode: "USD" },
    expiration: { case: "ttl", value: durationFromMs(3_600_000) },
  });
}

async function refused(p: Promise<unknown>, code: Code, message?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    const err = ConnectError.from(e);
    assert.equal(Code[err.code], Code[code], err.rawMessage);
    if (message) assert.match(err.rawMessage, message);
    return true;
  });
}

describe("flags of TLS files", () => {
  test("server files must make a whole", () => {
    assert.equal(serverTlsFromFlags({}), undefined);
    assert.throws(() => serverTlsFromFlags({ "tls-cert-file": "c" }), /--tls-cert-file needs --tls-key-file/);
    assert.throws(() => serverTlsFromFlags({ "tls-key-file": "k" }), /--tls-key-file needs --tls-cert-file/);
    assert.throws(() => serverTlsFromFlags({ "tls-client-ca-file": "ca" }), /--tls-client-ca-file needs/);
    assert.deepEqual(serverTlsFromFlags({ "tls-cert-file": "c", "tls-key-file": "k" }), { certFile: "c", keyFile: "k", clientCaFile: undefined });
  });

  test("sidecar files fail at startup, naming the flag and never the token", () => {
    const dir = mkdtempSync(join(tmpdir(), "warden-creds-"));
    try {
      assert.throws(() => createSidecarCredentials({ certFile: "x" }), /--tls-cert-file and --tls-key-file go together/);
      assert.throws(() => createSidecarCredentials({ caFile: join(dir, "missing.pem") }), /--tls-ca-file: cannot read .*ENOENT/);
      writeFileSync(join(dir, "empty"), "\n");
      assert.throws(() => createSidecarCredentials({ tokenFile: join(dir, "empty") }), /--control-plane-token-file: .* must hold one token/);
      // What no header can carry fails here, not in Headers.set on every
      // call, whose error repeats the value into the sidecar's log.
      const key = `wdn_key_${"0".repeat(26)}_${"A".repeat(43)}`;
      for (const [name, text, fault] of [
        ["nul", `${key}\0`, "a control character at character 79"],
        ["utf16", `\ufffd\ufffd${key}`, "a non-ASCII character at character 1"],
        ["two", `${key} ${key}`, "a space at character 79"],
      ] as const) {
        writeFileSync(join(dir, name), text);
        assert.throws(
          () => createSidecarCredentials({ tokenFile: join(dir, name) }),
          (e: Error) => e.message.startsWith("--control-plane-token-file: ") && e.message.endsWith(`must hold one token of visible ASCII characters, but it holds ${fault}`) && !e.message.includes("AAAA"),
        );
      }
      const options = sidecarCredentialOptionsFromFlags({ "control-plane-token-file": "t", "tls-ca-file": "a", "tls-cert-file": "c", "tls-key-file": "k" });
      assert.deepEqual(options, { tokenFile: "t", caFile: "a", certFile: "c", keyFile: "k" });
      const none = createSidecarCredentials({});
      assert.equal(none.tls, false);
      assert.equal(none.nodeOptions, undefined);
      assert.deepEqual(none.interceptors, []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

for (const driver of DRIVERS) {
  describe(`mutual TLS on ${driver}`, () => {
    let pki: Pki;
    let t: TestDatabase;
    let auth: Auth;
    let server: GrpcServer;
    let adminKeyFile: string;
    let url: string;

    /** A control plane (startServer with requireAuth) on a fresh store, with the TLS files and the client CA. */
    async function startTlsControlPlane() {
      const { location, drop } = await createStoreLocation(driver);
      const cp = await startServer({
        grpcAddress: "127.0.0.1:0",
        httpAddress: "127.0.0.1:0",
        ..."dataDir" in location ? { dataDir: location.dataDir } : { dataDir: "", databaseUrl: location.databaseUrl },
        sweepIntervalMs: 60_000,
        logger: createLogger("silent"),
        requireAuth: true,
        tls: serverTlsFromFlags({ "tls-cert-file": pki.file("server.crt"), "tls-key-file": pki.file("server.key"), "tls-client-ca-file": pki.file("ca.crt") }),
      });
      return { cp, drop };
    }

    before(async () => {
      pki = makePki();
      t = await openTestDatabase(driver);
      const store = createWardenStore({ db: t.db });
      auth = await createAuth({ db: t.db });
      const sessions = createSessionService(store, { tokens: auth.issuer });
      server = await createGrpcServer(
        "127.0.0.1:0",
        [
          mountService(SessionService, auth.wrapAdmin(SessionService, withValidation(SessionService, sessions), SESSION_SERVICE_ACCESS)),
          mountService(AuthService, auth.wrapAdmin(AuthService, withValidation(AuthService, auth.authService), AUTH_SERVICE_ACCESS)),
        ],
        {
          credentials: createServerCredentials(
            serverTlsFromFlags({ "tls-cert-file": pki.file("server.crt"), "tls-key-file": pki.file("server.key"), "tls-client-ca-file": pki.file("ca.crt") }),
          ),
        },
      );
      url = `https://127.0.0.1:${server.port}`;
      adminKeyFile = pki.file("admin.token");
      writeFileSync(adminKeyFile, `${(await auth.apiKeys.create({ role: "admin" })).secret}\n`);
    });
    after(async () => {
      await server.close(0);
      await t.drop();
      rmSync(pki.dir, { recursive: true, force: true });
    });

    const clientOf = (flags: Record<string, string>) => {
      const creds = createSidecarCredentials(sidecarCredentialOptionsFromFlags(flags));
      assert.equal(creds.tls, true);
      return createClient(SessionService, createGrpcTransport({ baseUrl: url, interceptors: creds.interceptors, nodeOptions: creds.nodeOptions }));
    };
    const withCert = (name: string, extra: Record<string, string> = {}) =>
      clientOf({ "tls-ca-file": pki.file("ca.crt"), "tls-cert-file": pki.file(`${name}.crt`), "tls-key-file": pki.file(`${name}.key`), ...extra });

    test("the client certificate identifies its agent, who may touch only its own sessions", async () => {
      const shopper = withCert("shopper");
      const created = await shopper.createSession(sessionRequest("shopper-1", `mtls-own-${driver}`));
      assert.equal(created.session?.agentId, "shopper-1");
      assert.match(created.sessionToken, /^ey/);
      assert.equal((await shopper.getSession({ sessionId: `mtls-own-${driver}` })).session?.agentId, "shopper-1");
      await refused(shopper.createSession(sessionRequest("someone-else")), Code.PermissionDenied, /may only act for agent "shopper-1"/);
      await refused(shopper.revokeSession({ sessionId: `mtls-own-${driver}`, reason: "x" }), Code.PermissionDenied, /role "agent" may not call/);

      // CN names the agent when there is no URI SAN.
      const courier = withCert("courier");
      await refused(courier.getSession({ sessionId: `mtls-own-${driver}` }), Code.PermissionDenied, /belongs to another agent/);
      assert.equal((await courier.createSession(sessionRequest("courier-1"))).session?.agentId, "courier-1");
    });

    test("a Bearer key on a mutual-TLS connection speaks for itself", async () => {
      const admin = withCert("shopper", { "control-plane-token-file": adminKeyFile });
      assert.equal((await admin.createSession(sessionRequest("someone-else"))).session?.agentId, "someone-else");
    });

    test("a plain @grpc/grpc-js client with a certificate works too", async () => {
      const { definition } = createGrpcJsService(SessionService, {});
      const Client = grpc.makeGenericClientConstructor(definition, "SessionService");
      const creds = grpc.credentials.createSsl(readFileSync(pki.file("ca.crt")), readFileSync(pki.file("shopper.key")), readFileSync(pki.file("shopper.crt")));
      const client = new Client(`127.0.0.1:${server.port}`, creds) as unknown as Record<string, (...a: unknown[]) => void> & grpc.Client;
      try {
        const res = await new Promise<GetSessionResponse>((resolve, reject) =>
          client.getSession!(create(GetSessionRequestSchema, { sessionId: `mtls-own-${driver}` }), (err: Error | null, r: GetSessionResponse) =>
            err ? reject(err) : resolve(r),
          ),
        );
        assert.equal(res.session?.agentId, "shopper-1");
      } finally {
        client.close();
      }
    });

    test("the control plane (startServer with TLS files and requireAuth) lets a sidecar's certificate sync its own agent only", async () => {
      const { cp, drop } = await startTlsControlPlane();
      try {
        const creds = createSidecarCredentials({ caFile: pki.file("ca.crt"), certFile: pki.file("shopper.crt"), keyFile: pki.file("shopper.key") });
        const transport = createGrpcTransport({ baseUrl: `https://127.0.0.1:${cp.grpcPort}`, nodeOptions: creds.nodeOptions });
        const mine = await createClient(SessionService, transport).createSession(sessionRequest("shopper-1"));
        const sync = createClient(SyncService, transport);
        const state = await sync.getSessionState({ sessionId: mine.session!.sessionId });
        assert.equal(state.sessions[0]?.agentId, "shopper-1");
        const { secret: adminKey } = await createApiKeys({ db: cp.store.db }).create({ role: "admin" });
        const theirs = await createClient(SessionService, createGrpcTransport({ baseUrl: `https://127.0.0.1:${cp.grpcPort}`, nodeOptions: creds.nodeOptions, interceptors: [(next) => (req) => {
          req.header.set("authorization", `Bearer ${adminKey}`);
          return next(req);
        }] })).createSession(sessionRequest("courier-1"));
        await refused(sync.getSessionState({ sessionId: theirs.session!.sessionId }), Code.PermissionDenied, /another agent/);
        await refused(sync.acquireLease({ sessionId: theirs.session!.sessionId, holder: "h", desiredValueMicros: 1n }), Code.PermissionDenied);
        // The public key set is there for sidecars that verify session tokens.
        assert.equal((await createClient(AuthService, transport).getSigningKeys({})).keys.length, 1);
      } finally {
        await cp.close(0);
        await drop();
      }
    });

    test("the Connect listener serves HTTPS with the same files: a verified certificate names its agent, API keys still work, plaintext and unverified certificates get nothing", async () => {
      const { cp, drop } = await startTlsControlPlane();
      try {
        const baseUrl = `https://127.0.0.1:${cp.httpPort}`;
        const ca = readFileSync(pki.file("ca.crt"));
        const cert = (name: string) => ({ ca, cert: readFileSync(pki.file(`${name}.crt`)), key: readFileSync(pki.file(`${name}.key`)) });
        for (const httpVersion of ["1.1", "2"] as const) {
          // The agent's certificate is its credential: no key needed for its own agent.
          const shopper = createClient(SessionService, createConnectTransport({ baseUrl, httpVersion, nodeOptions: cert("shopper") }));
          const mine = await shopper.createSession(sessionRequest("shopper-1"));
          assert.equal(mine.session!.agentId, "shopper-1");
          await refused(shopper.createSession(sessionRequest("courier-1")), Code.PermissionDenied, /agent "shopper-1"/);
          // A certificate from another CA identifies nobody; without a key that is no credential.
          const rogue = createClient(SessionService, createConnectTransport({ baseUrl, httpVersion, nodeOptions: cert("rogue") }));
          await refused(rogue.getSession({ sessionId: mine.session!.sessionId }), Code.Unauthenticated);
          // No certificate, an admin key: the CLI's way in.
          const { secret: adminKey } = await createApiKeys({ db: cp.store.db }).create({ role: "admin" });
          const admin = createClient(SessionService, withBearer(createConnectTransport({ baseUrl, httpVersion, nodeOptions: { ca } }), adminKey));
          assert.equal((await admin.getSession({ sessionId: mine.session!.sessionId })).session!.agentId, "shopper-1");
          // A client that does not trust the server's CA never sends its key.
          const untrusting = createClient(AuthService, createConnectTransport({ baseUrl, httpVersion }));
          await assert.rejects(untrusting.getSigningKeys({}), (e: unknown) => /certificate|self.signed|UNABLE_TO|unable/i.test(String((e as Error).message) + String((e as { cause?: unknown }).cause)));
        }
        // Plaintext to the TLS port gets no answer from a handler.
        const plain = createClient(AuthService, createConnectTransport({ baseUrl: `http://127.0.0.1:${cp.httpPort}`, httpVersion: "1.1" }));
        await assert.rejects(plain.getSigningKeys({}, { timeoutMs: 3000 }));
      } finally {
        await cp.close(0);
        await drop();
      }
    });

    test("clients without a certificate, or with one from another CA, are refused", async () => {
      const noCert = clientOf({ "tls-ca-file": pki.file("ca.crt") });
      // The TLS handshake fails, so no call reaches a handler: the error is
      // the connection's (with TLS 1.3 the client learns of the refusal
      // only after sending, as a TLS alert or a reset stream).
      const connectionRefused = (e: unknown) => {
        const code = ConnectError.from(e).code;
        assert.ok([Code.Unavailable, Code.Canceled, Code.Unknown, Code.Internal].includes(code), `unexpected ${Code[code]}`);
        return true;
      };
      await assert.rejects(noCert.getSession({ sessionId: `mtls-own-${driver}` }), connectionRefused);
      const rogue = withCert("rogue");
      await assert.rejects(rogue.getSession({ sessionId: `mtls-own-${driver}` }), connectionRefused);
      // A plaintext client gets nowhere either.
      const plain = grpcJsClient(SessionService, `127.0.0.1:${server.port}`);
      try {
        await assert.rejects(
          new Promise((resolve, reject) =>
            plain.getSession!(create(GetSessionRequestSchema, { sessionId: "x" }), { deadline: Date.now() + 2000 }, (err: Error | null, r: unknown) =>
              err ? reject(err) : resolve(r),
            ),
          ),
        );
      } finally {
        plain.close();
      }
    });
  });
}
