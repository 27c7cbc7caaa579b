// Transfers through the official ConvexClient over WebSocket, one client per simulated user,
// each in a closed loop. Prints `measuring` when the measured window starts and
// `done {ops, seconds, p50, p99, failed, cpuMicros}` when it ends.
// Usage: node official-client.mjs <deployment url> <accounts.json> <clients> <warm-up s> <seconds>
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";

const [url, accountsFile, clientCount, warmup, seconds] = process.argv.slice(2);
const accounts = JSON.parse(readFileSync(accountsFile, "utf8"));
const n = accounts.length;
let measuring = false;
let stop = false;
let failed = 0;
const latencies = [];

async function user(client) {
  while (!stop) {
    const from = Math.floor(Math.random() * n);
    const to = (from + 1 + Math.floor(Math.random() * (n - 1))) % n;
    const started = performance.now();
    let ok = true;
    try {
      await client.mutation(anyApi.accounts.move, { from: accounts[from], to: accounts[to], amount: 1n });
    } catch {
      ok = false;
    }
    if (measuring) {
      latencies.push(performance.now() - started);
      if (!ok) failed++;
    }
  }
}

const clients = Array.from({ length: Number(clientCount) }, () => new ConvexClient(url, { logger: false }));
const users = clients.map(user);
await sleep(Number(warmup) * 1000);
const cpu = process.cpuUsage();
const started = performance.now();
measuring = true;
console.log("measuring");
await sleep(Number(seconds) * 1000);
measuring = false;
const elapsed = (performance.now() - started) / 1000;
const used = process.cpuUsage(cpu);
latencies.sort((a, b) => a - b);
const at = (p) => latencies[Math.round((latencies.length - 1) * p)] ?? NaN;
const report = { ops: latencies.length, seconds: elapsed, p50: at(0.5), p99: at(0.99), failed, cpuMicros: used.user + used.system };
console.log(`done ${JSON.stringify(report)}`);
stop = true;
await Promise.all(users);
await Promise.all(clients.map((c) => c.close()));
process.exit(0);
