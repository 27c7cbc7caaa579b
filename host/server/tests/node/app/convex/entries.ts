import { paginationOptsValidator } from "convex/server";
import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** One page of the entries, in order of `n`. */
export const page = query({
  args: { paginationOpts: paginationOptsValidator },
  handler: async (ctx, { paginationOpts }) =>
    await ctx.db
      .query("entries")
      .withIndex("by_n")
      .paginate(paginationOpts),
});

/** Inserts entries with these numbers. */
export const put = mutation({
  args: { ns: v.array(v.number()) },
  handler: async (ctx, { ns }) => {
    for (const n of ns) await ctx.db.insert("entries", { n });
  },
});

/** Deletes the entry with number `n`, if there is one. */
export const drop = mutation({
  args: { n: v.number() },
  handler: async (ctx, { n }) => {
    const entry = await ctx.db
      .query("entries")
      .withIndex("by_n", (q) => q.eq("n", n))
      .unique();
    if (entry) await ctx.db.delete(entry._id);
  },
});
