import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** A counter's value (0 when it does not exist). */
export const get = query({
  args: { name: v.string() },
  handler: async (ctx, { name }) => {
    const c = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    return c?.value ?? 0;
  },
});

/** Adds one to a counter after `spin` iterations of busy work (to make the mutation slow). */
export const increment = mutation({
  args: { name: v.string(), spin: v.optional(v.number()) },
  handler: async (ctx, { name, spin }) => {
    let x = 0;
    for (let i = 0; i < (spin ?? 0); i++) x += i % 7;
    const c = await ctx.db
      .query("counters")
      .withIndex("by_name", (q) => q.eq("name", name))
      .unique();
    if (c === null) {
      await ctx.db.insert("counters", { name, value: 1 });
      return 1 + (x < 0 ? 1 : 0);
    }
    await ctx.db.patch(c._id, { value: c.value + 1 });
    return c.value + 1;
  },
});
