import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** Adds an item. */
export const add = mutation({
  args: { name: v.string(), rank: v.number() },
  handler: async (ctx, args) => await ctx.db.insert("items", args),
});

/** All items. */
export const all = query({ args: {}, handler: async (ctx) => await ctx.db.query("items").collect() });
