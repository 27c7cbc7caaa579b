import { ConvexError, v } from "convex/values";
import { api } from "./_generated/api";
import { action, mutation, query } from "./_generated/server";

/** Returns its arguments: int64, bytes, special floats and nesting must survive both ways. */
export const echo = query({
  args: { value: v.any() },
  handler: async (_ctx, { value }) => value,
});

/** Stores a value and returns it as read back from the database. */
export const store = mutation({
  args: { label: v.string(), value: v.any() },
  handler: async (ctx, { label, value }) => {
    const id = await ctx.db.insert("values", { label, value });
    return (await ctx.db.get(id))!.value;
  },
});

/** The stored values with a label. */
export const byLabel = query({
  args: { label: v.string() },
  handler: async (ctx, { label }) =>
    (await ctx.db.query("values").collect()).filter((d) => d.label === label).map((d) => d.value),
});

/** Throws a ConvexError whose data holds values of every kind. */
export const fail = mutation({
  args: {},
  handler: async () => {
    throw new ConvexError({ code: "BROKEN", count: 3n, ratio: -0, nested: { list: [1, "two", null] } });
  },
});

/** A query that throws a ConvexError. */
export const failingQuery = query({
  args: {},
  handler: async () => {
    throw new ConvexError({ code: "QUERY_BROKEN" });
  },
});

/** An environment variable of the deployment, or null. */
export const environment = query({
  args: { name: v.string() },
  handler: async (_ctx, { name }) => process.env[name] ?? null,
});

/** Logs its text (for `npx convex logs`) and returns it. */
export const shout = mutation({
  args: { text: v.string() },
  handler: async (_ctx, { text }) => {
    console.log("shout:", text);
    console.warn("careful:", text.length);
    return text;
  },
});

/** Calls a mutation that throws a ConvexError and reports what it caught. */
export const catchNested = action({
  args: {},
  handler: async (ctx) => {
    try {
      await ctx.runMutation(api.values.fail, {});
      return null;
    } catch (e) {
      return { isConvexError: e instanceof ConvexError, data: e instanceof Error ? (e as ConvexError<any>).data : null };
    }
  },
});
