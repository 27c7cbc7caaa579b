// Deploys: a new version with an added index backfills it and serves; a schema the existing
// data violates is refused (naming the document) and the old version keeps serving.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { deploy, kiln, startServer, testApp } from "./helpers.mjs";

const api = anyApi;
// App variants live under this package so that `convex` resolves from its node_modules.
const workDir = resolve(dirname(fileURLToPath(import.meta.url)), "../.work");
let server;
let scratch;

/** A copy of the test app with `edit(files)` applied to its convex/ sources. */
function variant(name, edit) {
  const dir = join(scratch, name);
  cpSync(join(testApp, "convex"), join(dir, "convex"), {
    recursive: true,
    filter: (src) => !src.includes("_generated"),
  });
  cpSync(join(testApp, "tsconfig.json"), join(dir, "tsconfig.json"));
  const file = (f) => join(dir, "convex", f);
  edit({
    read: (f) => readFileSync(file(f), "utf8"),
    write: (f, text) => writeFileSync(file(f), text),
  });
  return dir;
}

before(async () => {
  mkdirSync(workDir, { recursive: true });
  scratch = mkdtempSync(join(workDir, "deploy-"));
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
});

after(async () => {
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

test("an added index is backfilled and served; a violated schema is refused", async () => {
  const http = new ConvexHttpClient(server.url, { logger: false });
  const ids = [];
  for (const [name, rank] of [["c", 3], ["a", 1], ["b", 2]]) {
    ids.push(await http.mutation(api.items.add, { name, rank }));
  }

  const v2 = variant("v2", (f) => {
    f.write(
      "schema.ts",
      f.read("schema.ts").replace(
        "items: defineTable({ name: v.string(), rank: v.number() }),",
        'items: defineTable({ name: v.string(), rank: v.number() }).index("by_rank", ["rank"]),',
      ),
    );
    f.write(
      "items.ts",
      `${f.read("items.ts")}
/** Items in rank order, through the new index. */
export const ranked = query({
  args: {},
  handler: async (ctx) => (await ctx.db.query("items").withIndex("by_rank").collect()).map((i) => i.name),
});
`,
    );
  });
  await assert.rejects(http.query(api.items.ranked, {}), /Could not find public function/);
  deploy(server.url, server.adminKey, v2);
  assert.deepEqual(await http.query(api.items.ranked, {}), ["a", "b", "c"], "existing documents are in the new index");
  await http.mutation(api.items.add, { name: "first", rank: 0 });
  assert.deepEqual(await http.query(api.items.ranked, {}), ["first", "a", "b", "c"]);

  const v3 = variant("v3", (f) => {
    f.write(
      "schema.ts",
      f.read("schema.ts").replace(
        "items: defineTable({ name: v.string(), rank: v.number() })",
        "items: defineTable({ name: v.string(), rank: v.string() })",
      ),
    );
    f.write("items.ts", `${f.read("items.ts")}\nexport const v3Only = query({ args: {}, handler: async () => "v3" });\n`);
  });
  const r = kiln("deploy", v3, "--url", server.url, "--admin-key", server.adminKey);
  assert.notEqual(r.status, 0, "the deploy must fail");
  assert.match(r.stderr, /SchemaViolation/);
  assert.ok(ids.some((id) => r.stderr.includes(id)), `the error names the failing document: ${r.stderr}`);
  assert.deepEqual(await http.query(api.items.ranked, {}), ["first", "a", "b", "c"], "the old version keeps serving");
  await assert.rejects(http.query(api.items.v3Only, {}), /Could not find public function/);
});

test("a component with a mismatched manifest, or that is not a component, is refused", async () => {
  const post = (body) =>
    fetch(`${server.url}/api/kiln/deploy`, {
      method: "POST",
      headers: { Authorization: `Convex ${server.adminKey}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  const junk = await post({ component: Buffer.from("not wasm at all").toString("base64") });
  assert.equal(junk.status, 400);
  const wasm = readFileSync(join(testApp, ".kiln/app.wasm")).toString("base64");
  const manifest = JSON.parse(readFileSync(join(testApp, ".kiln/manifest.json"), "utf8"));
  manifest.functions = manifest.functions.slice(1);
  const mismatch = await post({ component: wasm, manifest });
  assert.equal(mismatch.status, 400);
  assert.equal((await mismatch.json()).code, "DeployRejected");
});

test("kiln config sets where a deployment's actions may fetch", async () => {
  const remote = ["--url", server.url, "--admin-key", server.adminKey];
  const set = kiln("config", "fetch", "--allow", "127.0.0.1:9", "--deny", "*.blocked.test", ...remote);
  assert.equal(set.status, 0, set.stderr);
  const shown = kiln("config", "show", ...remote);
  assert.equal(shown.status, 0, shown.stderr);
  const config = JSON.parse(shown.stdout);
  assert.deepEqual(config.fetch, { allowedHosts: ["127.0.0.1:9"], deniedHosts: ["*.blocked.test"], onlyAllowed: false });
  const bad = kiln("config", "fetch", "--allow", "http://x/y", ...remote);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /BadRequest.*invalid fetch host/);
});
