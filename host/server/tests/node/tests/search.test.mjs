// Full-text search through the official clients: search queries in queries and mutations,
// live search subscriptions that re-run only for writes that can match, relevance order,
// pagination, and every acknowledged document found after SIGKILL.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { deploy, startServer, testApp, waitFor } from "./helpers.mjs";

const api = anyApi;
let server;
const clients = [];

before(async () => {
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

/** How many times `path` has run (the admin function log). */
async function runs(url, key, path) {
  const res = await fetch(`${url}/api/kiln/logs`, { headers: { Authorization: `Convex ${key}` } });
  assert.equal(res.status, 200);
  const lines = (await res.text()).trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
  return lines.filter((e) => e.path === path).length;
}

test("a live search updates for a matching insert and does not re-run for others", async () => {
  const watcher = new ConvexClient(server.url, { logger: false });
  clients.push(watcher);
  const http = new ConvexHttpClient(server.url);
  await http.mutation(api.notes.add, { body: "The quick brown fox", channel: "live" });
  const args = { text: "fox jump", channel: "live" };
  // One subscription throughout: every result it receives is kept.
  const results = [];
  const unsubscribe = watcher.onUpdate(api.notes.search, args, (l) => results.push(l));
  await waitFor(() => results.length === 1, 10_000, "the first result");
  assert.deepEqual(results[0].map((n) => n.body), ["The quick brown fox"]);
  const before = await runs(server.url, server.adminKey, "notes:search");

  // Cannot match: other words, or the right words in another channel.
  await http.mutation(api.notes.add, { body: "a lazy dog", channel: "live" });
  await http.mutation(api.notes.add, { body: "foxes jumping", channel: "elsewhere" });
  await http.mutation(api.notes.add, { body: "jum", channel: "live" });
  // A mutation's invalidations are done before it is acknowledged; give a re-run time anyway.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await runs(server.url, server.adminKey, "notes:search"), before, "no re-run for writes that cannot match");
  assert.equal(results.length, 1);

  await http.mutation(api.notes.add, { body: "Jumping jacks", channel: "live" });
  await waitFor(() => results.length === 2, 10_000, "the updated result");
  assert.deepEqual(results[1].map((n) => n.body).sort(), ["Jumping jacks", "The quick brown fox"]);
  unsubscribe();
  assert.equal(await runs(server.url, server.adminKey, "notes:search"), before + 1, "one re-run for the matching insert");
});

test("results come by relevance, page by page, and a mutation finds its own insert", async () => {
  const http = new ConvexHttpClient(server.url);
  for (const body of ["kiwi", "kiwi kiwi kiwi", "a kiwi among many other fruits in a basket", "kiwi kiwi"]) {
    await http.mutation(api.notes.add, { body, channel: "fruit" });
  }
  const found = await http.query(api.notes.search, { text: "kiwi", channel: "fruit" });
  assert.deepEqual(found.map((n) => n.body), ["kiwi kiwi kiwi", "kiwi kiwi", "kiwi", "a kiwi among many other fruits in a basket"]);
  assert.equal((await http.query(api.notes.search, { text: "kiw", channel: "fruit", limit: 2 })).length, 2, "the last term is a prefix");

  let cursor = null;
  const seen = [];
  for (;;) {
    const page = await http.query(api.notes.searchPage, { text: "kiwi", paginationOpts: { numItems: 3, cursor } });
    seen.push(...page.page.map((n) => n.body));
    if (page.isDone) break;
    cursor = page.continueCursor;
  }
  assert.equal(seen.length, 4);
  assert.equal(new Set(seen).size, 4);

  const mine = await http.mutation(api.notes.addAndSearch, { body: "papaya smoothie", channel: "fruit", text: "papaya" });
  assert.deepEqual(mine, ["papaya smoothie"]);
  await assert.rejects(http.query(api.notes.search, { text: "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen" }), /SearchQueryTooManyTerms|16 are allowed/);
});

test("after SIGKILL during inserts every acknowledged note is found once", async () => {
  const crash = await startServer();
  deploy(crash.url, crash.adminKey, testApp);
  const http = new ConvexHttpClient(crash.url);
  const acked = [];
  let stop = false;
  const writer = async (w) => {
    for (let seq = w; !stop && seq < 2_000; seq += 4) {
      try {
        await http.mutation(api.notes.add, { body: `crash note n${seq}`, channel: `c${seq % 4}`, seq });
        acked.push(seq);
      } catch {
        return;
      }
    }
  };
  const writers = [0, 1, 2, 3].map(writer);
  await waitFor(() => acked.length >= 100, 60_000, "inserts");
  await new Promise((r) => setTimeout(r, 50 + Math.random() * 400));
  await crash.kill();
  stop = true;
  await Promise.all(writers);
  const again = await startServer({ data: crash.data });
  try {
    const client = new ConvexHttpClient(again.url);
    const found = new Map();
    for (const channel of ["c0", "c1", "c2", "c3"]) {
      for (const note of await client.query(api.notes.search, { text: "crash", channel })) {
        assert.ok(!found.has(note.seq), `note ${note.seq} found twice`);
        found.set(note.seq, note);
      }
    }
    for (const seq of acked) assert.ok(found.has(seq), `acknowledged note ${seq} not found (${acked.length} acknowledged)`);
  } finally {
    await again.stop();
  }
});
