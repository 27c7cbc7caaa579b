// The chat example's web page in headless Chromium (Debian's), with the official convex
// browser client: one page sends a message, a second page sees it arrive.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
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

test("a message sent in one page appears in another", async () => {
  const context = await browser.newContext();
  const [alice, bob] = [await context.newPage(), await context.newPage()];
  const errors = [];
  for (const page of [alice, bob]) {
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${server.url}/`);
    await page.waitForSelector("#status.connected", { timeout: 15_000 });
  }
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
