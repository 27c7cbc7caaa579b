import { paginationOptsValidator } from "convex/server";
import { ConvexError, v } from "convex/values";
import { mutation, query } from "./_generated/server";

/** Opens an account with an initial balance. */
export const open = mutation({
  args: { owner: v.string(), balance: v.int64() },
  handler: async (ctx, { owner, balance }) => {
    if (balance < 0n) {
      throw new ConvexError({ code: "NEGATIVE_BALANCE", balance });
    }
    return await ctx.db.insert("accounts", { owner, balance });
  },
});

/** Moves `amount` from one account to another: two reads, two writes, one insert. */
export const transfer = mutation({
  args: { from: v.id("accounts"), to: v.id("accounts"), amount: v.int64() },
  handler: async (ctx, { from, to, amount }) => {
    if (amount <= 0n) {
      throw new ConvexError({ code: "INVALID_AMOUNT", amount });
    }
    const source = await ctx.db.get(from);
    const target = await ctx.db.get(to);
    if (source === null || target === null) {
      throw new ConvexError({ code: "NO_SUCH_ACCOUNT" });
    }
    if (source.balance < amount) {
      throw new ConvexError({ code: "INSUFFICIENT_FUNDS", balance: source.balance, amount });
    }
    await ctx.db.patch(from, { balance: source.balance - amount });
    await ctx.db.patch(to, { balance: target.balance + amount });
    await ctx.db.insert("transfers", { from, to, amount });
    return source.balance - amount;
  },
});

/** The same movement without its record in `transfers`: two reads, two writes (the runtime
 * benchmark's transfer). */
export const move = mutation({
  args: { from: v.id("accounts"), to: v.id("accounts"), amount: v.int64() },
  handler: async (ctx, { from, to, amount }) => {
    if (amount <= 0n) throw new ConvexError({ code: "INVALID_AMOUNT", amount });
    const source = await ctx.db.get(from);
    const target = await ctx.db.get(to);
    if (source === null || target === null) throw new ConvexError({ code: "NO_SUCH_ACCOUNT" });
    const balance = source.balance;
    if (balance < amount) throw new ConvexError({ code: "INSUFFICIENT_FUNDS", balance, amount });
    await ctx.db.patch(from, { balance: balance - amount });
    await ctx.db.patch(to, { balance: target.balance + amount });
    return balance - amount;
  },
});

/** One account. */
export const get = query({
  args: { id: v.id("accounts") },
  handler: async (ctx, { id }) => await ctx.db.get(id),
});

/** The first account of an owner (an indexed point read), or null. */
export const ofOwner = query({
  args: { owner: v.string() },
  handler: async (ctx, { owner }) =>
    await ctx.db
      .query("accounts")
      .withIndex("by_owner", (q) => q.eq("owner", owner))
      .first(),
});

/** The sum of all balances. */
export const total = query({
  args: {},
  handler: async (ctx) => {
    let sum = 0n;
    for await (const account of ctx.db.query("accounts")) {
      sum += account.balance;
    }
    return sum;
  },
});

/** Accounts of an owner, a page at a time. */
export const byOwner = query({
  args: { owner: v.string(), paginationOpts: paginationOptsValidator },
  handler: async (ctx, { owner, paginationOpts }) => {
    return await ctx.db
      .query("accounts")
      .withIndex("by_owner", (q) => q.eq("owner", owner))
      .paginate(paginationOpts);
  },
});

/** Recorded transfers, a page at a time (oldest first). */
export const history = query({
  args: { paginationOpts: paginationOptsValidator },
  handler: async (ctx, { paginationOpts }) => await ctx.db.query("transfers").paginate(paginationOpts),
});
