// The scheduler through the official clients: `ctx.scheduler.runAfter/runAt/cancel` from
// mutations and actions, `_scheduled_functions` read through `ctx.db.system`, Convex's limits,
// and exactly-once scheduled mutations across a SIGKILL of the server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { deploy, nextUpdate, startServer, testApp, waitFor } from "./helpers.mjs";

const api = anyApi;
let server;
let http;
// App variants live under this package so that `convex` resolves from its node_modules.
const workDir = resolve(dirname(fileURLToPath(import.meta.url)), "../.work");
let scratch;

/** A copy of the test app with `crons.ts` (none when `crons` is null). */
function withCrons(name, crons) {
  const dir = join(scratch, name);
  cpSync(join(testApp, "convex"), join(dir, "convex"), { recursive: true, filter: (src) => !src.includes("_generated") });
  cpSync(join(testApp, "tsconfig.json"), join(dir, "tsconfig.json"));
  if (crons !== null) {
    writeFileSync(
      join(dir, "convex", "crons.ts"),
      `import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";
const crons = cronJobs();
${crons}
export default crons;
`,
    );
  }
  return dir;
}

before(async () => {
  mkdirSync(workDir, { recursive: true });
  scratch = mkdtempSync(join(workDir, "scheduler-"));
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
  http = new ConvexHttpClient(server.url, { logger: false });
});

after(async () => {
  await server?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

test("a mutation scheduled 1 s ahead runs once, when due, and its job ends in success", async () => {
  const started = Date.now();
  const id = await http.mutation(api.jobs.later, { key: "ahead", delayMs: 1000 });
  const pending = await http.query(api.jobs.job, { id });
  assert.equal(pending.name, "jobs:record");
  assert.deepEqual(pending.args, [{ key: "ahead", by: "mutation" }]);
  assert.deepEqual(pending.state, { kind: "pending" });
  assert.ok(Math.abs(pending.scheduledTime - (started + 1000)) < 1000, "scheduledTime is about 1 s from now");

  // A subscription sees the run arrive.
  const client = new ConvexClient(server.url, { logger: false });
  try {
    const runs = await nextUpdate(client, api.jobs.runs, { key: "ahead" }, (r) => r.length > 0, 10_000);
    assert.deepEqual(runs, ["mutation"]);
    assert.ok(Date.now() - started >= 950, `ran after ${Date.now() - started} ms, not before it was due`);
  } finally {
    await client.close();
  }
  const done = await waitFor(async () => {
    const job = await http.query(api.jobs.job, { id });
    return job.state.kind === "success" && job;
  });
  assert.equal(typeof done.completedTime, "number");
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(await http.query(api.jobs.runs, { key: "ahead" }), ["mutation"], "ran exactly once");
});

test("runAfter counts from the time the mutation runs, also after the deployment was idle", async () => {
  await new Promise((r) => setTimeout(r, 3000)); // no commits meanwhile
  const before = Date.now();
  const id = await http.mutation(api.jobs.later, { key: "after-idle", delayMs: 60_000 });
  const after = Date.now();
  const { scheduledTime } = await http.query(api.jobs.job, { id });
  assert.ok(
    scheduledTime >= before + 60_000 - 5 && scheduledTime <= after + 60_000 + 5,
    `scheduled ${scheduledTime - before - 60_000} ms off the mutation's time`,
  );
  await http.mutation(api.jobs.cancel, { id });
});

test("cancel before the run prevents it; a mutation that throws schedules nothing", async () => {
  const id = await http.mutation(api.jobs.later, { key: "canceled", delayMs: 700 });
  await http.mutation(api.jobs.cancel, { id });
  assert.equal((await http.query(api.jobs.job, { id })).state.kind, "canceled");

  await assert.rejects(http.mutation(api.jobs.scheduleThenThrow, { key: "thrown" }), /changed my mind/);
  const fromAction = await http.action(api.jobs.cancelFromAction, { key: "action-canceled" });
  assert.equal((await http.query(api.jobs.job, { id: fromAction })).state.kind, "canceled");

  await new Promise((r) => setTimeout(r, 1500));
  assert.deepEqual(await http.query(api.jobs.runs, { key: "canceled" }), []);
  assert.deepEqual(await http.query(api.jobs.runs, { key: "thrown" }), []);
  assert.deepEqual(await http.query(api.jobs.runs, { key: "action-canceled" }), []);
});

test("an action schedules an action, which runs (at most once) and succeeds", async () => {
  const id = await http.action(api.jobs.fromAction, { key: "from-action" });
  await waitFor(async () => (await http.query(api.jobs.job, { id })).state.kind === "success");
  assert.deepEqual(await http.query(api.jobs.runs, { key: "from-action" }), ["action"]);
});

test("a scheduled function that throws ends failed with its error; its logs reach the function log", async () => {
  const id = await http.mutation(api.jobs.scheduleFailure, {});
  const job = await waitFor(async () => {
    const j = await http.query(api.jobs.job, { id });
    return j.state.kind === "failed" && j;
  });
  assert.match(job.state.error, /scheduled failure/);
  const log = await fetch(`${server.url}/api/kiln/logs`, { headers: { Authorization: `Convex ${server.adminKey}` } });
  assert.equal(log.status, 200);
  const text = await log.text();
  assert.match(text, /jobs:fail/, "the scheduled call is in the function log");
  assert.match(text, /ran ahead/, "a scheduled call's console output is in the function log");
});

test("what cannot be scheduled is refused by name; apps read system tables but cannot write them", async () => {
  await assert.rejects(http.mutation(api.jobs.scheduleQuery, {}), /only mutations and actions can be scheduled/);
  await assert.rejects(http.mutation(api.jobs.many, { prefix: "limit", n: 1001, delayMs: 60_000 }), /Too many functions scheduled/);
  const id = await http.mutation(api.jobs.later, { key: "tamper", delayMs: 60_000 });
  await assert.rejects(http.mutation(api.jobs.tamper, { id }), /read-only/);
  assert.equal((await http.query(api.jobs.job, { id })).name, "jobs:record");
  await http.mutation(api.jobs.cancel, { id });
  const states = await http.query(api.jobs.states, {});
  assert.ok(states.success >= 2 && states.canceled >= 3, JSON.stringify(states));
});

test("1,000 pending scheduled mutations killed mid-run with SIGKILL each run exactly once after a restart", async () => {
  const data = mkdtempSync(join(tmpdir(), "kiln-sched-crash-"));
  let crashing = await startServer({ data });
  try {
    deploy(crashing.url, crashing.adminKey, testApp);
    const client = new ConvexHttpClient(crashing.url, { logger: false });
    // Due over the next second, so the kill lands while they run.
    await client.mutation(api.jobs.many, { prefix: "crash", n: 1000, delayMs: 300, spreadMs: 1000 });
    await waitFor(async () => (await client.query(api.jobs.tally, { prefix: "crash" })).runs >= 100, 30_000, "runs");
    await crashing.kill();
    crashing = await startServer({ data });
    const again = new ConvexHttpClient(crashing.url, { logger: false });
    const done = await waitFor(async () => {
      const t = await again.query(api.jobs.tally, { prefix: "crash" });
      return t.keys === 1000 && t;
    }, 120_000, "every job to run");
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(await again.query(api.jobs.tally, { prefix: "crash" }), { runs: 1000, keys: 1000 });
    assert.equal(done.runs, 1000, "no job ran twice");
    const states = await again.query(api.jobs.states, {});
    assert.equal(states.pending ?? 0, 0);
  } finally {
    await crashing.stop();
    rmSync(data, { recursive: true, force: true });
  }
});

test("a one-second interval cron fires repeatedly, shows in _cron_jobs, and a redeploy without it stops it", async () => {
  const app = withCrons("every-second", `crons.interval("tick", { seconds: 1 }, internal.jobs.record, { key: "tick", by: "cron" });`);
  deploy(server.url, server.adminKey, app);
  await waitFor(async () => (await http.query(api.jobs.runs, { key: "tick" })).length >= 3, 15_000, "three ticks");
  const crons = await http.query(api.jobs.crons, {});
  assert.equal(crons.length, 1);
  assert.equal(crons[0].name, "tick");
  assert.equal(crons[0].cronSpec.udfPath, "jobs:record");
  assert.deepEqual(crons[0].cronSpec.cronSchedule, { type: "interval", seconds: 1 });

  deploy(server.url, server.adminKey, withCrons("none", null));
  assert.deepEqual(await http.query(api.jobs.crons, {}), []);
  // A tick already scheduled may still run; after that, none.
  await new Promise((r) => setTimeout(r, 1500));
  const stopped = (await http.query(api.jobs.runs, { key: "tick" })).length;
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal((await http.query(api.jobs.runs, { key: "tick" })).length, stopped, "no tick after the redeploy");
});

test("a cron that missed several periods while the server was down runs once, not once per period", async () => {
  const data = mkdtempSync(join(tmpdir(), "kiln-cron-down-"));
  let down = await startServer({ data });
  try {
    deploy(down.url, down.adminKey, withCrons("every-3s", `crons.interval("slow", { seconds: 3 }, internal.jobs.record, { key: "slow", by: "cron" });`));
    let client = new ConvexHttpClient(down.url, { logger: false });
    // An interval cron first runs when it is deployed.
    await waitFor(async () => (await client.query(api.jobs.runs, { key: "slow" })).length === 1, 10_000, "the first run");
    await down.kill();
    await new Promise((r) => setTimeout(r, 10_000)); // three periods missed
    down = await startServer({ data });
    client = new ConvexHttpClient(down.url, { logger: false });
    await waitFor(async () => (await client.query(api.jobs.runs, { key: "slow" })).length >= 2, 10_000, "the catch-up run");
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await client.query(api.jobs.runs, { key: "slow" })).length, 2, "one catch-up run, then the next period");
  } finally {
    await down.stop();
    rmSync(data, { recursive: true, force: true });
  }
});
