import { httpRouter } from "convex/server";
import { ConvexError } from "convex/values";
import { httpAction } from "./_generated/server";
import { api } from "./_generated/api";

// A small public API for bots and other sites, served at the deployment's site origin
// (http://127.0.0.1:3211 by default): GET /messages lists, POST /messages posts.
const http = httpRouter();

const cors = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
  "Access-Control-Allow-Headers": "Content-Type",
};

http.route({
  path: "/messages",
  method: "GET",
  handler: httpAction(async (ctx) => {
    const messages = await ctx.runQuery(api.messages.list, { limit: 20 });
    return Response.json(
      messages.map((m) => ({ author: m.author, body: m.body, likes: m.likes, imageUrl: m.imageUrl })),
      { headers: cors },
    );
  }),
});

http.route({
  path: "/messages",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    let input: { author?: unknown; body?: unknown };
    try {
      input = await request.json();
    } catch {
      return Response.json({ error: "the body must be JSON" }, { status: 400, headers: cors });
    }
    if (typeof input.author !== "string" || typeof input.body !== "string") {
      return Response.json({ error: "author and body must be strings" }, { status: 400, headers: cors });
    }
    try {
      const id = await ctx.runMutation(api.messages.send, { author: input.author, body: input.body });
      return Response.json({ id }, { status: 201, headers: cors });
    } catch (e) {
      if (e instanceof ConvexError) {
        return Response.json({ error: e.data.message }, { status: 400, headers: cors });
      }
      throw e;
    }
  }),
});

http.route({
  path: "/messages",
  method: "OPTIONS",
  handler: httpAction(async () => new Response(null, { status: 204, headers: cors })),
});

export default http;
