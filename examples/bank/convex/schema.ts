import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  accounts: defineTable({
    owner: v.string(),
    balance: v.int64(),
  }).index("by_owner", ["owner"]),
  transfers: defineTable({
    from: v.id("accounts"),
    to: v.id("accounts"),
    amount: v.int64(),
  }),
});
