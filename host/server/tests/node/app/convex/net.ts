import { v } from "convex/values";
import { action } from "./_generated/server";

/** Fetches `url` and returns the status and body text (for the fetch policy's tests). */
export const fetchText = action({
  args: { url: v.string() },
  handler: async (_ctx, { url }) => {
    const response = await fetch(url);
    return { status: response.status, body: await response.text() };
  },
});
