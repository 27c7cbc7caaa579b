import { ConvexError, v } from "convex/values";
import { action, internalQuery, mutation, query } from "./_generated/server";
import { api, internal } from "./_generated/api";

/** The latest messages, oldest first, with their images' URLs. */
export const list = query({
  args: { limit: v.optional(v.number()) },
  handler: async (ctx, { limit }) => {
    const latest = await ctx.db.query("messages").order("desc").take(limit ?? 50);
    return await Promise.all(
      latest.reverse().map(async (m) => ({
        ...m,
        imageUrl: m.image === undefined ? null : await ctx.storage.getUrl(m.image),
      })),
    );
  },
});

/** Messages whose text matches `text` (the last word as a prefix), most relevant first; only
 *  `author`'s when given. Live like any query: new matching messages appear in the results. */
export const search = query({
  args: { text: v.string(), author: v.optional(v.string()) },
  handler: async (ctx, { text, author }) =>
    await ctx.db
      .query("messages")
      .withSearchIndex("search_body", (q) => (author === undefined ? q.search("body", text) : q.search("body", text).eq("author", author)))
      .take(20),
});

/** A URL the page uploads an image to (answering its storage id). */
export const generateUploadUrl = mutation({
  args: {},
  handler: async (ctx) => await ctx.storage.generateUploadUrl(),
});

/** Posts an uploaded image as a message. */
export const sendImage = mutation({
  args: { author: v.string(), image: v.id("_storage") },
  handler: async (ctx, { author, image }) => {
    const file = await ctx.db.system.get(image);
    if (file === null || !(file.contentType ?? "").startsWith("image/")) {
      throw new ConvexError({ code: "NOT_AN_IMAGE", message: "Only images can be posted" });
    }
    return await ctx.db.insert("messages", { author, body: "", likes: 0, image });
  },
});

/** Posts a message. */
export const send = mutation({
  args: { author: v.string(), body: v.string() },
  handler: async (ctx, { author, body }) => {
    if (body.trim() === "") {
      throw new ConvexError({ code: "EMPTY_MESSAGE", message: "A message needs a body" });
    }
    return await ctx.db.insert("messages", { author, body, likes: 0 });
  },
});

/** Likes a message. */
export const like = mutation({
  args: { id: v.id("messages") },
  handler: async (ctx, { id }) => {
    const message = await ctx.db.get(id);
    if (message === null) {
      throw new ConvexError({ code: "NOT_FOUND", message: "No such message" });
    }
    await ctx.db.patch(id, { likes: message.likes + 1 });
    return message.likes + 1;
  },
});

/** Messages by one author, through the `by_author` index. */
export const byAuthor = query({
  args: { author: v.string() },
  handler: async (ctx, { author }) => {
    return await ctx.db
      .query("messages")
      .withIndex("by_author", (q) => q.eq("author", author))
      .collect();
  },
});

/** The signed-in user's messages (none when signed out). */
export const mine = query({
  args: {},
  handler: async (ctx) => {
    const identity = await ctx.auth.getUserIdentity();
    if (identity === null) {
      return [];
    }
    const author = identity.name ?? identity.subject;
    return await ctx.db
      .query("messages")
      .withIndex("by_author", (q) => q.eq("author", author))
      .collect();
  },
});

/** How many messages there are (internal: only other functions call it). */
export const count = internalQuery({
  args: {},
  handler: async (ctx) => (await ctx.db.query("messages").collect()).length,
});

/** An action that reads through queries, as actions must. */
export const summary = action({
  args: {},
  handler: async (ctx): Promise<string> => {
    const total: number = await ctx.runQuery(internal.messages.count, {});
    const latest = await ctx.runQuery(api.messages.list, { limit: 1 });
    return latest.length === 0 ? "no messages yet" : `${total} messages, latest by ${latest[0].author}`;
  },
});
