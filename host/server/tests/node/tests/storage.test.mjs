// File storage through the official client and real HTTP: upload URLs, files served with
// their type, length and ranges, metadata and `_storage`, deletion (transactional, blobs freed),
// `store`/`get` in actions, limits and refusals, a restart, and a 1 GB upload in flat memory.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { inflateRawSync } from "node:zlib";
import { convex, ok, project, selfHosted } from "./cli.mjs";
import { deploy, startServer, testApp, waitFor } from "./helpers.mjs";

const api = anyApi;
let server;
let http;

before(async () => {
  server = await startServer({ env: { KILN_MAX_FILE_BYTES: String(1100 << 20) } });
  deploy(server.url, server.adminKey, testApp);
  http = new ConvexHttpClient(server.url, { logger: false });
});

after(async () => {
  await server?.stop();
});

const sha256 = (bytes) => createHash("sha256").update(bytes).digest();

/** Uploads `body` to a fresh upload URL; returns the storage id. */
async function upload(body, type) {
  const url = await http.mutation(api.files.generateUploadUrl, {});
  const res = await fetch(url, { method: "POST", headers: type ? { "Content-Type": type } : {}, body });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).storageId;
}

/** The blob files under the deployment's file store. */
function blobFiles(data) {
  const root = join(data, "files", "default");
  const out = [];
  for (const dir of readdirSync(root)) {
    if (dir.length !== 2) continue;
    for (const f of readdirSync(join(root, dir))) out.push(f);
  }
  return out;
}

test("a 50 MB upload downloads byte-identical, ranges work, metadata and _storage describe it, delete frees it", async () => {
  const bytes = randomBytes(50 << 20);
  const storageId = await upload(bytes, "application/x-test");
  const { url, metadata, system } = await http.query(api.files.describe, { storageId });
  assert.ok(url.startsWith(server.url + "/api/storage/"), url);
  assert.deepEqual(metadata, {
    storageId,
    sha256: sha256(bytes).toString("hex"),
    size: bytes.length,
    contentType: "application/x-test",
  });
  assert.equal(system._id, storageId);
  assert.equal(system.sha256, metadata.sha256);
  assert.equal(system.size, bytes.length);
  assert.equal(system.contentType, "application/x-test");

  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "application/x-test");
  assert.equal(res.headers.get("content-length"), String(bytes.length));
  assert.equal(res.headers.get("digest"), `sha-256=${sha256(bytes).toString("base64")}`);
  const downloaded = Buffer.from(await res.arrayBuffer());
  assert.ok(sha256(downloaded).equals(sha256(bytes)), "the download is byte-identical");

  const ranged = await fetch(url, { headers: { Range: "bytes=1000-1999" } });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.headers.get("content-range"), `bytes 1000-1999/${bytes.length}`);
  assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(bytes.subarray(1000, 2000)));
  const tail = await fetch(url, { headers: { Range: "bytes=-10" } });
  assert.ok(Buffer.from(await tail.arrayBuffer()).equals(bytes.subarray(bytes.length - 10)));
  const outside = await fetch(url, { headers: { Range: `bytes=${bytes.length}-` } });
  assert.equal(outside.status, 416);
  assert.equal((await outside.json()).code, "InvalidRange");

  const digest = sha256(bytes).toString("hex");
  assert.ok(blobFiles(server.data).includes(digest), "the blob is on disk");
  await http.mutation(api.files.remove, { storageId });
  const after = await http.query(api.files.describe, { storageId });
  assert.deepEqual(after, { url: null, metadata: null, system: null });
  const gone = await fetch(url);
  assert.equal(gone.status, 404);
  assert.equal((await gone.json()).code, "StorageFileNotFound");
  await waitFor(() => !blobFiles(server.data).includes(digest), 10_000, "the deleted file's blob is freed");
});

test("a deletion in a mutation that throws leaves the file; identical files share a blob until both are deleted", async () => {
  const bytes = randomBytes(4096);
  const a = await upload(bytes, "text/plain");
  const b = await upload(bytes, "text/plain");
  assert.notEqual(a, b, "each upload is a file of its own");
  await assert.rejects(http.mutation(api.files.removeThenFail, { storageId: a }), /changed my mind/);
  assert.notEqual((await http.query(api.files.describe, { storageId: a })).url, null, "rolled back with its mutation");
  const digest = sha256(bytes).toString("hex");
  await http.mutation(api.files.remove, { storageId: a });
  // b still names the blob: it must stay.
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(blobFiles(server.data).includes(digest));
  const res = await fetch((await http.query(api.files.describe, { storageId: b })).url);
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(bytes));
  await http.mutation(api.files.remove, { storageId: b });
  await waitFor(() => !blobFiles(server.data).includes(digest), 10_000, "the last file's blob is freed");
  await assert.rejects(http.mutation(api.files.remove, { storageId: b }), /StorageFileNotFound|no stored file/);
});

test("store and get round-trip in an action; a wrong sha256 is refused; an action's delete takes effect", async () => {
  const out = await http.action(api.files.roundTrip, { text: "hello files", type: "text/plain" });
  assert.equal(out.text, "hello files");
  assert.equal(out.type, "text/plain");
  const res = await fetch(out.url);
  assert.equal(await res.text(), "hello files");
  assert.equal(res.headers.get("content-type"), "text/plain");
  const good = createHash("sha256").update("abc").digest("hex");
  const id = await http.action(api.files.storeWithDigest, { text: "abc", sha256: good });
  assert.equal((await http.query(api.files.describe, { storageId: id })).metadata.sha256, good);
  const inBase64 = createHash("sha256").update("abc").digest("base64");
  assert.ok(await http.action(api.files.storeWithDigest, { text: "abc", sha256: inBase64 }));
  await assert.rejects(
    http.action(api.files.storeWithDigest, { text: "abd", sha256: good }),
    /StorageDigestMismatch|SHA-256/,
  );
  assert.equal(await http.action(api.files.removeFromAction, { storageId: out.storageId }), null);
});

test("bad uploads and downloads are refused with codes: no token, a forged token, an id that is not a file's", async () => {
  const url = await http.mutation(api.files.generateUploadUrl, {});
  const noToken = await fetch(url.split("?")[0], { method: "POST", body: "x" });
  assert.equal(noToken.status, 403);
  assert.equal((await noToken.json()).code, "InvalidUploadToken");
  const forged = await fetch(url.replace(/token=\d/, "token=9"), { method: "POST", body: "x" });
  assert.equal(forged.status, 403);
  assert.equal((await forged.json()).code, "InvalidUploadToken");
  const bad = await fetch(`${server.url}/api/storage/not-an-id`);
  assert.equal(bad.status, 404);
});

/** The entries of a ZIP (stored or deflated, no ZIP64): name → bytes. */
function unzip(zip) {
  const eocd = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  const count = zip.readUInt16LE(eocd + 10);
  let at = zip.readUInt32LE(eocd + 16);
  const entries = new Map();
  for (let i = 0; i < count; i++) {
    const method = zip.readUInt16LE(at + 10);
    const size = zip.readUInt32LE(at + 20);
    const [nameLen, extraLen, commentLen] = [zip.readUInt16LE(at + 28), zip.readUInt16LE(at + 30), zip.readUInt16LE(at + 32)];
    const local = zip.readUInt32LE(at + 42);
    const name = zip.toString("utf8", at + 46, at + 46 + nameLen);
    const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    const raw = zip.subarray(start, start + size);
    entries.set(name, method === 0 ? raw : inflateRawSync(raw));
    at += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

test("npx convex export --include-file-storage holds _storage and every file's bytes; without it, neither", async () => {
  const [url, key] = selfHosted(server.output());
  const bytes = randomBytes(300_000);
  const storageId = await upload(bytes, "image/webp");
  const dir = project();
  try {
    const withFiles = join(dir, "with.zip");
    ok(convex(dir, url, key, "export", "--include-file-storage", "--path", withFiles), "export");
    const entries = unzip(readFileSync(withFiles));
    assert.ok(entries.get(`_storage/${storageId}`).equals(bytes), "the file's bytes");
    const docs = entries.get("_storage/documents.jsonl").toString().trim().split("\n").map((l) => JSON.parse(l));
    const doc = docs.find((d) => d._id === storageId);
    assert.deepEqual(
      { sha256: doc.sha256, size: doc.size, contentType: doc.contentType },
      { sha256: sha256(bytes).toString("hex"), size: bytes.length, contentType: "image/webp" },
    );
    const without = join(dir, "without.zip");
    ok(convex(dir, url, key, "export", "--path", without), "export");
    assert.ok(![...unzip(readFileSync(without)).keys()].some((n) => n.startsWith("_storage/")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("files survive a restart; a blob no document names is swept at start", async () => {
  const bytes = randomBytes(1000);
  const storageId = await upload(bytes, "image/png");
  const stray = randomBytes(32).toString("hex");
  const strayDir = join(server.data, "files", "default", stray.slice(0, 2));
  mkdirSync(strayDir, { recursive: true });
  writeFileSync(join(strayDir, stray), "left by a crash");
  await server.kill();
  const data = server.data;
  server = await startServer({ data, env: { KILN_MAX_FILE_BYTES: String(1100 << 20) } });
  http = new ConvexHttpClient(server.url, { logger: false });
  const { url } = await http.query(api.files.describe, { storageId });
  const res = await fetch(url);
  assert.equal(res.headers.get("content-type"), "image/png");
  assert.ok(Buffer.from(await res.arrayBuffer()).equals(bytes));
  assert.ok(!existsSync(join(strayDir, stray)), "the unnamed blob was swept");
});

/** Resident memory of a process, in bytes. */
function rss(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m[1]) * 1024;
}

test("a 1 GB upload streams: the server's memory stays flat, and a file over the limit is refused", async () => {
  const total = 1 << 30;
  const chunk = randomBytes(1 << 20);
  const hash = createHash("sha256");
  let sent = 0;
  const body = new ReadableStream({
    pull(controller) {
      if (sent >= total) return controller.close();
      // Each megabyte differs (its first bytes count), so nothing compresses or repeats.
      chunk.writeUInt32LE(sent / (1 << 20), 0);
      const piece = Buffer.from(chunk);
      hash.update(piece);
      sent += piece.length;
      controller.enqueue(piece);
    },
  });
  const before = rss(server.pid);
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, rss(server.pid))), 50);
  const url = await http.mutation(api.files.generateUploadUrl, {});
  const res = await fetch(url, { method: "POST", body, duplex: "half" });
  clearInterval(sampler);
  assert.equal(res.status, 200);
  const { storageId } = await res.json();
  const { metadata } = await http.query(api.files.describe, { storageId });
  assert.equal(metadata.size, total);
  assert.equal(metadata.sha256, hash.digest("hex"));
  const growth = peak - before;
  console.log(`server RSS during a 1 GB upload: ${(before / 2 ** 20).toFixed(0)} MiB → peak ${(peak / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(growth < 64 << 20, `the server grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
  await http.mutation(api.files.remove, { storageId });

  // Past the limit (1100 MiB here): refused, nothing kept.
  let over = 0;
  const tooBig = new ReadableStream({
    pull(controller) {
      if (over >= 1101 << 20) return controller.close();
      over += chunk.length;
      controller.enqueue(Buffer.from(chunk));
    },
  });
  const refused = await fetch(await http.mutation(api.files.generateUploadUrl, {}), {
    method: "POST",
    body: tooBig,
    duplex: "half",
  }).catch((e) => e);
  if (refused instanceof Response) {
    assert.equal(refused.status, 413);
    assert.equal((await refused.json()).code, "FileTooLarge");
  }
  const tmp = join(server.data, "files", "default", "tmp");
  await waitFor(() => readdirSync(tmp).length === 0, 10_000, "the refused upload left nothing");
});
