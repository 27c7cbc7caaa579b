// Identities: JWTs verified against the deployment's auth configuration reach
// `ctx.auth.getUserIdentity()`; bad tokens are refused with AuthError; admin keys guard
// deploys.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import WebSocket from "ws";
import { createPublicKey } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  admin,
  createDeployment,
  deploy,
  jwt,
  kiln,
  now,
  rsaKeys,
  startServer,
  testApp,
  waitFor,
} from "./helpers.mjs";

const api = anyApi;
const ISSUER = "https://auth.kiln.test";
const AUDIENCE = "kiln-e2e";
let server;
let keys;
let otherKeys;

const claims = (extra = {}) => ({
  iss: ISSUER,
  sub: "user-42",
  aud: AUDIENCE,
  iat: now(),
  exp: now() + 600,
  name: "Ada Lovelace",
  email: "ada@example.com",
  email_verified: true,
  team: "kiln",
  ...extra,
});

before(async () => {
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
  keys = rsaKeys();
  otherKeys = rsaKeys();
  const set = await admin(server.url, server.adminKey, "/api/kiln/config", {
    auth: {
      providers: [
        { issuer: ISSUER, applicationID: AUDIENCE, algorithms: ["RS256"], publicKeyPem: keys.publicKey },
        { issuer: "https://hmac.kiln.test", secret: "shared-secret-for-tests" },
      ],
    },
  });
  assert.equal(set.status, 200, JSON.stringify(set.body));
});

after(async () => {
  await server?.stop();
});

test("a JWT signed by the configured key reaches getUserIdentity", async () => {
  const token = jwt(claims(), { privateKey: keys.privateKey });
  const http = new ConvexHttpClient(server.url, { logger: false });
  http.setAuth(token);
  const identity = await http.query(api.auth.whoami, {});
  assert.equal(identity.tokenIdentifier, `${ISSUER}|user-42`);
  assert.equal(identity.subject, "user-42");
  assert.equal(identity.issuer, ISSUER);
  assert.equal(identity.name, "Ada Lovelace");
  assert.equal(identity.emailVerified, true);
  assert.equal(identity.team, "kiln", "custom claims pass through");

  const ws = new ConvexClient(server.url, { logger: false });
  try {
    const changes = [];
    ws.setAuth(async () => token, (ok) => changes.push(ok));
    const seen = [];
    ws.onUpdate(api.auth.whoami, {}, (v) => seen.push(v));
    await waitFor(() => seen.some((v) => v?.subject === "user-42"), 10_000, "the identity over WebSocket");
    await waitFor(() => changes.includes(true), 10_000, "the client to learn the token was accepted");

    // Clearing auth re-runs the query as anonymous.
    ws.client.clearAuth();
    await waitFor(() => seen.at(-1) === null, 10_000, "the signed-out result");
  } finally {
    await ws.close();
  }

  const hmac = new ConvexHttpClient(server.url, { logger: false });
  hmac.setAuth(jwt(claims({ iss: "https://hmac.kiln.test", aud: undefined }), { secret: "shared-secret-for-tests" }));
  assert.equal((await hmac.query(api.auth.whoami, {})).issuer, "https://hmac.kiln.test");
});

const badTokens = () => ({
  expired: jwt(claims({ exp: now() - 120, iat: now() - 3600 }), { privateKey: keys.privateKey }),
  "not valid yet": jwt(claims({ nbf: now() + 600 }), { privateKey: keys.privateKey }),
  "wrong audience": jwt(claims({ aud: "someone-else" }), { privateKey: keys.privateKey }),
  // The provider names an applicationID: a token minted for no audience is not for this app.
  "no audience": jwt(claims({ aud: undefined }), { privateKey: keys.privateKey }),
  "wrong issuer": jwt(claims({ iss: "https://evil.test" }), { privateKey: keys.privateKey }),
  "signed by another key": jwt(claims(), { privateKey: otherKeys.privateKey }),
  tampered: (() => {
    const [h, , s] = jwt(claims(), { privateKey: keys.privateKey }).split(".");
    const forged = Buffer.from(JSON.stringify(claims({ sub: "admin" }))).toString("base64url");
    return `${h}.${forged}.${s}`;
  })(),
  unsigned: jwt(claims(), { alg: "none" }),
  // HS256 "signed" with the RSA public key as the secret: the classic algorithm confusion.
  "algorithm confusion": jwt(claims(), { alg: "HS256", secret: keys.publicKey }),
});

test("bad tokens are refused over HTTP", async () => {
  for (const [what, token] of Object.entries(badTokens())) {
    const http = new ConvexHttpClient(server.url, { logger: false });
    http.setAuth(token);
    await assert.rejects(http.query(api.auth.whoami, {}), /InvalidAuthToken|token/, `${what} must be refused`);
  }
});

/** Speaks the protocol directly: Connect, Authenticate, and returns the first reply. */
function authenticateRaw(token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url.replace("http", "ws")}/api/1.48.0/sync`);
    const timer = setTimeout(() => reject(new Error("no reply")), 10_000);
    ws.on("open", () => {
      ws.send(JSON.stringify({ type: "Connect", sessionId: "raw-auth", connectionCount: 0, lastCloseReason: null, clientTs: Date.now() }));
      ws.send(JSON.stringify({ type: "Authenticate", baseVersion: 0, tokenType: "User", value: token }));
    });
    ws.on("message", (data) => {
      clearTimeout(timer);
      ws.close();
      resolve(JSON.parse(String(data)));
    });
    ws.on("error", reject);
  });
}

test("bad tokens get AuthError over WebSocket", async () => {
  for (const [what, token] of Object.entries(badTokens())) {
    const reply = await authenticateRaw(token);
    assert.equal(reply.type, "AuthError", `${what}: ${JSON.stringify(reply)}`);
    assert.equal(reply.baseVersion, 0);
    assert.equal(reply.authUpdateAttempted, true);
  }
  const good = await authenticateRaw(jwt(claims(), { privateKey: keys.privateKey }));
  assert.equal(good.type, "Transition", "a good token is confirmed by a Transition");
  assert.equal(good.endVersion.identity, 1);

  // The official client reports the refusal to the app.
  const ws = new ConvexClient(server.url, { logger: false });
  try {
    const changes = [];
    ws.setAuth(async () => badTokens().expired, (ok) => changes.push(ok));
    await waitFor(() => changes.includes(false), 20_000, "the client to report the refused token");
  } finally {
    await ws.close();
  }
});

test("a wrong admin key cannot deploy or administer", async () => {
  const r = kiln("deploy", testApp, "--url", server.url, "--admin-key", "default|0000");
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /Unauthorized/);
  for (const path of ["/api/kiln/deploy", "/api/kiln/config", "/api/kiln/drop_connections"]) {
    const res = await admin(server.url, "default|0000", path, {});
    assert.equal(res.status, 401, path);
    assert.equal(res.body.code, "Unauthorized");
  }
  const http = new ConvexHttpClient(server.url, { logger: false });
  http.setAdminAuth("default|0000");
  await assert.rejects(http.query(api.auth.whoami, {}), /Unauthorized|admin key/);
  // The real key works, and may act as a user.
  const adminClient = new ConvexHttpClient(server.url, { logger: false });
  adminClient.setAdminAuth(server.adminKey, { subject: "acted", issuer: "https://admin" });
  assert.equal((await adminClient.query(api.auth.whoami, {})).subject, "acted");
});

/** A small app in the ignored `.work/` folder (the `convex` package resolves from here). */
function writeApp(name, authConfig) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "../.work", `${name}-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "convex"), { recursive: true });
  writeFileSync(
    join(dir, "convex/me.ts"),
    'import { queryGeneric } from "convex/server";\n' +
      "export const whoami = queryGeneric({ args: {}, handler: async (ctx) => await ctx.auth.getUserIdentity() });\n",
  );
  writeFileSync(join(dir, "convex/auth.config.ts"), authConfig);
  return dir;
}

test("an app's auth.config.ts is its identity configuration: its provider's tokens are accepted", async () => {
  const appKeys = rsaKeys();
  const jwks = { keys: [{ ...createPublicKey(appKeys.publicKey).export({ format: "jwk" }), alg: "RS256", use: "sig" }] };
  const uri = `data:text/plain;charset=utf-8;base64,${Buffer.from(JSON.stringify(jwks)).toString("base64")}`;
  const issuer = "https://issuer.app.kiln.test";
  const app = writeApp(
    "auth-config",
    `export default {\n  providers: [\n    { type: "customJwt", applicationID: "my-app", issuer: ${JSON.stringify(issuer)}, jwks: ${JSON.stringify(uri)}, algorithm: "RS256" },\n  ],\n};\n`,
  );
  // A fresh deployment: nothing configured but the app.
  const key = await createDeployment(server, "withauthconfig");
  const url = `${server.url}/d/withauthconfig`;
  deploy(url, key, app);
  const token = jwt(claims({ iss: issuer, aud: "my-app" }), { privateKey: appKeys.privateKey });
  const http = new ConvexHttpClient(url, { logger: false });
  http.setAuth(token);
  const identity = await http.query(anyApi.me.whoami, {});
  assert.equal(identity.tokenIdentifier, `${issuer}|user-42`);

  // Over WebSocket too, and a token for another audience is still refused.
  const ws = new ConvexClient(url, { logger: false });
  try {
    const seen = [];
    ws.setAuth(async () => token);
    ws.onUpdate(anyApi.me.whoami, {}, (v) => seen.push(v));
    await waitFor(() => seen.some((v) => v?.issuer === issuer), 10_000, "the identity over WebSocket");
  } finally {
    await ws.close();
  }
  const other = new ConvexHttpClient(url, { logger: false });
  other.setAuth(jwt(claims({ iss: issuer, aud: "another-app" }), { privateKey: appKeys.privateKey }));
  await assert.rejects(other.query(anyApi.me.whoami, {}), /audience|aud/i);
  rmSync(app, { recursive: true, force: true });
});

test("an auth.config.ts Kiln cannot apply is refused by name at build", () => {
  const app = writeApp(
    "auth-config-env",
    "export default { providers: [{ domain: process.env.CLERK_DOMAIN, applicationID: \"convex\" }] };\n",
  );
  const r = kiln("build", app);
  assert.notEqual(r.status, 0, "the build fails");
  assert.match(r.stderr + r.stdout, /convex\/auth\.config\.ts: provider 0: `domain` is missing \(environment variables/);
  rmSync(app, { recursive: true, force: true });
});
