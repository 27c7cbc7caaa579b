// Benchmarks of the scheduler (issue: platform services): scheduled mutations executed per
// second with 10,000 due at once, and the lateness (completion − scheduled time) p50/p99 of
// timed jobs spread over ten seconds. Loopback only.
//
//   node bench/scheduler.mjs [--burst=10000] [--timed=500]
//
// KILN_BIN picks the server binary (default: target/release/kiln if built, else target/debug);
// BENCH_SERVER_ENV (JSON) adds environment variables of the server, e.g.
// '{"KILN_REVISION_RETENTION_SECS":"2","KILN_PRUNE_INTERVAL_SECS":"1"}'.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ConvexHttpClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import { deploy, repoRoot, startServer, testApp, waitFor as pollUntil } from "../tests/helpers.mjs";

const arg = (name, fallback) => {
  const found = process.argv.find((a) => a.startsWith(`--${name}=`));
  return found ? Number(found.split("=")[1]) : fallback;
};
const BURST = arg("burst", 10_000);
const TIMED = arg("timed", 500);
if (!process.env.KILN_BIN && existsSync(join(repoRoot, "target/release/kiln"))) {
  process.env.KILN_BIN = join(repoRoot, "target/release/kiln");
}
// Polls every 250 ms: rarely enough not to load the server being measured.
const waitFor = (predicate, ms, what) => pollUntil(predicate, ms, what, 250);
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];

const server = await startServer({ env: process.env.BENCH_SERVER_ENV ? JSON.parse(process.env.BENCH_SERVER_ENV) : {} });
try {
  deploy(server.url, server.adminKey, testApp);
  const http = new ConvexHttpClient(server.url, { logger: false });

  // 10,000 due at the same moment: scheduled in batches of 1,000 (Convex's per-call limit).
  const dueAt = Date.now() + 3000;
  for (let i = 0; i < BURST / 1000; i++) {
    await http.mutation(api.jobs.many, { prefix: `burst${i}`, n: 1000, delayMs: dueAt - Date.now() });
  }
  await waitFor(async () => Date.now() >= dueAt, 10_000, "the due time");
  await waitFor(async () => (await http.query(api.jobs.tally, { prefix: "burst" })).runs >= BURST, 600_000, "the burst to run");
  // When the last job completed, from the jobs themselves (not from the polling).
  const burstLate = await http.query(api.jobs.lateness, { prefix: "burst" });
  const seconds = Math.max(...burstLate) / 1000;
  console.log(`burst: ${BURST} scheduled mutations due at once ran in ${seconds.toFixed(2)} s: ${Math.round(BURST / seconds)}/s`);

  // Timed jobs on an idle deployment: spread over 10 s.
  await http.mutation(api.jobs.many, { prefix: "timed", n: TIMED, delayMs: 1000, spreadMs: 10_000 });
  await waitFor(async () => (await http.query(api.jobs.tally, { prefix: "timed" })).runs >= TIMED, 60_000, "timed jobs");
  const late = await http.query(api.jobs.lateness, { prefix: "timed" });
  console.log(`timed: ${late.length} jobs, lateness p50 ${pct(late, 50).toFixed(1)} ms, p99 ${pct(late, 99).toFixed(1)} ms`);
} finally {
  await server.stop();
}
