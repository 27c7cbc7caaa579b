// Benchmarks of the official `convex` CLI against `kiln serve` (issue: the Convex CLI drop-in):
// push-to-serving time of `npx convex deploy` (the chat example, and an app with a ~1 MB
// bundle), the server's memory during a push, and `npx convex export`/`import` rates for
// 100,000 documents. Loopback only; the CLI runs with CI=1.
//
//   node bench/cli.mjs [--docs=100000] [--rounds=3]
//
// KILN_BIN picks the server binary (default: target/release/kiln if built, else target/debug).
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConvexHttpClient } from "convex/browser";
import { convex, ok, project, selfHosted } from "../tests/cli.mjs";
import { chatApp, kiln, repoRoot, startServer } from "../tests/helpers.mjs";

const arg = (name, fallback) => {
  const found = process.argv.find((a) => a.startsWith(`--${name}=`));
  return found ? Number(found.split("=")[1]) : fallback;
};
const DOCS = arg("docs", 100_000);
const ROUNDS = arg("rounds", 3);
if (!process.env.KILN_BIN && existsSync(join(repoRoot, "target/release/kiln"))) {
  process.env.KILN_BIN = join(repoRoot, "target/release/kiln");
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

/** Peak resident memory (KiB) of `pid` while `work` runs, sampled every 10 ms. */
async function peakRss(pid, work) {
  const rss = () => {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  };
  const before = rss();
  let peak = before;
  const timer = setInterval(() => (peak = Math.max(peak, rss())), 10);
  try {
    const out = await work();
    return { out, before, peak: Math.max(peak, rss()) };
  } finally {
    clearInterval(timer);
  }
}

/** Wall time of a CLI command (ms). */
function timed(dir, url, key, ...args) {
  const t = performance.now();
  ok(convex(dir, url, key, ...args), args.join(" "));
  return performance.now() - t;
}

/** An app whose bundle is about `kib` KiB: many small queries over one table. */
function bigApp(dir, kib) {
  mkdirSync(join(dir, "convex"), { recursive: true });
  let source = 'import { v } from "convex/values";\nimport { query } from "./_generated/server";\n';
  let i = 0;
  while (source.length < kib * 1024) {
    source += `export const q${i} = query({ args: { n: v.number() }, handler: async (ctx, { n }) => {\n` +
      `  const rows = await ctx.db.query("rows").take(${(i % 50) + 1});\n` +
      `  return { index: ${i}, total: rows.length + n, label: ${JSON.stringify(`query number ${i} of the big app`)} };\n} });\n`;
    i++;
  }
  writeFileSync(join(dir, "convex/big.ts"), source);
  writeFileSync(
    join(dir, "convex/schema.ts"),
    'import { defineSchema, defineTable } from "convex/server";\nimport { v } from "convex/values";\n' +
      "export default defineSchema({ rows: defineTable({ n: v.number() }) });\n",
  );
}

/** An app with a mutation that inserts documents in bulk, for the export and import rates. */
function seedApp(dir) {
  mkdirSync(join(dir, "convex"), { recursive: true });
  writeFileSync(
    join(dir, "convex/seed.ts"),
    'import { v } from "convex/values";\nimport { mutation } from "./_generated/server";\n' +
      "export const bulk = mutation({ args: { from: v.number(), count: v.number() }, handler: async (ctx, { from, count }) => {\n" +
      "  for (let i = from; i < from + count; i++) {\n" +
      '    await ctx.db.insert("docs", { i, big: BigInt(i) * 1000n, tag: `doc-${i}`, bytes: new Uint8Array([i % 256, 7]).buffer });\n' +
      "  }\n} });\n",
  );
}

const server = await startServer();
const [url, key] = selfHosted(server.output());
const pid = server.pid;
console.log(`kiln: ${process.env.KILN_BIN ?? "target/debug/kiln"}\n`);
const rows = [];
try {
  // Push-to-serving. The CLI's own part (bundling, codegen) is timed with `--write-push-request`,
  // which does everything but the push; the difference is the server's.
  for (const [name, make] of [
    ["chat example", (dir) => dir],
    ["app with a ~1 MB bundle", (dir) => (bigApp(dir, 1024), dir)],
  ]) {
    const created = kiln("deployments", "create", `b${rows.length}`, "--url", server.url, "--admin-key", server.adminKey);
    const [u, k] = selfHosted(created.stdout);
    const dir = make(project(name === "chat example" ? chatApp : undefined));
    const pushes = [];
    const local = [];
    let memory = null;
    for (let round = 0; round < ROUNDS; round++) {
      // A change every round, so that each push compiles.
      writeFileSync(join(dir, "convex/round.ts"), `export const round = ${round + Math.random()};\n`);
      const request = join(dir, `request-${round}`);
      local.push(timed(dir, u, k, "deploy", "-y", "--typecheck", "disable", "--write-push-request", request));
      if (pid && round === ROUNDS - 1) {
        const measured = await peakRss(pid, async () => timed(dir, u, k, "deploy", "-y", "--typecheck", "disable"));
        pushes.push(measured.out);
        memory = measured;
      } else {
        pushes.push(timed(dir, u, k, "deploy", "-y", "--typecheck", "disable"));
      }
    }
    const bundle = statSync(join(dir, `request-0.json`)).size;
    rows.push([
      `push-to-serving, ${name} (push request ${(bundle / 1024).toFixed(0)} KiB)`,
      `${seconds(median(pushes) - median(local))} (deploy ${seconds(median(pushes))}, CLI alone ${seconds(median(local))}; first ${seconds(pushes[0] - local[0])})`,
    ]);
    if (memory) {
      rows.push([`server RSS during that push`, `${(memory.before / 1024).toFixed(0)} MiB before, peak ${(memory.peak / 1024).toFixed(0)} MiB`]);
    }
    rmSync(dir, { recursive: true, force: true });
  }

  // Export and import of DOCS documents.
  const created = kiln("deployments", "create", "copy", "--url", server.url, "--admin-key", server.adminKey);
  const [copyUrl, copyKey] = selfHosted(created.stdout);
  const dir = project();
  seedApp(dir);
  ok(convex(dir, url, key, "deploy", "-y", "--typecheck", "disable"), "deploy seed app");
  ok(convex(dir, copyUrl, copyKey, "deploy", "-y", "--typecheck", "disable"), "deploy seed app");
  const client = new ConvexHttpClient(url);
  client.setAdminAuth(key);
  for (let from = 0; from < DOCS; from += 2000) {
    await client.mutation("seed:bulk", { from, count: Math.min(2000, DOCS - from) });
  }
  const zip = join(dir, "snapshot.zip");
  const exportMs = timed(dir, url, key, "export", "--path", zip);
  const importMs = timed(dir, copyUrl, copyKey, "import", zip, "-y");
  rows.push([`export of ${DOCS} documents (ZIP ${(statSync(zip).size / 1048576).toFixed(1)} MiB)`, `${seconds(exportMs)}, ${Math.round(DOCS / (exportMs / 1000))} documents/s`]);
  rows.push([`import of ${DOCS} documents into a fresh deployment`, `${seconds(importMs)}, ${Math.round(DOCS / (importMs / 1000))} documents/s`]);
  rmSync(dir, { recursive: true, force: true });
} finally {
  await server.stop();
}
console.log("| measurement | figure |\n|---|---|");
for (const [what, figure] of rows) console.log(`| ${what} | ${figure} |`);
