import { paginationOptsValidator } from "convex/server";
import { v } from "convex/values";
import { api } from "./_generated/api";
import { action, mutation, query } from "./_generated/server";

/** The notes matching `text` (in `channel`, when given), most relevant first. */
export const search = query({
  args: { text: v.string(), channel: v.optional(v.string()), limit: v.optional(v.number()) },
  handler: async (ctx, { text, channel, limit }) => {
    const q = ctx.db
      .query("notes")
      .withSearchIndex("search_body", (s) => (channel === undefined ? s.search("body", text) : s.search("body", text).eq("channel", channel)));
    return limit === undefined ? await q.collect() : await q.take(limit);
  },
});

/** One page of the notes matching `text`. */
export const searchPage = query({
  args: { text: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { text, paginationOpts }) =>
    await ctx.db
      .query("notes")
      .withSearchIndex("search_body", (s) => s.search("body", text))
      .paginate(paginationOpts),
});

/** Adds a note. */
export const add = mutation({
  args: { body: v.string(), channel: v.string(), seq: v.optional(v.number()), embedding: v.optional(v.array(v.float64())) },
  handler: async (ctx, note) => await ctx.db.insert("notes", note),
});

/** The notes closest to `vector` (in one of `channels`, when given), with their scores. */
export const similar = action({
  args: { vector: v.array(v.float64()), limit: v.optional(v.number()), channels: v.optional(v.array(v.string())) },
  handler: async (ctx, { vector, limit, channels }) => {
    const results = await ctx.vectorSearch("notes", "by_embedding", {
      vector,
      limit,
      filter: channels === undefined ? undefined : (q) => q.or(...channels.map((c) => q.eq("channel", c))),
    });
    const notes = await ctx.runQuery(api.notes.byIds, { ids: results.map((r) => r._id) });
    return results.map((r, i) => ({ score: r._score, seq: notes[i]?.seq, channel: notes[i]?.channel, id: r._id }));
  },
});

/** Notes by id (null for a deleted one). */
export const byIds = query({
  args: { ids: v.array(v.id("notes")) },
  handler: async (ctx, { ids }) => await Promise.all(ids.map((id) => ctx.db.get(id))),
});

/** Adds a note and finds it (with the others) in the same mutation. */
export const addAndSearch = mutation({
  args: { body: v.string(), channel: v.string(), text: v.string() },
  handler: async (ctx, { body, channel, text }) => {
    await ctx.db.insert("notes", { body, channel });
    const found = await ctx.db
      .query("notes")
      .withSearchIndex("search_body", (s) => s.search("body", text).eq("channel", channel))
      .collect();
    return found.map((n) => n.body);
  },
});
