import { v } from "convex/values";
import { action, internalAction, internalMutation, mutation, query } from "./_generated/server";
import { api, internal } from "./_generated/api";

/** Records one run of a scheduled function (`by` names what ran it). */
export const record = internalMutation({
  args: { key: v.string(), by: v.string() },
  handler: async (ctx, { key, by }) => {
    console.log(`ran ${key}`);
    await ctx.db.insert("runs", { key, by });
  },
});

/** Schedules `record` after `delayMs`; returns the job's id. */
export const later = mutation({
  args: { key: v.string(), delayMs: v.number() },
  handler: async (ctx, { key, delayMs }) => {
    return await ctx.scheduler.runAfter(delayMs, internal.jobs.record, { key, by: "mutation" });
  },
});

/** Schedules `record` at a time; returns the job's id. */
export const at = mutation({
  args: { key: v.string(), ts: v.number() },
  handler: async (ctx, { key, ts }) => {
    return await ctx.scheduler.runAt(ts, internal.jobs.record, { key, by: "mutation" });
  },
});

/** Schedules `n` runs (keys `prefix-0`...) spread over `spreadMs`. */
export const many = mutation({
  args: { prefix: v.string(), n: v.number(), delayMs: v.number(), spreadMs: v.optional(v.number()) },
  handler: async (ctx, { prefix, n, delayMs, spreadMs }) => {
    for (let i = 0; i < n; i++) {
      const at = delayMs + ((spreadMs ?? 0) * i) / n;
      await ctx.scheduler.runAfter(at, internal.jobs.record, { key: `${prefix}-${i}`, by: "many" });
    }
    return n;
  },
});

/** Schedules, then throws: nothing may be scheduled. */
export const scheduleThenThrow = mutation({
  args: { key: v.string() },
  handler: async (ctx, { key }) => {
    await ctx.scheduler.runAfter(0, internal.jobs.record, { key, by: "thrower" });
    throw new Error("changed my mind");
  },
});

/** Cancels a job. */
export const cancel = mutation({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }) => {
    await ctx.scheduler.cancel(id);
  },
});

/** An internal action that records its run through a mutation. */
export const act = internalAction({
  args: { key: v.string() },
  handler: async (ctx, { key }) => {
    await ctx.runMutation(internal.jobs.record, { key, by: "action" });
  },
});

/** An action that schedules an action; returns the job's id. */
export const fromAction = action({
  args: { key: v.string() },
  handler: async (ctx, { key }): Promise<string> => {
    return await ctx.scheduler.runAfter(0, internal.jobs.act, { key });
  },
});

/** An action that schedules a mutation and cancels it at once. */
export const cancelFromAction = action({
  args: { key: v.string() },
  handler: async (ctx, { key }): Promise<string> => {
    const id = await ctx.scheduler.runAfter(60_000, internal.jobs.record, { key, by: "action" });
    await ctx.scheduler.cancel(id);
    return id;
  },
});

/** A scheduled mutation that fails. */
export const fail = internalMutation({
  args: {},
  handler: async () => {
    throw new Error("scheduled failure");
  },
});

/** Schedules `fail`. */
export const scheduleFailure = mutation({
  args: {},
  handler: async (ctx) => await ctx.scheduler.runAfter(0, internal.jobs.fail, {}),
});

/** Tries to write a system table. */
export const tamper = mutation({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }) => {
    await ctx.db.patch(id as any, { name: "jobs:other" } as any);
  },
});

/** Tries to schedule a query. */
export const scheduleQuery = mutation({
  args: {},
  handler: async (ctx) => await ctx.scheduler.runAfter(0, api.jobs.runs as any, { key: "x" }),
});

/** The runs recorded for `key`. */
export const runs = query({
  args: { key: v.string() },
  handler: async (ctx, { key }) =>
    (await ctx.db.query("runs").withIndex("by_key", (q) => q.eq("key", key)).collect()).map((r) => r.by),
});

/** How many runs have keys starting with `prefix`, and how many distinct keys. */
export const tally = query({
  args: { prefix: v.string() },
  handler: async (ctx, { prefix }) => {
    const rows = await ctx.db
      .query("runs")
      .withIndex("by_key", (q) => q.gte("key", prefix).lt("key", prefix + "\uffff"))
      .collect();
    return { runs: rows.length, keys: new Set(rows.map((r) => r.key)).size };
  },
});

/** A job, read through `ctx.db.system`. */
export const job = query({
  args: { id: v.id("_scheduled_functions") },
  handler: async (ctx, { id }) => await ctx.db.system.get(id),
});

/** Jobs of function `name`, by state. */
export const states = query({
  args: {},
  handler: async (ctx) => {
    const counts: Record<string, number> = {};
    for (const job of await ctx.db.system.query("_scheduled_functions").collect()) {
      counts[job.state.kind] = (counts[job.state.kind] ?? 0) + 1;
    }
    return counts;
  },
});

/** The registered cron jobs, read through `ctx.db.system`. */
export const crons = query({
  args: {},
  handler: async (ctx) => await (ctx.db.system as any).query("_cron_jobs").collect(),
});

/** Lateness (completedTime - scheduledTime, ms) of the finished jobs whose key starts with `prefix`. */
export const lateness = query({
  args: { prefix: v.string() },
  handler: async (ctx, { prefix }) => {
    const out: number[] = [];
    for await (const job of ctx.db.system.query("_scheduled_functions")) {
      const key = (job.args[0] as { key?: string })?.key ?? "";
      if (job.state.kind === "success" && key.startsWith(prefix) && job.completedTime !== undefined) {
        out.push(job.completedTime - job.scheduledTime);
      }
    }
    return out;
  },
});
