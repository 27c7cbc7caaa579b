// Contention through the official client: many users moving money between a few hot accounts
// over WebSocket. A mutation that loses an optimistic-concurrency race is retried inside the
// server, so no user ever sees a conflict error, and no money appears or disappears. The bank
// runs on SQLite files and, with `kiln serve --database`, on the PostgreSQL cluster
// `KILN_TEST_POSTGRES_URL` names (the README's test command starts one).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { createDeployment, deploy, repoRoot, startServer } from "./helpers.mjs";

const api = anyApi;

/** The bank on a fresh server (`args`: extra `kiln serve` arguments); 64 clients move money. */
async function hotAccounts(args) {
  const server = await startServer({ args });
  const clients = [];
  try {
    // A name no earlier run used: a PostgreSQL cluster outlives a test's server.
    const name = `bank${Date.now()}`;
    const key = await createDeployment(server, name);
    const bankUrl = `${server.url}/d/${name}`;
    deploy(bankUrl, key, join(repoRoot, "examples/bank"));
    const http = new ConvexHttpClient(bankUrl, { logger: false });
    const accounts = [];
    for (let i = 0; i < 10; i++) {
      accounts.push(await http.mutation(api.accounts.open, { owner: `hot-${i}`, balance: 1000n }));
    }
    for (let i = 0; i < 64; i++) clients.push(new ConvexClient(bankUrl, { logger: false }));
    const until = Date.now() + 4000;
    const failures = [];
    let done = 0;
    await Promise.all(
      clients.map(async (client) => {
        while (Date.now() < until) {
          const from = Math.floor(Math.random() * 10);
          const to = (from + 1 + Math.floor(Math.random() * 9)) % 10;
          try {
            await client.mutation(api.accounts.move, { from: accounts[from], to: accounts[to], amount: 1n });
            done++;
          } catch (e) {
            failures.push(String(e?.message ?? e));
          }
        }
      }),
    );
    console.log(`${done} transfers between 10 accounts from 64 clients`);
    assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${done + failures.length} transfers failed`);
    assert.ok(done > 64 * 5, `the clients did run (${done} transfers)`);
    assert.equal(await http.query(api.accounts.total, {}), 10_000n);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.stop();
  }
}

test("64 clients moving money between 10 hot accounts: no failed mutation, money conserved", async () => {
  await hotAccounts([]);
});

test("the same on PostgreSQL (kiln serve --database)", async (t) => {
  const url = process.env.KILN_TEST_POSTGRES_URL;
  if (!url) {
    assert.ok(!process.env.CI, "KILN_TEST_POSTGRES_URL is not set in CI");
    return t.skip("KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
  }
  await hotAccounts(["--database", url]);
});
