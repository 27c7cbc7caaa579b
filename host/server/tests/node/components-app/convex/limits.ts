// The rate limiter's documented usage: named limits, checked per key inside a mutation.
import { MINUTE, RateLimiter } from "@convex-dev/rate-limiter";
import { v } from "convex/values";
import { components } from "./_generated/api";
import { mutation } from "./_generated/server";

const rateLimiter = new RateLimiter(components.rateLimiter, {
  sendMessage: { kind: "token bucket", rate: 3, period: MINUTE, capacity: 3 },
  signUp: { kind: "fixed window", rate: 2, period: MINUTE },
});

export const send = mutation({
  args: { user: v.string() },
  handler: async (ctx, { user }) => {
    const { ok, retryAfter } = await rateLimiter.limit(ctx, "sendMessage", { key: user });
    return { ok, retrying: retryAfter !== undefined };
  },
});

export const signUp = mutation({
  args: {},
  handler: async (ctx) => (await rateLimiter.limit(ctx, "signUp")).ok,
});

export const reset = mutation({
  args: { user: v.string() },
  handler: async (ctx, { user }) => {
    await rateLimiter.reset(ctx, "sendMessage", { key: user });
  },
});
