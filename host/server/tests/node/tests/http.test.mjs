// HTTP actions (convex/http.ts) over real HTTP: under /http/ of the deployment URL and at the
// site origin (a listener of its own; /d/<name> for other deployments), exact and prefix
// routes, the app's own CORS preflight, a webhook verified with crypto.subtle, storage and auth
// inside handlers, failures and limits.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { selfHosted } from "./cli.mjs";
import { admin, deploy, jwt, kiln, now, startServer, testApp } from "./helpers.mjs";

let server;
const SECRET = "whsec_kiln_test";

before(async () => {
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
  const set = await admin(server.url, server.adminKey, "/api/kiln/config", {
    env: { WEBHOOK_SECRET: SECRET },
    auth: { providers: [{ issuer: "https://hmac.kiln.test", secret: "shared-secret-for-tests" }] },
  });
  assert.equal(set.status, 200, JSON.stringify(set.body));
});

after(async () => {
  await server?.stop();
});

const origins = () => [
  ["/http", `${server.url}/http`],
  ["site", server.siteUrl],
];

test("GET and POST with JSON, query strings and headers reach the handler, at /http and at the site origin", async () => {
  assert.ok(server.siteUrl, "the site origin is served");
  for (const [where, base] of origins()) {
    const get = await fetch(`${base}/echo?a=1&b=two`, { headers: { "X-Test": "hello" } });
    assert.equal(get.status, 200, where);
    assert.equal(get.headers.get("x-echo"), "1");
    assert.match(get.headers.get("content-type"), /application\/json/);
    const seen = await get.json();
    assert.equal(seen.method, "GET");
    assert.equal(seen.path, where === "site" ? "/echo" : "/http/echo");
    assert.equal(seen.url, `${base}/echo?a=1&b=two`);
    assert.deepEqual(seen.query, { a: "1", b: "two" });
    assert.equal(seen.header, "hello");
    assert.equal(seen.siteUrl, server.siteUrl, "process.env.CONVEX_SITE_URL");

    const post = await fetch(`${base}/echo`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ n: 1, list: ["x"] }),
    });
    assert.equal(post.status, 201);
    assert.deepEqual((await post.json()).body, { n: 1, list: ["x"] });
  }
});

test("prefix routes, 404 for unknown paths and methods, a preflight answered by the app's OPTIONS route", async () => {
  for (const [where, base] of origins()) {
    const prefixed = await fetch(`${base}/files/a/b.txt`);
    assert.equal(prefixed.status, 200, where);
    assert.equal(await prefixed.text(), `prefix route: ${where === "site" ? "" : "/http"}/files/a/b.txt`);
    const missing = await fetch(`${base}/nowhere`);
    assert.equal(missing.status, 404);
    assert.match(await missing.text(), /No HttpAction routed for \/nowhere/);
    const wrongMethod = await fetch(`${base}/echo`, { method: "DELETE" });
    assert.equal(wrongMethod.status, 404);

    const preflight = await fetch(`${base}/echo`, {
      method: "OPTIONS",
      headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST" },
    });
    assert.equal(preflight.status, 204);
    // The app's headers, not a server-wide permissive policy.
    assert.equal(preflight.headers.get("access-control-allow-origin"), "https://app.example");
    assert.equal(preflight.headers.get("access-control-allow-headers"), "Content-Type, X-Signature");
    const noRoute = await fetch(`${base}/files/x`, { method: "OPTIONS", headers: { Origin: "https://evil.example" } });
    assert.equal(noRoute.status, 404);
    assert.equal(noRoute.headers.get("access-control-allow-origin"), null);
  }
});

test("a webhook verifies its HMAC-SHA256 signature with crypto.subtle and then runs a mutation", async () => {
  for (const [where, base] of origins()) {
    const id = `evt_${where.replace("/", "")}_${Date.now()}`;
    const body = JSON.stringify({ id, type: "invoice.paid" });
    const signature = createHmac("sha256", SECRET).update(body).digest("hex");
    const ok = await fetch(`${base}/webhook`, { method: "POST", headers: { "X-Signature": signature }, body });
    assert.equal(ok.status, 200, await ok.clone().text());
    assert.deepEqual(await ok.json(), { received: id, runs: 1 });
    const forged = await fetch(`${base}/webhook`, {
      method: "POST",
      headers: { "X-Signature": createHmac("sha256", "wrong").update(body).digest("hex") },
      body,
    });
    assert.equal(forged.status, 401);
    const tampered = await fetch(`${base}/webhook`, {
      method: "POST",
      headers: { "X-Signature": signature },
      body: body.replace("paid", "void"),
    });
    assert.equal(tampered.status, 401);
  }
});

test("handlers use storage and auth; a throwing handler answers 500 with its error; a body over the limit 413", async () => {
  const stored = await fetch(`${server.siteUrl}/upload`, { method: "POST", headers: { "Content-Type": "text/csv" }, body: "a,b\n1,2\n" });
  assert.equal(stored.status, 200);
  const { url } = await stored.json();
  const file = await fetch(url);
  assert.equal(await file.text(), "a,b\n1,2\n");
  assert.equal(file.headers.get("content-type"), "text/csv");

  const anonymous = await fetch(`${server.siteUrl}/whoami`);
  assert.equal(await anonymous.text(), "null");
  const token = jwt({ iss: "https://hmac.kiln.test", sub: "user-7", aud: "convex", iat: now(), exp: now() + 600 }, { secret: "shared-secret-for-tests" });
  const signedIn = await fetch(`${server.siteUrl}/whoami`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal((await signedIn.json()).subject, "user-7");
  // A bearer token that is not a valid JWT (a webhook's own secret) leaves the caller anonymous.
  const foreign = await fetch(`${server.siteUrl}/whoami`, { headers: { Authorization: "Bearer sk_live_123" } });
  assert.equal(await foreign.text(), "null");

  const thrown = await fetch(`${server.siteUrl}/throw`);
  assert.equal(thrown.status, 500);
  assert.match((await thrown.json()).message, /the handler failed/);

  const big = await fetch(`${server.siteUrl}/echo`, { method: "POST", body: new Uint8Array((20 << 20) + 1) });
  assert.equal(big.status, 413);
  assert.equal((await big.json()).code, "BodyTooLarge");
});

test("another deployment's HTTP actions are under /d/<name> at the site origin; an app without a router answers 404", async () => {
  const created = kiln("deployments", "create", "other", "--url", server.url, "--admin-key", server.adminKey);
  assert.equal(created.status, 0, created.stderr);
  const [, key] = selfHosted(created.stdout);
  const before = await fetch(`${server.siteUrl}/d/other/echo`);
  assert.equal(before.status, 404);
  assert.equal((await before.json()).code, "NotDeployed");
  deploy(`${server.url}/d/other`, key, testApp);
  const res = await fetch(`${server.siteUrl}/d/other/echo?who=other`);
  assert.equal(res.status, 200);
  const seen = await res.json();
  assert.deepEqual(seen.query, { who: "other" });
  assert.equal(seen.siteUrl, `${server.siteUrl}/d/other`);
  const viaHttp = await fetch(`${server.url}/d/other/http/echo`);
  assert.equal(viaHttp.status, 200);
});
