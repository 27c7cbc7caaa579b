// The official convex clients against a real `kiln serve`: live queries over WebSocket,
// HTTP round trips, errors, value encoding, reconnects and fan-out.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { ConvexError } from "convex/values";
import {
  admin,
  chatApp,
  createDeployment,
  deploy,
  nextUpdate,
  startServer,
  testApp,
  waitFor,
} from "./helpers.mjs";

const api = anyApi;
let server;
let chatUrl;
const clients = [];
const client = (url) => {
  const c = new ConvexClient(url, { logger: false });
  clients.push(c);
  return c;
};

before(async () => {
  server = await startServer();
  const chatKey = await createDeployment(server, "chat");
  chatUrl = `${server.url}/d/chat`;
  deploy(chatUrl, chatKey, chatApp);
  deploy(server.url, server.adminKey, testApp);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

test("a subscriber receives the new list after another client's mutation", async () => {
  const watcher = client(chatUrl);
  const sender = client(chatUrl);
  const initial = await nextUpdate(watcher, api.messages.list, {}, () => true);
  assert.ok(Array.isArray(initial));
  const updated = nextUpdate(watcher, api.messages.list, {}, (list) => list.some((m) => m.body === "hello from the sender"));
  const id = await sender.mutation(api.messages.send, { author: "sender", body: "hello from the sender" });
  assert.equal(typeof id, "string", "the mutation promise resolves with the new id");
  const list = await updated;
  const message = list.find((m) => m.body === "hello from the sender");
  assert.equal(message._id, id);
  assert.equal(message.author, "sender");
  assert.equal(typeof message._creationTime, "number");

  // Likes go through the same path, and the sender sees its own write too.
  const liked = nextUpdate(sender, api.messages.list, {}, (l) => l.some((m) => m._id === id && m.likes === 1));
  assert.equal(await sender.mutation(api.messages.like, { id }), 1);
  await liked;
});

test("ConvexHttpClient: query, mutation and action round trips", async () => {
  const http = new ConvexHttpClient(chatUrl, { logger: false });
  const id = await http.mutation(api.messages.send, { author: "http", body: "over http" });
  const list = await http.query(api.messages.list, {});
  assert.ok(list.some((m) => m._id === id && m.body === "over http"));
  const summary = await http.action(api.messages.summary, {});
  assert.match(summary, /^\d+ messages, latest by http$/);
  const mine = await http.query(api.messages.mine, {});
  assert.deepEqual(mine, [], "signed out: no messages of mine");
});

test("ConvexError data arrives intact over WebSocket and HTTP", async () => {
  const ws = client(server.url);
  const http = new ConvexHttpClient(server.url, { logger: false });
  for (const call of [() => ws.mutation(api.values.fail, {}), () => http.mutation(api.values.fail, {})]) {
    await assert.rejects(call(), (e) => {
      assert.ok(e instanceof ConvexError, `expected a ConvexError, got ${e}`);
      assert.equal(e.data.code, "BROKEN");
      assert.equal(e.data.count, 3n);
      assert.ok(Object.is(e.data.ratio, -0));
      assert.deepEqual(e.data.nested, { list: [1, "two", null] });
      return true;
    });
  }
  // A failing subscribed query reports its error data too.
  const failed = await new Promise((resolve) => {
    const unsubscribe = ws.onUpdate(api.values.failingQuery, {}, () => {}, (e) => {
      unsubscribe();
      resolve(e);
    });
  });
  assert.ok(failed instanceof ConvexError);
  assert.equal(failed.data.code, "QUERY_BROKEN");
});

test("unknown functions and invalid arguments are errors", async () => {
  const ws = client(chatUrl);
  const http = new ConvexHttpClient(chatUrl, { logger: false });
  await assert.rejects(ws.mutation(api.messages.nope, {}), /Could not find public function for 'messages:nope'/);
  await assert.rejects(http.query(api.nothing.here, {}), /Could not find public function for 'nothing:here'/);
  // Convex's wording, which apps and their tests match on.
  await assert.rejects(ws.mutation(api.messages.nope, {}), /Did you forget to run `npx convex dev` or `npx convex deploy`\?/);
  await assert.rejects(ws.mutation(api.messages.send, { author: 5, body: "x" }), /ArgumentValidationError: .*author/s);
  await assert.rejects(http.mutation(api.messages.send, { body: "no author" }), /ArgumentValidationError: .*author/s);
  await assert.rejects(http.query(api.messages.count, {}), /Could not find public function/, "internal functions are not public");
  const queryError = await new Promise((resolve) => {
    const unsubscribe = ws.onUpdate(api.messages.list, { limit: "ten" }, () => {}, (e) => {
      unsubscribe();
      resolve(e);
    });
  });
  assert.match(queryError.message, /limit/);
  // Every failure reaches the client in Convex's server-error form, over both transports.
  const serverError = /\[Request ID: [0-9a-f]{16}\] Server Error\n/;
  assert.match(queryError.message, serverError);
  await assert.rejects(ws.mutation(api.messages.send, { author: 5, body: "x" }), serverError);
  await assert.rejects(http.mutation(api.messages.send, { body: "no author" }), serverError);
  await assert.rejects(http.query(api.nothing.here, {}), serverError);
});

test("int64, bytes and special floats survive every path", async () => {
  const bytes = new Uint8Array([0, 1, 2, 254, 255]).buffer;
  const value = {
    big: 2n ** 62n,
    negative: -12345678901234n,
    bytes,
    nan: NaN,
    inf: Infinity,
    ninf: -Infinity,
    negZero: -0,
    plain: 1.5,
    list: [1n, "s", null, true, { deep: 7n }],
  };
  const check = (got) => {
    assert.equal(got.big, 2n ** 62n);
    assert.equal(got.negative, -12345678901234n);
    assert.ok(got.bytes instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(got.bytes)], [0, 1, 2, 254, 255]);
    assert.ok(Number.isNaN(got.nan));
    assert.equal(got.inf, Infinity);
    assert.equal(got.ninf, -Infinity);
    assert.ok(Object.is(got.negZero, -0));
    assert.equal(got.plain, 1.5);
    assert.equal(got.list[0], 1n);
    assert.equal(got.list[4].deep, 7n);
  };
  const http = new ConvexHttpClient(server.url, { logger: false });
  check(await http.query(api.values.echo, { value }));
  check(await http.mutation(api.values.store, { label: "special", value }));
  const ws = client(server.url);
  check(await ws.mutation(api.values.store, { label: "special-ws", value }));
  check(await nextUpdate(ws, api.values.echo, { value }, () => true));
  const stored = await nextUpdate(ws, api.values.byLabel, { label: "special" }, (l) => l.length === 1);
  check(stored[0]);
});

test("after every socket is dropped, clients reconnect and a resent mutation applies once", async () => {
  const c = client(server.url);
  const observer = client(server.url);
  const seen = [];
  observer.onUpdate(api.counter.get, { name: "reconnect" }, (v) => seen.push(v));
  await waitFor(() => seen.length > 0, 10_000, "the first result");
  assert.equal(seen.at(-1), 0);

  // A slow mutation is running on the server when its socket is dropped; the client resends
  // it after reconnecting, with the same request id.
  // (8M iterations take about 0.4 s of guest time and stay under the 10G fuel limit.)
  const pending = c.mutation(api.counter.increment, { name: "reconnect", spin: 8_000_000 });
  await new Promise((r) => setTimeout(r, 100));
  const dropped = await admin(server.url, server.adminKey, "/api/kiln/drop_connections");
  assert.equal(dropped.status, 200);
  assert.ok(dropped.body.dropped >= 2, `dropped ${dropped.body.dropped} sockets`);
  assert.equal(await pending, 1, "the mutation resolves with its (single) result");

  await waitFor(() => seen.at(-1) === 1, 15_000, "the observer to see 1 after reconnecting");
  const http = new ConvexHttpClient(server.url, { logger: false });
  assert.equal(await http.query(api.counter.get, { name: "reconnect" }), 1, "applied exactly once");

  // The resend was answered from the idempotency record, not run again.
  const res = await fetch(`${server.url}/api/kiln/logs`, { headers: { Authorization: `Convex ${server.adminKey}` } });
  const entries = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
  const runs = entries.filter((e) => e.path === "counter:increment");
  assert.ok(runs.some((e) => e.replayed), `a replayed call is logged: ${JSON.stringify(runs)}`);
  assert.equal(runs.filter((e) => !e.replayed && e.outcome === "ok").length, 1, "one execution committed");

  // Subscriptions continue on the new sockets.
  await c.mutation(api.counter.increment, { name: "reconnect" });
  await waitFor(() => seen.at(-1) === 2, 10_000, "the observer to see 2");
});

test("1,000 subscribed sockets all receive an update after one mutation", async () => {
  const n = 1000;
  const fans = [];
  const latest = new Array(n).fill(undefined);
  for (let i = 0; i < n; i++) {
    const c = new ConvexClient(server.url, { logger: false });
    fans.push(c);
    c.onUpdate(api.counter.get, { name: "fanout" }, (v) => {
      latest[i] = v;
    });
  }
  try {
    await waitFor(() => latest.every((v) => v === 0), 60_000, "every socket's first result");
    const started = Date.now();
    const writer = client(server.url);
    await writer.mutation(api.counter.increment, { name: "fanout" });
    await waitFor(() => latest.every((v) => v === 1), 30_000, "every socket to see the update");
    console.log(`fan-out to ${n} sockets took ${Date.now() - started} ms`);
  } finally {
    await Promise.all(fans.map((c) => c.close()));
  }
});

test("a query right after a mutation resolved sees its write (read-your-writes)", async () => {
  const ws = client(server.url);
  const http = new ConvexHttpClient(server.url, { logger: false });
  for (let i = 0; i < 40; i++) {
    // One-shot queries subscribe, take the first result and unsubscribe again, so every
    // round re-adds a query the server answered before, at an older snapshot.
    const value = await ws.mutation(api.counter.increment, { name: "ryw" });
    assert.equal(await ws.query(api.counter.get, { name: "ryw" }), value, `WebSocket, round ${i}`);
    const viaHttp = await http.mutation(api.counter.increment, { name: "ryw" });
    assert.equal(await http.query(api.counter.get, { name: "ryw" }), viaHttp, `HTTP, round ${i}`);
    assert.equal(await ws.query(api.counter.get, { name: "ryw" }), viaHttp, `WebSocket after HTTP, round ${i}`);
  }
});

test("sequential WebSocket mutations do not wait on delayed ACKs", async () => {
  // A regression guard, not a benchmark: with Nagle's algorithm meeting delayed ACKs each
  // round trip of the official client took ~40 ms, so 200 took ~8 s.
  const ws = client(server.url);
  await ws.mutation(api.counter.increment, { name: "nagle" });
  const started = performance.now();
  for (let i = 0; i < 200; i++) await ws.mutation(api.counter.increment, { name: "nagle" });
  const ms = performance.now() - started;
  console.log(`200 sequential mutations: ${ms.toFixed(0)} ms`);
  assert.ok(ms < 4000, `200 sequential mutations took ${ms.toFixed(0)} ms`);
  assert.equal(await ws.query(api.counter.get, { name: "nagle" }), 201);
});
