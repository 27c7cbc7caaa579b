// The aggregate component's documented usage: a TableAggregate kept beside a table.
import { TableAggregate } from "@convex-dev/aggregate";
import { v } from "convex/values";
import { components } from "./_generated/api";
import type { DataModel } from "./_generated/dataModel";
import { mutation, query } from "./_generated/server";

const aggregate = new TableAggregate<{ Key: number; DataModel: DataModel; TableName: "scores" }>(
  components.aggregate,
  { sortKey: (doc) => doc.score, sumValue: (doc) => doc.score },
);

export const add = mutation({
  args: { player: v.string(), score: v.number() },
  handler: async (ctx, args) => {
    const id = await ctx.db.insert("scores", args);
    await aggregate.insert(ctx, (await ctx.db.get(id))!);
    return id;
  },
});

export const remove = mutation({
  args: { id: v.id("scores") },
  handler: async (ctx, { id }) => {
    const doc = await ctx.db.get(id);
    if (doc) {
      await ctx.db.delete(id);
      await aggregate.delete(ctx, doc);
    }
  },
});

export const stats = query({
  args: {},
  handler: async (ctx) => {
    const count = await aggregate.count(ctx);
    const top = count > 0 ? await aggregate.at(ctx, -1) : null;
    return {
      count,
      sum: await aggregate.sum(ctx),
      // Scores below 50, counted by key range.
      below50: await aggregate.count(ctx, { bounds: { upper: { key: 50, inclusive: false } } }),
      top: top?.key ?? null,
    };
  },
});
