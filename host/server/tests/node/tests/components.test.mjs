// An app using two published components from npm (@convex-dev/rate-limiter and
// @convex-dev/aggregate, pinned in package.json), built by `kiln build` and pushed by
// `npx convex deploy`, used as their documentation shows through the official clients.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { convex, ok, project, selfHosted } from "./cli.mjs";
import { deploy, kiln, nextUpdate, startServer } from "./helpers.mjs";

const componentsApp = join(import.meta.dirname, "../components-app");

/** The names of a ZIP file's entries, from its central directory (found through the end
 * record, which has no comment here). */
function zipEntries(path) {
  const zip = readFileSync(path);
  const end = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 5, 6]));
  const count = zip.readUInt16LE(end + 10);
  let at = zip.readUInt32LE(end + 16);
  const names = [];
  for (let i = 0; i < count; i++) {
    const length = zip.readUInt16LE(at + 28);
    names.push(zip.toString("utf8", at + 46, at + 46 + length));
    at += 46 + length + zip.readUInt16LE(at + 30) + zip.readUInt16LE(at + 32);
  }
  return names;
}

/** The components' documented usage, through the HTTP and WebSocket clients. */
async function exercise(url) {
  const http = new ConvexHttpClient(url);
  // Rate limiter: a token bucket of 3 per user, a fixed window of 2 for everyone.
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(await http.mutation("limits:send", { user: "ada" }), { ok: true, retrying: false });
  }
  assert.deepEqual(await http.mutation("limits:send", { user: "ada" }), { ok: false, retrying: true });
  assert.deepEqual(await http.mutation("limits:send", { user: "bo" }), { ok: true, retrying: false });
  assert.equal(await http.mutation("limits:signUp", {}), true);
  assert.equal(await http.mutation("limits:signUp", {}), true);
  assert.equal(await http.mutation("limits:signUp", {}), false);
  await http.mutation("limits:reset", { user: "ada" });
  assert.deepEqual(await http.mutation("limits:send", { user: "ada" }), { ok: true, retrying: false });

  // Aggregate: count, sum, ranges and order kept beside the app's table, live.
  const client = new ConvexClient(url);
  try {
    const empty = await nextUpdate(client, "scores:stats", {}, () => true);
    assert.deepEqual(empty, { count: 0, sum: 0, below50: 0, top: null });
    const three = nextUpdate(client, "scores:stats", {}, (s) => s.count === 3);
    await client.mutation("scores:add", { player: "a", score: 10 });
    const middle = await client.mutation("scores:add", { player: "b", score: 40 });
    await client.mutation("scores:add", { player: "c", score: 70 });
    assert.deepEqual(await three, { count: 3, sum: 120, below50: 2, top: 70 });
    const two = nextUpdate(client, "scores:stats", {}, (s) => s.count === 2);
    await client.mutation("scores:remove", { id: middle });
    assert.deepEqual(await two, { count: 2, sum: 80, below50: 1, top: 70 });
  } finally {
    await client.close();
  }
  // The app's own table holds the scores; the components' tables are not the app's.
  assert.equal((await http.query("scores:stats", {})).count, 2);
}

test("npm components built by kiln build work through the official clients; their data exports and imports", async () => {
  const server = await startServer();
  const dir = project();
  const zip = join(dir, "snapshot.zip");
  try {
    deploy(server.url, server.adminKey, componentsApp);
    await exercise(server.url);
    // Usage reports each component's share of the deployment's fuel.
    const usage = await (await fetch(`${server.url}/api/kiln/usage`, {
      headers: { Authorization: `Convex ${server.adminKey}` },
    })).json();
    for (const name of ["rateLimiter", "aggregate"]) {
      assert.ok(usage.components[name].calls > 0 && usage.components[name].fuel > 0, JSON.stringify(usage.components));
    }

    // Export, then import into a fresh deployment of the same app: the components' tables
    // come along under `_components/<name>/`, so the aggregate answers as before.
    const [url, key] = selfHosted(server.output());
    ok(convex(dir, url, key, "export", "--path", zip), "export");
    const entries = zipEntries(zip).join("\n");
    assert.match(entries, /^_components\/aggregate\/btree\/documents\.jsonl$/m);
    assert.match(entries, /^_components\/rateLimiter\/rateLimits\/documents\.jsonl$/m);
    const created = kiln("deployments", "create", "copy", "--url", server.url, "--admin-key", server.adminKey);
    assert.equal(created.status, 0, created.stderr);
    const [copyUrl, copyKey] = selfHosted(created.stdout);
    // Not before the app that mounts the components is deployed there.
    const early = convex(dir, copyUrl, copyKey, "import", zip, "-y");
    assert.notEqual(early.status, 0);
    assert.match(early.stderr, /component "aggregate".*does not mount/);
    deploy(copyUrl, copyKey, componentsApp);
    ok(convex(dir, copyUrl, copyKey, "import", zip, "-y"), "import");
    const copy = new ConvexHttpClient(copyUrl);
    assert.deepEqual(await copy.query("scores:stats", {}), { count: 2, sum: 80, below50: 1, top: 70 });
    await copy.mutation("scores:add", { player: "d", score: 5 });
    assert.deepEqual(await copy.query("scores:stats", {}), { count: 3, sum: 85, below50: 2, top: 70 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
});

test("npm components pushed by npx convex deploy work through the official clients", async () => {
  const server = await startServer();
  const dir = project(componentsApp);
  try {
    const [url, key] = selfHosted(server.output());
    ok(convex(dir, url, key, "deploy", "-y", "--typecheck", "disable"), "deploy");
    await exercise(url);
    assert.match(ok(convex(dir, url, key, "run", "scores:stats"), "run"), /"count": 2/);
    // The CLI generated the components' API from the push's analysis.
    const api = readFileSync(join(dir, "convex/_generated/api.d.ts"), "utf8");
    assert.match(api, /rateLimiter: import\("@convex-dev\/rate-limiter\/_generated\/component\.js"\)|rateLimiter: \{/);
    assert.match(api, /aggregate: /);
    // Admins see each component's tables and call its functions by its path.
    assert.deepEqual(ok(convex(dir, url, key, "data", "--component", "aggregate"), "data").trim().split("\n"), [
      "btree",
      "btreeNode",
    ]);
    assert.match(ok(convex(dir, url, key, "data", "btree", "--component", "aggregate"), "data btree"), /root/);
    const between = ok(convex(dir, url, key, "run", "--component", "aggregate", "btree:aggregateBetween", "{}"), "run");
    assert.match(between, /"count": 2/);
    assert.doesNotMatch(ok(convex(dir, url, key, "data"), "data"), /btree/);
    const missing = convex(dir, url, key, "data", "--component", "nowhere");
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /mounts no component at "nowhere"/);
    // Clients reach the app's functions only.
    await assert.rejects(new ConvexHttpClient(url).query("btree:aggregateBetween", {}), /Could not find/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
});
