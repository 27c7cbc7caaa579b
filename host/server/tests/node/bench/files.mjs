// Benchmarks of file storage and HTTP actions (issue: platform services): upload and download
// MB/s of a 1 GB file with the server's resident memory (peak) during each transfer, and
// requests/s with p50/p99 latency of a JSON echo HTTP action. Loopback only.
//
//   node bench/files.mjs [--mb=1024] [--requests=5000] [--concurrency=16]
//
// KILN_BIN picks the server binary (default: target/release/kiln if built, else target/debug).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { ConvexHttpClient } from "convex/browser";
import { anyApi as api } from "convex/server";
import { deploy, repoRoot, startServer, testApp } from "../tests/helpers.mjs";

const arg = (name, fallback) => {
  const found = process.argv.find((a) => a.startsWith(`--${name}=`));
  return found ? Number(found.split("=")[1]) : fallback;
};
const MB = arg("mb", 1024);
const REQUESTS = arg("requests", 5000);
const CONCURRENCY = arg("concurrency", 16);
if (!process.env.KILN_BIN && existsSync(join(repoRoot, "target/release/kiln"))) {
  process.env.KILN_BIN = join(repoRoot, "target/release/kiln");
}
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const rss = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) / 1024;

/** Runs `transfer` while sampling the server's RSS; answers [seconds, MiB before, peak MiB]. */
async function measured(pid, transfer) {
  const before = rss(pid);
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, rss(pid))), 20);
  const started = process.hrtime.bigint();
  await transfer();
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  clearInterval(sampler);
  return [seconds, before, Math.max(peak, rss(pid))];
}

const server = await startServer({ env: { KILN_MAX_FILE_BYTES: String((MB + 1) << 20) } });
try {
  deploy(server.url, server.adminKey, testApp);
  const http = new ConvexHttpClient(server.url, { logger: false });

  const chunk = randomBytes(1 << 20);
  let storageId;
  const [up, upBefore, upPeak] = await measured(server.pid, async () => {
    let sent = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (sent >= MB) return controller.close();
        chunk.writeUInt32LE(sent++, 0);
        controller.enqueue(Buffer.from(chunk));
      },
    });
    const url = await http.mutation(api.files.generateUploadUrl, {});
    const res = await fetch(url, { method: "POST", body, duplex: "half" });
    if (res.status !== 200) throw new Error(await res.text());
    ({ storageId } = await res.json());
  });
  console.log(`upload: ${MB} MiB in ${up.toFixed(2)} s = ${(MB / up).toFixed(0)} MiB/s; server RSS ${upBefore.toFixed(0)} → peak ${upPeak.toFixed(0)} MiB`);

  const { url } = await http.query(api.files.describe, { storageId });
  const [down, downBefore, downPeak] = await measured(server.pid, async () => {
    const res = await fetch(url);
    let got = 0;
    for await (const part of res.body) got += part.length;
    if (got !== MB << 20) throw new Error(`downloaded ${got} bytes`);
  });
  console.log(`download: ${MB} MiB in ${down.toFixed(2)} s = ${(MB / down).toFixed(0)} MiB/s; server RSS ${downBefore.toFixed(0)} → peak ${downPeak.toFixed(0)} MiB`);
  await http.mutation(api.files.remove, { storageId });

  // A JSON echo HTTP action at the site origin, CONCURRENCY requests in flight.
  const echo = `${server.siteUrl}/echo`;
  for (let i = 0; i < 200; i++) await (await fetch(echo, { method: "POST", body: `{"warm":${i}}` })).arrayBuffer();
  const latencies = [];
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < REQUESTS) {
        const i = next++;
        const t = process.hrtime.bigint();
        const res = await fetch(echo, { method: "POST", headers: { "Content-Type": "application/json" }, body: `{"i":${i}}` });
        if (res.status !== 201) throw new Error(`status ${res.status}`);
        await res.arrayBuffer();
        latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(
    `http echo: ${REQUESTS} requests (${CONCURRENCY} in flight) in ${seconds.toFixed(2)} s = ${Math.round(REQUESTS / seconds)}/s; ` +
      `p50 ${pct(latencies, 50).toFixed(2)} ms, p99 ${pct(latencies, 99).toFixed(2)} ms`,
  );
} finally {
  await server.stop();
}
