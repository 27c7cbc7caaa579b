// The chat example's web page in headless Chromium (Debian's), with the official convex
// browser client: one page sends a message, a second page sees it arrive; an image uploaded in
// one page shows in the other; a message posted to the app's HTTP endpoint arrives too; a live
// search in one page finds a message the other sends.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { join } from "node:path";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";
import { chatApp, deploy, startServer } from "./helpers.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
let server;
let browser;

before(async () => {
  // The page bundle, built the way the example's `npm run build:web` builds it.
  await esbuild.build({
    entryPoints: [join(chatApp, "web/app.js")],
    bundle: true,
    format: "esm",
    target: "es2020",
    outfile: join(chatApp, "web/dist/app.js"),
    logLevel: "error",
  });
  server = await startServer({ staticDir: join(chatApp, "web") });
  deploy(server.url, server.adminKey, chatApp);
  assert.ok(existsSync(executablePath), `Chromium not found at ${executablePath} (install Debian's chromium)`);
  browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Two connected pages of the chat in one browser context, and the errors they throw. */
async function twoPages() {
  const context = await browser.newContext();
  const [alice, bob] = [await context.newPage(), await context.newPage()];
  const errors = [];
  for (const page of [alice, bob]) {
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${server.url}/`);
    await page.waitForSelector("#status.connected", { timeout: 15_000 });
  }
  return { context, alice, bob, errors };
}

test("a message sent in one page appears in another", async () => {
  const { context, alice, bob, errors } = await twoPages();
  const body = `hello from chromium ${Date.now()}`;
  await alice.fill("input[name=author]", "alice");
  await alice.fill("input[name=body]", body);
  await alice.click("button[type=submit]");
  const line = bob.locator("#messages li", { hasText: body });
  await line.waitFor({ timeout: 15_000 });
  assert.equal(await line.locator(".author").textContent(), "alice");

  // A like from the second page reaches the first.
  await line.locator("button").click();
  await alice.locator("#messages li", { hasText: body }).locator("button", { hasText: "♥ 1" }).waitFor({ timeout: 15_000 });

  // An empty message is refused with the ConvexError's message.
  await bob.fill("input[name=author]", "bob");
  await bob.fill("input[name=body]", "   ");
  await bob.click("button[type=submit]");
  await bob.locator("#error", { hasText: "A message needs a body" }).waitFor({ timeout: 15_000 });
  assert.deepEqual(errors, [], "no uncaught errors in the pages");
  await context.close();
});

/** A PNG of `w`×`h` pixels of one colour. */
function png(w, h, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "ascii");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(w, 0);
  header.writeUInt32BE(h, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // truecolour
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: w }, () => [r, g, b]).flat())]);
  const pixels = deflateSync(Buffer.concat(Array.from({ length: h }, () => row)));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", pixels),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

test("an image uploaded in one page shows in another; a message posted to the HTTP endpoint arrives", async () => {
  const { context, alice, bob, errors } = await twoPages();
  await alice.fill("input[name=author]", "alice-img");
  await alice.setInputFiles("#image", { name: "dot.png", mimeType: "image/png", buffer: png(7, 5, [200, 30, 30]) });
  const image = bob.locator("#messages li", { hasText: "alice-img" }).locator("img");
  await image.waitFor({ timeout: 15_000 });
  // The browser fetched the file from its URL and decoded it.
  await bob.waitForFunction((img) => img.complete && img.naturalWidth === 7 && img.naturalHeight === 5, await image.elementHandle(), {
    timeout: 15_000,
  });

  // Something that is not an image is refused by the app.
  await alice.setInputFiles("#image", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("hello") });
  await alice.locator("#error", { hasText: "Only images can be posted" }).waitFor({ timeout: 15_000 });

  // The app's HTTP endpoint at the site origin: a bot posts, the pages see it.
  const body = `from a bot ${Date.now()}`;
  const posted = await fetch(`${server.siteUrl}/messages`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ author: "bot", body }),
  });
  assert.equal(posted.status, 201);
  await bob.locator("#messages li", { hasText: body }).waitFor({ timeout: 15_000 });
  const listed = await (await fetch(`${server.siteUrl}/messages`)).json();
  assert.ok(listed.some((m) => m.author === "alice-img" && m.imageUrl.startsWith(`${server.url}/api/storage/`)));
  assert.ok(listed.some((m) => m.author === "bot" && m.body === body));
  const empty = await fetch(`${server.siteUrl}/messages`, { method: "POST", body: JSON.stringify({ author: "bot", body: " " }) });
  assert.equal(empty.status, 400);
  assert.deepEqual(await empty.json(), { error: "A message needs a body" });
  assert.deepEqual(errors, [], "no uncaught errors in the pages");
  await context.close();
});

test("a search in one page finds matching messages, and one the other page sends", async () => {
  const { context, alice, bob, errors } = await twoPages();
  const word = `zebra${Date.now() % 100000}`;
  await alice.fill("input[name=author]", "alice");
  for (const body of [`the ${word} crossing`, "nothing to see here"]) {
    await alice.fill("input[name=body]", body);
    await alice.click("button[type=submit]");
    await alice.locator("#messages li", { hasText: body }).waitFor({ timeout: 15_000 });
  }
  // The last word is a prefix: typing part of it finds the message.
  await bob.fill("#search", `crossing ${word.slice(0, 4)}`);
  await bob.locator("#results li", { hasText: `the ${word} crossing` }).waitFor({ timeout: 15_000 });
  assert.equal(await bob.locator("#results li", { hasText: "nothing to see here" }).count(), 0);
  // A matching message sent while the search is open joins its results.
  await alice.fill("input[name=body]", `another ${word} sighting`);
  await alice.click("button[type=submit]");
  await bob.locator("#results li", { hasText: `another ${word} sighting` }).waitFor({ timeout: 15_000 });
  assert.deepEqual(errors, []);
  await context.close();
});
