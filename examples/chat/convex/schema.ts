import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export default defineSchema({
  messages: defineTable({
    author: v.string(),
    body: v.string(),
    likes: v.number(),
    // An attached image (a stored file).
    image: v.optional(v.id("_storage")),
  })
    .index("by_author", ["author"])
    .searchIndex("search_body", { searchField: "body", filterFields: ["author"] }),
});
