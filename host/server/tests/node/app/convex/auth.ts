import { query } from "./_generated/server";

/** The caller's identity, or null. */
export const whoami = query({
  args: {},
  handler: async (ctx) => await ctx.auth.getUserIdentity(),
});
