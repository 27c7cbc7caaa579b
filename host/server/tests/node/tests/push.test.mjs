// `npx convex deploy` and `npx convex dev` (the official CLI, convex 1.48) pushing to a real
// `kiln serve`: the server compiles the CLI's own bundle (several modules), applies the schema
// and switches, or refuses with the CLI printing why and the old version serving on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConvexHttpClient } from "convex/browser";
import { convex, ok, project, selfHosted, watch } from "./cli.mjs";
import { createPublicKey } from "node:crypto";
import { chatApp, deploy, jwt, kiln, now, rsaKeys, startServer, testApp, waitFor } from "./helpers.mjs";

const bankApp = join(chatApp, "../bank");

/** `npx convex deploy` without the CLI's type check (it needs no TypeScript here). */
const push = (dir, url, key, ...args) => convex(dir, url, key, "deploy", "-y", "--typecheck", "disable", ...args);

/** Admin log entries of a deployment's calls of `path` (`/api/kiln/logs`). */
async function calls(url, key, path) {
  const res = await fetch(`${url}/api/kiln/logs`, { headers: { Authorization: `Convex ${key}` } });
  assert.equal(res.status, 200);
  const lines = (await res.text()).trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  return lines.filter((e) => e.path === path);
}

test("convex deploy pushes the chat example at the root and under /d/<name>, and its functions serve", async () => {
  const server = await startServer();
  const [rootUrl, rootKey] = selfHosted(server.output());
  const created = kiln("deployments", "create", "talk", "--url", server.url, "--admin-key", server.adminKey);
  assert.equal(created.status, 0, created.stderr);
  const dirs = [];
  try {
    for (const [url, key] of [[rootUrl, rootKey], selfHosted(created.stdout)]) {
      const dir = project(chatApp);
      dirs.push(dir);
      const pushed = push(dir, url, key);
      ok(pushed, "deploy");
      assert.match(pushed.stderr, /Added table indexes:[\s\S]*messages\.by_author/);
      assert.match(pushed.stderr, /Deployed Convex functions/);
      ok(convex(dir, url, key, "run", "messages:send", '{"author": "ada", "body": "pushed"}'), "run send");
      assert.match(ok(convex(dir, url, key, "run", "messages:list"), "run list"), /"body": "pushed"/);
      assert.match(ok(convex(dir, url, key, "data", "messages", "--format", "jsonl"), "data"), /"body": "pushed"/);
      // The official client, through the index the push created.
      const client = new ConvexHttpClient(url);
      const mine = await client.query("messages:byAuthor", { author: "ada" });
      assert.deepEqual(mine.map((m) => m.body), ["pushed"]);
      // Nothing changed: the CLI sends the modules' hashes only, and the push still works.
      ok(push(dir, url, key), "deploy again");
      assert.equal((await client.query("messages:list", {})).length, 1);
    }
    // The two deployments are apart.
    const other = new ConvexHttpClient(`${server.url}/d/talk`);
    await other.mutation("messages:send", { author: "bo", body: "only here" });
    assert.equal((await new ConvexHttpClient(rootUrl).query("messages:list", {})).length, 1);
    assert.equal((await other.query("messages:list", {})).length, 2);
  } finally {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
});

test("a push adding an index backfills it; a schema the data breaks, --dry-run and a Node.js module change nothing; dev --once and dev push", async () => {
  const server = await startServer();
  const [url, key] = selfHosted(server.output());
  const dir = project(chatApp);
  const client = new ConvexHttpClient(url);
  try {
    ok(push(dir, url, key), "deploy");
    const id = JSON.parse(ok(convex(dir, url, key, "run", "messages:send", '{"author": "ada", "body": "one"}'), "send"));
    await client.mutation("messages:like", { id });

    // A new index on documents that exist: backfilled before the version switches.
    const schema = join(dir, "convex/schema.ts");
    const original = readFileSync(schema, "utf8");
    writeFileSync(schema, original.replace('.index("by_author", ["author"])', '.index("by_author", ["author"]).index("by_likes", ["likes"])'));
    appendFileSync(
      join(dir, "convex/messages.ts"),
      `\nexport const popular = query({ args: {}, handler: async (ctx) => await ctx.db.query("messages").withIndex("by_likes", (q) => q.gte("likes", 1)).collect() });\n`,
    );
    const added = push(dir, url, key);
    ok(added, "deploy with an index");
    assert.match(added.stderr, /Added table indexes:[\s\S]*messages\.by_likes/);
    assert.deepEqual((await client.query("messages:popular", {})).map((m) => m.body), ["one"]);

    // A schema the data breaks: refused naming the document; the old version serves on.
    writeFileSync(schema, readFileSync(schema, "utf8").replace("likes: v.number()", "likes: v.string()"));
    const broken = push(dir, url, key);
    assert.notEqual(broken.status, 0);
    assert.match(broken.stdout + broken.stderr, /Schema validation failed/);
    assert.match(broken.stdout + broken.stderr, new RegExp(`${id}.*breaks the new schema`));
    assert.equal((await client.query("messages:popular", {})).length, 1);
    await client.mutation("messages:like", { id });
    writeFileSync(schema, readFileSync(schema, "utf8").replace("likes: v.string()", "likes: v.number()"));

    // --dry-run reports what would change and changes nothing.
    writeFileSync(
      join(dir, "convex/extra.ts"),
      'import { query } from "./_generated/server";\nexport const hello = query({ args: {}, handler: async () => "hello" });\n',
    );
    writeFileSync(schema, readFileSync(schema, "utf8").replace('.index("by_likes", ["likes"])', '.index("by_likes", ["likes"]).index("by_body", ["body"])'));
    const dry = push(dir, url, key, "--dry-run");
    ok(dry, "deploy --dry-run");
    assert.match(dry.stderr, /Would add table indexes:[\s\S]*messages\.by_body/);
    const missing = convex(dir, url, key, "run", "extra:hello");
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /Could not find function/);

    // A "use node" module is refused by name; nothing changes.
    writeFileSync(
      join(dir, "convex/nodey.ts"),
      '"use node";\nimport { action } from "./_generated/server";\nexport const run = action({ args: {}, handler: async () => 1 });\n',
    );
    const node = push(dir, url, key);
    assert.notEqual(node.status, 0);
    assert.match(node.stdout + node.stderr, /Node\.js modules \("use node" in convex\/nodey\) are not supported yet/);
    assert.notEqual(convex(dir, url, key, "run", "extra:hello").status, 0);
    rmSync(join(dir, "convex/nodey.ts"));

    // `dev --once` pushes (the dry run's changes now land).
    ok(convex(dir, url, key, "dev", "--once", "--typecheck", "disable"), "dev --once");
    assert.equal(await client.query("extra:hello", {}), "hello");
    assert.match(readFileSync(join(dir, ".env.local"), "utf8"), new RegExp(`CONVEX_URL=${url}`));

    // `dev` watches and pushes again when a file changes.
    const dev = watch(dir, url, key, "dev", "--typecheck", "disable");
    try {
      await waitFor(() => /Convex functions ready/.test(dev.out()), 60_000, "the first push of convex dev");
      writeFileSync(
        join(dir, "convex/extra.ts"),
        'import { query } from "./_generated/server";\nexport const hello = query({ args: {}, handler: async () => "hello again" });\n',
      );
      await waitFor(async () => (await client.query("extra:hello", {})) === "hello again", 60_000, "the re-push of convex dev");
    } finally {
      dev.kill();
    }
    // The document kept its data through all of it.
    assert.equal((await client.query("messages:list", {}))[0].likes, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
});

test("a pushed app runs at the fuel of the same app built by kiln build, with Convex's semantics", async () => {
  const server = await startServer();
  const [url, key] = selfHosted(server.output());
  const created = kiln("deployments", "create", "built", "--url", server.url, "--admin-key", server.adminKey);
  assert.equal(created.status, 0, created.stderr);
  const [builtUrl, builtKey] = selfHosted(created.stdout);
  const bank = project(bankApp);
  const app = project(testApp);
  try {
    ok(push(bank, url, key), "deploy bank");
    deploy(builtUrl, builtKey, bankApp);
    for (const target of [url, builtUrl]) {
      const client = new ConvexHttpClient(target);
      const a = await client.mutation("accounts:open", { owner: "a", balance: 1000n });
      const b = await client.mutation("accounts:open", { owner: "b", balance: 0n });
      for (let i = 0; i < 5; i++) await client.mutation("accounts:transfer", { from: a, to: b, amount: 10n });
      assert.equal((await client.query("accounts:get", { id: b })).balance, 50n);
    }
    for (const path of ["accounts:transfer", "accounts:get", "accounts:open"]) {
      const pushed = (await calls(url, key, path)).map((c) => c.fuel);
      const built = (await calls(builtUrl, builtKey, path)).map((c) => c.fuel);
      assert.ok(pushed.length > 0 && pushed.length === built.length, `${path}: ${pushed} vs ${built}`);
      for (let i = 0; i < pushed.length; i++) {
        const ratio = pushed[i] / built[i];
        assert.ok(Math.abs(ratio - 1) <= 0.05, `${path} call ${i}: pushed ${pushed[i]} fuel, built ${built[i]}`);
      }
    }

    // A nested call's ConvexError is the app's ConvexError (`instanceof` holds), with its data.
    ok(push(app, url, key), "deploy the test app");
    const client = new ConvexHttpClient(url);
    const caught = await client.action("values:catchNested", {});
    assert.equal(caught.isConvexError, true);
    assert.equal(caught.data.code, "BROKEN");
    assert.equal(caught.data.count, 3n);
    // Errors and values cross as with `kiln build`.
    await assert.rejects(client.mutation("values:fail", {}), (e) => e.data?.code === "BROKEN");
    const value = { big: 2n ** 60n, bytes: new Uint8Array([1, 2, 3]).buffer, list: [1.5, "x", null] };
    const echoed = await client.query("values:echo", { value });
    assert.equal(echoed.big, 2n ** 60n);
    assert.deepEqual([...new Uint8Array(echoed.bytes)], [1, 2, 3]);
  } finally {
    rmSync(bank, { recursive: true, force: true });
    rmSync(app, { recursive: true, force: true });
    await server.stop();
  }
});

test("a pushed auth.config.ts configures the deployment's identity providers, with the deployment's environment", async () => {
  const server = await startServer();
  const [url, key] = selfHosted(server.output());
  const dir = project(testApp);
  try {
    const keys = rsaKeys();
    const jwks = { keys: [{ ...createPublicKey(keys.publicKey).export({ format: "jwk" }), alg: "RS256", use: "sig" }] };
    const uri = `data:text/plain;charset=utf-8;base64,${Buffer.from(JSON.stringify(jwks)).toString("base64")}`;
    const issuer = "https://issuer.kiln.test";
    // As Convex apps write it: the provider's details from the deployment's variables.
    writeFileSync(
      join(dir, "convex/auth.config.ts"),
      "export default {\n  providers: [\n    { type: \"customJwt\", applicationID: process.env.AUTH_AUDIENCE, issuer: process.env.AUTH_ISSUER, jwks: process.env.AUTH_JWKS, algorithm: \"RS256\" },\n  ],\n};\n",
    );
    for (const [name, value] of [["AUTH_AUDIENCE", "pushed-app"], ["AUTH_ISSUER", issuer], ["AUTH_JWKS", uri]]) {
      ok(convex(dir, url, key, "env", "set", name, value), "env set");
    }
    ok(push(dir, url, key), "deploy with auth.config.ts");
    const client = new ConvexHttpClient(url, { logger: false });
    const claims = { iss: issuer, sub: "user-7", aud: "pushed-app", iat: now(), exp: now() + 600, name: "Ada" };
    client.setAuth(jwt(claims, { privateKey: keys.privateKey }));
    const identity = await client.query("auth:whoami", {});
    assert.equal(identity?.tokenIdentifier, `${issuer}|user-7`);
    // A token for another audience is refused.
    client.setAuth(jwt({ ...claims, aud: "other" }, { privateKey: keys.privateKey }));
    await assert.rejects(client.query("auth:whoami", {}));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await server.stop();
  }
});
