import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  counters: defineTable({ name: v.string(), value: v.number() }).index("by_name", ["name"]),
  values: defineTable({ label: v.string(), value: v.any() }),
  items: defineTable({ name: v.string(), rank: v.number() }),
  entries: defineTable({ n: v.number() }).index("by_n", ["n"]),
  runs: defineTable({ key: v.string(), by: v.string() }).index("by_key", ["key"]),
  files: defineTable({ name: v.string(), storageId: v.id("_storage") }),
  notes: defineTable({
    body: v.string(),
    channel: v.string(),
    seq: v.optional(v.number()),
    embedding: v.optional(v.array(v.float64())),
  })
    .searchIndex("search_body", { searchField: "body", filterFields: ["channel"] })
    .vectorIndex("by_embedding", { vectorField: "embedding", dimensions: 8, filterFields: ["channel"] }),
});
