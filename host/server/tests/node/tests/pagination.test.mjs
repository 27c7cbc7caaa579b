// The official client's live paginated query (ConvexClient.onPaginatedUpdate_experimental, the
// machinery behind React's usePaginatedQuery) against a real `kiln serve` while other clients
// insert and delete: the pages keep their bounds through query journals and split when they
// grow, so the list never skips or repeats an entry.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";
import { deploy, startServer, testApp, waitFor } from "./helpers.mjs";

const api = anyApi;
let server;
const clients = [];
const client = () => {
  const c = new ConvexClient(server.url, { logger: false });
  clients.push(c);
  return c;
};

before(async () => {
  server = await startServer();
  deploy(server.url, server.adminKey, testApp);
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await server?.stop();
});

/** A small deterministic generator, so that a failure can be replayed. */
function random(seed) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test("a live paginated list neither skips nor repeats entries while others insert and delete", async () => {
  const writers = [client(), client(), client()];
  const initial = Array.from({ length: 40 }, (_, i) => i * 10);
  await writers[0].mutation(api.entries.put, { ns: initial });
  const present = new Set(initial);

  const reader = client();
  let latest;
  const problems = [];
  const unsubscribe = reader.onPaginatedUpdate_experimental(
    api.entries.page,
    {},
    { initialNumItems: 5 },
    (result) => {
      latest = result;
      const ns = result.results.map((e) => e.n);
      const ids = result.results.map((e) => e._id);
      if (new Set(ids).size !== ids.length) problems.push(`repeated entries: ${ns.join(",")}`);
      if (ns.some((n, i) => i > 0 && ns[i - 1] >= n)) problems.push(`out of order: ${ns.join(",")}`);
    },
    (e) => problems.push(`error: ${e.message}`),
  );

  // Load every page, five entries at a time.
  await waitFor(() => latest && latest.status !== "LoadingFirstPage", 15_000, "the first page");
  while (latest.status !== "Exhausted") {
    if (latest.status === "CanLoadMore") latest.loadMore(5);
    const loaded = latest.results.length;
    await waitFor(
      () => latest.status === "Exhausted" || (latest.status === "CanLoadMore" && latest.results.length > loaded),
      15_000,
      `more than ${loaded} entries`,
    );
  }
  assert.deepEqual(latest.results.map((e) => e.n), initial);

  // Three clients insert and delete across every page, concurrently, in 60 mutations. Each
  // deletes only entries it owns (its share of the initial ones and those it inserted), so the
  // expected list does not depend on how their mutations interleave.
  const next = random(23);
  const work = writers.map(async (writer, w) => {
    const mine = initial.filter((_, i) => i % writers.length === w);
    for (let i = 0; i < 20; i++) {
      if (next() < 0.55 || mine.length === 0) {
        let n;
        do n = Math.floor(next() * 420) + 0.5;
        while (present.has(n));
        present.add(n);
        mine.push(n);
        await writer.mutation(api.entries.put, { ns: [n] });
      } else {
        const [n] = mine.splice(Math.floor(next() * mine.length), 1);
        present.delete(n);
        await writer.mutation(api.entries.drop, { n });
      }
    }
  });
  await Promise.all(work);
  const expected = [...present].sort((a, b) => a - b);
  await waitFor(
    () => latest.status === "Exhausted" && latest.results.map((e) => e.n).join() === expected.join(),
    20_000,
    "the list to show exactly the entries that exist",
  ).catch((e) => {
    throw new Error(`${e.message}\nshown:    ${latest.results.map((x) => x.n).join(",")}\nexpected: ${expected.join(",")}`);
  });
  assert.deepEqual(problems, []);
  unsubscribe();
});
