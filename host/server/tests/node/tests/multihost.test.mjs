// Three `kiln serve` hosts sharing one PostgreSQL database serve one set of deployments: each
// deployment is owned by one host (a lease in Postgres), the others forward its requests and
// sockets there. Clients on different hosts see each other's writes live; when the owner is
// killed another host takes over and nothing acknowledged is lost; a paused owner that wakes
// up after its lease moved commits nothing; a PostgreSQL restart under load fails calls clearly
// and loses nothing; files move with their deployment. Needs KILN_TEST_POSTGRES_URL (the README's test
// command starts a cluster); each run gets a database of its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { createDeployment, deploy, kiln, nextUpdate, repoRoot, startServer, testApp, waitFor } from "./helpers.mjs";

const api = anyApi;
/** Short leases and polls: a dead owner's deployments move within about three seconds. */
const clusterEnv = { KILN_POSTGRES_LEASE_SECS: "3", KILN_CLUSTER_POLL_MS: "200" };

/** A new, empty database on the server `url` names; returns its URL. */
function freshDatabase(url) {
  const name = `kiln_hosts_${Date.now()}`;
  const r = spawnSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-qc", `CREATE DATABASE ${name}`], { encoding: "utf8" });
  assert.equal(r.status, 0, `psql could not create a database: ${r.stderr}`);
  const fresh = new URL(url);
  fresh.pathname = `/${name}`;
  return fresh.toString();
}

/** `GET /api/kiln/hosts` of `server`. */
async function hosts(server) {
  const res = await fetch(`${server.url}/api/kiln/hosts`, { headers: { Authorization: `Convex ${server.adminKey}` } });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).hosts;
}

/** The URL of the live host serving `deployment`, as `server` sees it. */
async function ownerOf(server, deployment) {
  return (await hosts(server)).find((h) => h.alive && h.deployments.includes(deployment))?.url;
}

/** Waits until every deployment has a live owner and the placement stayed the same for a second. */
async function settled(server, deployments) {
  let last = "";
  let since = Date.now();
  await waitFor(
    async () => {
      const list = await hosts(server);
      const placement = JSON.stringify(list.filter((h) => h.alive).map((h) => [h.url, h.deployments]));
      const owned = list.filter((h) => h.alive).flatMap((h) => h.deployments);
      if (placement !== last || !deployments.every((d) => owned.includes(d))) {
        last = placement;
        since = Date.now();
        return false;
      }
      return Date.now() - since > 1000;
    },
    30_000,
    "the deployments to settle on hosts",
    100,
  );
}

/** Every recorded transfer's amount. */
async function transferAmounts(http) {
  const amounts = [];
  let cursor = null;
  for (;;) {
    const page = await http.query(api.accounts.history, { paginationOpts: { numItems: 500, cursor } });
    amounts.push(...page.page.map((t) => t.amount));
    if (page.isDone) return amounts;
    cursor = page.continueCursor;
  }
}

test("three hosts on one PostgreSQL database serve one set of deployments", async (t) => {
  const base = process.env.KILN_TEST_POSTGRES_URL;
  if (!base) {
    assert.ok(!process.env.CI, "KILN_TEST_POSTGRES_URL is not set in CI");
    return t.skip("KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
  }
  const database = freshDatabase(base);
  const args = ["--database", database];
  const servers = [];
  const clients = [];
  try {
    for (let i = 0; i < 3; i++) servers.push(await startServer({ args, env: clusterEnv }));
    const [a, b, c] = servers;
    assert.equal(a.adminKey, b.adminKey, "the instance admin key is shared");
    assert.equal(b.adminKey, c.adminKey);
    const key = await createDeployment(a, "bank");
    // Deployed through another host than the one that created it.
    deploy(`${b.url}/d/bank`, key, join(repoRoot, "examples/bank"));
    await settled(a, ["default", "bank"]);
    const list = await hosts(c);
    assert.equal(list.filter((h) => h.alive).length, 3, JSON.stringify(list));
    assert.ok(
      list.every((h) => h.deployments.length <= 1),
      `two deployments over three hosts: one each at most (${JSON.stringify(list)})`,
    );
    // `kiln hosts` prints every host, its state and what it serves.
    const printed = kiln("hosts", "--url", b.url, "--admin-key", b.adminKey);
    assert.equal(printed.status, 0, printed.stderr);
    const lines = printed.stdout.trim().split("\n");
    assert.equal(lines.length, 3, printed.stdout);
    assert.equal(lines.filter((l) => l.includes("alive (this host)")).length, 1, printed.stdout);
    for (const h of list) {
      const line = lines.find((l) => l.includes(h.url));
      assert.ok(line, `${h.url} is listed:\n${printed.stdout}`);
      for (const d of h.deployments) assert.ok(line.includes(d), `${h.url} serves ${d}:\n${printed.stdout}`);
    }

    const http = (server) => new ConvexHttpClient(`${server.url}/d/bank`, { logger: false });
    const accounts = [];
    for (let i = 0; i < 4; i++) {
      accounts.push(await http(servers[i % 3]).mutation(api.accounts.open, { owner: `o${i}`, balance: 1_000_000_000n }));
    }
    const total = 4_000_000_000n;

    await t.test("clients on different hosts see each other's writes live", async () => {
      const [x, y, z] = servers.map((s) => new ConvexClient(`${s.url}/d/bank`, { logger: false }));
      clients.push(x, y, z);
      const seen = nextUpdate(z, api.accounts.get, { id: accounts[1] }, (acc) => acc?.balance === 1_000_000_005n);
      await x.mutation(api.accounts.transfer, { from: accounts[0], to: accounts[1], amount: 5n });
      await seen;
      const back = nextUpdate(x, api.accounts.get, { id: accounts[0] }, (acc) => acc?.balance === 1_000_000_000n);
      await y.mutation(api.accounts.transfer, { from: accounts[1], to: accounts[0], amount: 5n });
      await back;
      assert.equal(await http(c).query(api.accounts.total, {}), total);
    });

    await t.test("killing the owner under load: another host serves it, nothing acknowledged is lost", async () => {
      const ownerUrl = await ownerOf(a, "bank");
      const owner = servers.find((s) => s.url === ownerUrl);
      assert.ok(owner, `the bank has an owner (${ownerUrl})`);
      const others = servers.filter((s) => s !== owner);
      const load = [];
      for (let i = 0; i < 16; i++) load.push(new ConvexClient(`${others[i % 2].url}/d/bank`, { logger: false }));
      clients.push(...load);
      const acked = [];
      const failures = [];
      let killedAt = 0;
      const until = Date.now() + 7000;
      const killer = (async () => {
        await new Promise((r) => setTimeout(r, 1500));
        killedAt = Date.now();
        await owner.kill();
      })();
      await Promise.all(
        load.map(async (client, n) => {
          for (let i = 1; Date.now() < until; i++) {
            const from = (n + i) % 4;
            const to = (from + 1) % 4;
            // Unique amounts: each acknowledged transfer can be found afterwards.
            const amount = BigInt(n * 1_000_000 + i);
            try {
              await client.mutation(api.accounts.transfer, { from: accounts[from], to: accounts[to], amount });
              acked.push(amount);
            } catch (e) {
              failures.push(String(e?.message ?? e));
            }
          }
        }),
      );
      await killer;
      servers.splice(servers.indexOf(owner), 1);
      rmSync(owner.data, { recursive: true, force: true });
      const after = acked.length;
      console.log(`${after} transfers acknowledged; the owner was killed ${killedAt ? "" : "never "}mid-run`);
      assert.deepEqual(failures.slice(0, 5), [], `${failures.length} transfers failed`);
      const newOwner = await waitFor(() => ownerOf(others[0], "bank"), 20_000, "a new owner");
      assert.notEqual(newOwner, ownerUrl);
      const reader = http(others[1]);
      assert.equal(await reader.query(api.accounts.total, {}), total, "money is conserved");
      const recorded = new Set((await transferAmounts(reader)).map(String));
      const missing = acked.filter((a) => !recorded.has(String(a)));
      assert.deepEqual(missing.slice(0, 5), [], `${missing.length} acknowledged transfers are missing`);
    });

    await t.test("a paused owner whose lease moved cannot commit when it resumes", async () => {
      await settled(servers[0], ["default", "bank"]);
      const ownerUrl = await ownerOf(servers[0], "bank");
      const owner = servers.find((s) => s.url === ownerUrl);
      const other = servers.find((s) => s !== owner);
      process.kill(owner.pid, "SIGSTOP");
      let resumed = false;
      try {
        await waitFor(
          async () => {
            const now = await ownerOf(other, "bank");
            return now && now !== ownerUrl;
          },
          20_000,
          "the lease to move",
          100,
        );
        const writer = http(other);
        await writer.mutation(api.accounts.transfer, { from: accounts[2], to: accounts[3], amount: 60_000_001n });
        // Transfers sent to the paused host wait in its socket buffers until it resumes.
        const stale = http(owner);
        const attempts = [];
        for (let i = 0; i < 8; i++) {
          // Above every amount of the load test's clients.
          const amount = 50_000_000n + BigInt(i);
          attempts.push(
            stale.mutation(api.accounts.transfer, { from: accounts[3], to: accounts[2], amount }).then(
              () => ({ amount, ok: true }),
              (e) => ({ amount, ok: false, error: String(e?.message ?? e) }),
            ),
          );
        }
        await new Promise((r) => setTimeout(r, 300));
        process.kill(owner.pid, "SIGCONT");
        resumed = true;
        const outcomes = await Promise.all(attempts);
        for (const o of outcomes.filter((o) => !o.ok)) {
          assert.match(o.error, /moved to another host|DeploymentUnavailable|moving|no live host|StorageLocked/, o.error);
        }
        const reader = http(other);
        assert.equal(await reader.query(api.accounts.total, {}), total, "money is conserved");
        const recorded = new Set((await transferAmounts(reader)).map(String));
        assert.ok(recorded.has("60000001"), "the new owner's transfer is there");
        for (const o of outcomes) {
          assert.equal(recorded.has(String(o.amount)), o.ok, `transfer ${o.amount}: ${o.ok ? "acknowledged" : o.error}`);
        }
        const refused = [...new Set(outcomes.filter((o) => !o.ok).map((o) => o.error))];
        console.log(`${outcomes.filter((o) => o.ok).length} of 8 transfers to the resumed host succeeded; refused: ${refused}`);
      } finally {
        if (!resumed) process.kill(owner.pid, "SIGCONT");
      }
    });
  } finally {
    await Promise.all(clients.map((cl) => cl.close()));
    for (const s of servers) await s.stop();
  }
});

test("restarting PostgreSQL under load: calls fail clearly while it is down, then succeed; nothing acknowledged is lost", async (t) => {
  if (!process.env.KILN_TEST_POSTGRES_URL) {
    assert.ok(!process.env.CI, "KILN_TEST_POSTGRES_URL is not set in CI");
    return t.skip("KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
  }
  // A cluster of its own, to stop and start (the shared one serves other tests).
  const dir = mkdtempSync(join(tmpdir(), "kiln-pg-restart-"));
  const script = join(repoRoot, ".ci/postgres");
  const pg = (...args) => {
    const r = spawnSync("bash", [script, ...args, dir], { encoding: "utf8" });
    assert.equal(r.status, 0, `.ci/postgres ${args}: ${r.stderr}`);
    return r.stdout.trim();
  };
  const url = pg("start");
  let server;
  const clients = [];
  try {
    server = await startServer({ args: ["--database", url], env: { KILN_POSTGRES_CONNECT_TIMEOUT_SECS: "1" } });
    const key = await createDeployment(server, "bank");
    const bankUrl = `${server.url}/d/bank`;
    deploy(bankUrl, key, join(repoRoot, "examples/bank"));
    const http = new ConvexHttpClient(bankUrl, { logger: false });
    const accounts = [];
    for (let i = 0; i < 4; i++) accounts.push(await http.mutation(api.accounts.open, { owner: `r${i}`, balance: 1_000_000_000n }));
    const acked = [];
    const refused = [];
    let phase = "before";
    const ran = { before: 0, down: 0, after: 0 };
    const until = { stop: false };
    for (let i = 0; i < 8; i++) clients.push(new ConvexHttpClient(bankUrl, { logger: false }));
    const load = Promise.all(
      clients.map(async (client, n) => {
        for (let i = 1; !until.stop; i++) {
          const amount = BigInt(n * 1_000_000 + i);
          const at = phase;
          try {
            await client.mutation(api.accounts.transfer, { from: accounts[n % 4], to: accounts[(n + 1) % 4], amount });
            acked.push(amount);
            ran[at]++;
          } catch (e) {
            refused.push({ at, error: String(e?.message ?? e) });
            await new Promise((r) => setTimeout(r, 50));
          }
        }
      }),
    );
    await new Promise((r) => setTimeout(r, 1500));
    pg("halt");
    phase = "down";
    await new Promise((r) => setTimeout(r, 3000));
    pg("resume");
    phase = "after";
    await waitFor(() => ran.after > 20, 30_000, "transfers to succeed after PostgreSQL returned", 100);
    until.stop = true;
    await load;
    console.log(`acknowledged ${JSON.stringify(ran)}; refused ${refused.length}: ${[...new Set(refused.map((r) => r.error))].slice(0, 3)}`);
    assert.ok(ran.before > 20, "transfers ran before the restart");
    assert.ok(refused.length > 0, "calls failed while PostgreSQL was down");
    for (const r of refused) {
      assert.match(r.error, /storage failure: PostgreSQL|StorageFailure|cannot reach the database/, r.error);
    }
    assert.equal(await http.query(api.accounts.total, {}), 4_000_000_000n, "money is conserved");
    const recorded = new Set((await transferAmounts(http)).map(String));
    const missing = acked.filter((a) => !recorded.has(String(a)));
    assert.deepEqual(missing.slice(0, 5), [], `${missing.length} acknowledged transfers are missing`);
  } finally {
    await server?.stop();
    pg("stop");
  }
});

test("a deployment's files move with it to another host", async (t) => {
  const base = process.env.KILN_TEST_POSTGRES_URL;
  if (!base) {
    assert.ok(!process.env.CI, "KILN_TEST_POSTGRES_URL is not set in CI");
    return t.skip("KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
  }
  const args = ["--database", freshDatabase(base)];
  const servers = [];
  try {
    for (let i = 0; i < 2; i++) servers.push(await startServer({ args, env: clusterEnv }));
    deploy(servers[1].url, servers[1].adminKey, testApp);
    const ownerUrl = await waitFor(() => ownerOf(servers[0], "default"), 10_000, "an owner");
    const owner = servers.find((s) => s.url === ownerUrl);
    const other = servers.find((s) => s !== owner);
    const http = new ConvexHttpClient(other.url, { logger: false });
    const bytes = randomBytes(3 << 20);
    const uploadUrl = new URL(await http.mutation(api.files.generateUploadUrl, {}));
    // Through the host that does not serve the deployment: forwarded to its owner.
    const res = await fetch(`${other.url}${uploadUrl.pathname}${uploadUrl.search}`, { method: "POST", body: bytes });
    assert.equal(res.status, 200, await res.clone().text());
    const { storageId } = await res.json();
    await owner.kill();
    rmSync(owner.data, { recursive: true, force: true });
    servers.splice(servers.indexOf(owner), 1);
    const { url } = await http.query(api.files.describe, { storageId });
    const path = new URL(url).pathname;
    const back = Buffer.from(await (await fetch(`${other.url}${path}`)).arrayBuffer());
    assert.ok(back.equals(bytes), `the file downloads byte-identical from the new owner (${back.length} bytes)`);
  } finally {
    for (const s of servers) await s.stop();
  }
});
