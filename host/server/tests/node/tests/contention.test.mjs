// Contention through the official client: many users moving money between a few hot accounts
// over WebSocket. A mutation that loses an optimistic-concurrency race is retried inside the
// server, so no user ever sees a conflict error, and no money appears or disappears.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { createDeployment, deploy, repoRoot, startServer } from "./helpers.mjs";

const api = anyApi;
let server;
let bankUrl;
const clients = [];

before(async () => {
  server = await startServer();
  const key = await createDeployment(server, "bank");
  bankUrl = `${server.url}/d/bank`;
  deploy(bankUrl, key, join(repoRoot, "examples/bank"));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("64 clients moving money between 10 hot accounts: no failed mutation, money conserved", async () => {
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
});
