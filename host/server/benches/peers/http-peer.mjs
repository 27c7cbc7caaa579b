// What both Node peers share: a keep-alive HTTP server on a free loopback port that takes JSON
// POSTs, hands them to a route, and answers JSON (errors as 400 with { error }).
import http from "node:http";

/** Serves `routes` (path -> async (body) => value) and prints `ready <port>` when listening. */
export function serve(routes) {
  const server = http.createServer({ keepAliveTimeout: 60_000, noDelay: true }, (req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const route = routes[req.url];
      let status = 200;
      let answer;
      try {
        if (req.method !== "POST" || route === undefined) {
          status = 404;
          answer = { error: `no route ${req.method} ${req.url}` };
        } else {
          const body = chunks.length === 0 ? {} : JSON.parse(Buffer.concat(chunks).toString("utf8"));
          answer = (await route(body)) ?? null;
        }
      } catch (e) {
        status = 400;
        answer = { error: String(e?.message ?? e) };
      }
      const text = JSON.stringify(answer);
      res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
      res.end(text);
    });
  });
  server.listen(0, "127.0.0.1", () => console.log(`ready ${server.address().port}`));
}
