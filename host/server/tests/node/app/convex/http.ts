import { httpRouter } from "convex/server";
import { httpAction } from "./_generated/server";
import { api, internal } from "./_generated/api";

const http = httpRouter();

const cors = {
  "Access-Control-Allow-Origin": "https://app.example",
  "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
  "Access-Control-Allow-Headers": "Content-Type, X-Signature",
  "Access-Control-Max-Age": "600",
};

/** Echoes what the action saw of the request. */
const echo = httpAction(async (ctx, request) => {
  const url = new URL(request.url);
  const body = request.method === "POST" ? await request.json() : null;
  return Response.json(
    {
      method: request.method,
      url: request.url,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      header: request.headers.get("x-test"),
      body,
      siteUrl: process.env.CONVEX_SITE_URL,
    },
    { status: request.method === "POST" ? 201 : 200, headers: { ...cors, "X-Echo": "1" } },
  );
});
http.route({ path: "/echo", method: "GET", handler: echo });
http.route({ path: "/echo", method: "POST", handler: echo });
http.route({ path: "/echo", method: "OPTIONS", handler: httpAction(async () => new Response(null, { status: 204, headers: cors })) });

http.route({
  pathPrefix: "/files/",
  method: "GET",
  handler: httpAction(async (ctx, request) => new Response(`prefix route: ${new URL(request.url).pathname}`)),
});

/** A webhook signed like Stripe's or Clerk's: HMAC-SHA256 of the raw body, hex, in a header. */
http.route({
  path: "/webhook",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const secret = process.env.WEBHOOK_SECRET;
    if (!secret) return new Response("WEBHOOK_SECRET is not set", { status: 500 });
    const raw = await request.arrayBuffer();
    const signature = request.headers.get("x-signature") ?? "";
    const bytes = new Uint8Array((signature.match(/../g) ?? []).map((h) => parseInt(h, 16)));
    const key = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["verify"],
    );
    if (!(await crypto.subtle.verify("HMAC", key, bytes, raw))) {
      return new Response("bad signature", { status: 401 });
    }
    const event = JSON.parse(new TextDecoder().decode(raw));
    await ctx.runMutation(internal.jobs.record, { key: event.id, by: "webhook" });
    const runs = await ctx.runQuery(api.jobs.runs, { key: event.id });
    return Response.json({ received: event.id, runs: runs.length });
  }),
});

/** Stores the request's body as a file; answers its storage id and URL. */
http.route({
  path: "/upload",
  method: "POST",
  handler: httpAction(async (ctx, request) => {
    const storageId = await ctx.storage.store(await request.blob());
    return Response.json({ storageId, url: await ctx.storage.getUrl(storageId) });
  }),
});

http.route({
  path: "/whoami",
  method: "GET",
  handler: httpAction(async (ctx) => Response.json(await ctx.auth.getUserIdentity())),
});

http.route({
  path: "/throw",
  method: "GET",
  handler: httpAction(async () => {
    throw new Error("the handler failed");
  }),
});

export default http;
