// Full-text and vector search through the official clients: search queries in queries and
// mutations, live search subscriptions that re-run only for writes that can match, relevance
// order, pagination, ctx.vectorSearch in actions (cosine order, filters, limits), and every
// acknowledged document found by both after SIGKILL.
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

/** A note's embedding: 8 numbers drawn from its sequence number. */
const embedding = (seq) => Array.from({ length: 8 }, (_, i) => Math.sin(seq * (i + 1) * 0.37 + i * 1.3));

function cosine(a, b) {
  const dot = a.reduce((s, x, i) => s + x * b[i], 0);
  const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  return dot / (norm(a) * norm(b));
}

test("ctx.vectorSearch finds what was committed before it, by cosine similarity, within its filter", async () => {
  const http = new ConvexHttpClient(server.url);
  const notes = [];
  for (let seq = 10_000; seq < 10_040; seq++) {
    const channel = `v${seq % 3}`;
    await http.mutation(api.notes.add, { body: `vector note ${seq}`, channel, seq, embedding: embedding(seq) });
    notes.push({ seq, channel, embedding: embedding(seq) });
  }
  // The note just written is its own nearest neighbour (no wait for a merge).
  const last = notes[notes.length - 1];
  const own = await http.action(api.notes.similar, { vector: last.embedding, limit: 1 });
  assert.equal(own.length, 1);
  assert.equal(own[0].seq, last.seq);
  assert.ok(Math.abs(own[0].score - 1) < 1e-4, `score ${own[0].score}`);
  // Against brute force, with and without filters.
  const query = embedding(123_456);
  for (const channels of [undefined, ["v1"], ["v0", "v2"]]) {
    const got = await http.action(api.notes.similar, { vector: query, limit: 7, channels });
    const admitted = notes.filter((n) => channels === undefined || channels.includes(n.channel));
    const expected = admitted
      .map((n) => ({ seq: n.seq, score: cosine(query, n.embedding) }))
      .sort((a, b) => b.score - a.score)
      .slice(0, 7);
    // Notes from other tests have no embedding: only these 40 are in the index.
    assert.deepEqual(got.map((r) => r.seq), expected.map((e) => e.seq), `channels ${channels}`);
    for (const [i, r] of got.entries()) assert.ok(Math.abs(r.score - expected[i].score) < 1e-4);
    for (const r of got) assert.ok(channels === undefined || channels.includes(r.channel), "a note outside the filter");
  }
  // Convex's limits, refused with their message.
  await assert.rejects(http.action(api.notes.similar, { vector: query, limit: 300 }), /between 1 and 256/);
  await assert.rejects(http.action(api.notes.similar, { vector: [1, 2, 3] }), /3 dimensions; this index has 8/);
  const ten = await http.action(api.notes.similar, { vector: query });
  assert.equal(ten.length, 10, "the default limit is 10");
  // The graph's memory and the indexes' disk use are reported.
  const auth = { headers: { Authorization: `Convex ${server.adminKey}` } };
  const usage = await (await fetch(`${server.url}/api/kiln/usage`, auth)).json();
  assert.ok(usage.vectorIndexMemoryBytes > 0, JSON.stringify(usage));
  assert.ok(usage.searchIndexDiskBytes > 0, JSON.stringify(usage));
  const metrics = await (await fetch(`${server.url}/metrics`, auth)).text();
  assert.match(metrics, /kiln_vector_index_memory_bytes\{[^}]*\} [1-9]/);
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
        const note = { body: `crash note n${seq}`, channel: `c${seq % 4}`, seq, embedding: embedding(seq) };
        await http.mutation(api.notes.add, note);
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
    // The vector index too: each acknowledged note (a sample) is its own nearest neighbour,
    // and a search over a channel lists each of its notes once.
    for (const seq of acked.filter((_, i) => i % Math.ceil(acked.length / 60) === 0)) {
      const [nearest] = await client.action(api.notes.similar, { vector: embedding(seq), limit: 1, channels: [`c${seq % 4}`] });
      assert.equal(nearest?.seq, seq, `acknowledged note ${seq} not found by vector search`);
    }
    for (const channel of ["c0", "c1", "c2", "c3"]) {
      const all = await client.action(api.notes.similar, { vector: embedding(0), limit: 256, channels: [channel] });
      const seqs = new Set(all.map((r) => r.seq));
      assert.equal(seqs.size, all.length, `${channel}: a note found twice by vector search`);
      const inChannel = [...found.values()].filter((n) => n.channel === channel).length;
      assert.equal(all.length, Math.min(256, inChannel), `${channel}: vector search misses notes`);
    }
  } finally {
    await again.stop();
  }
});
