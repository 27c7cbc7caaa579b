import { action, mutation, query } from "./_generated/server";
import { v } from "convex/values";

export const generateUploadUrl = mutation({
  args: {},
  handler: async (ctx) => await ctx.storage.generateUploadUrl(),
});

export const save = mutation({
  args: { name: v.string(), storageId: v.id("_storage") },
  handler: async (ctx, { name, storageId }) => await ctx.db.insert("files", { name, storageId }),
});

export const describe = query({
  args: { storageId: v.id("_storage") },
  handler: async (ctx, { storageId }) => ({
    url: await ctx.storage.getUrl(storageId),
    metadata: await ctx.storage.getMetadata(storageId),
    system: await ctx.db.system.get(storageId),
  }),
});

export const remove = mutation({
  args: { storageId: v.id("_storage") },
  handler: async (ctx, { storageId }) => await ctx.storage.delete(storageId),
});

export const removeThenFail = mutation({
  args: { storageId: v.id("_storage") },
  handler: async (ctx, { storageId }) => {
    await ctx.storage.delete(storageId);
    throw new Error("changed my mind");
  },
});

export const roundTrip = action({
  args: { text: v.string(), type: v.string() },
  handler: async (ctx, { text, type }) => {
    const storageId = await ctx.storage.store(new Blob([text], { type }));
    const blob = await ctx.storage.get(storageId);
    return {
      storageId,
      text: blob === null ? null : await blob.text(),
      type: blob?.type ?? null,
      url: await ctx.storage.getUrl(storageId),
    };
  },
});

export const storeWithDigest = action({
  args: { text: v.string(), sha256: v.string() },
  handler: async (ctx, { text, sha256 }) => await ctx.storage.store(new Blob([text]), { sha256 }),
});

export const removeFromAction = action({
  args: { storageId: v.id("_storage") },
  handler: async (ctx, { storageId }) => {
    await ctx.storage.delete(storageId);
    return await ctx.storage.get(storageId);
  },
});
